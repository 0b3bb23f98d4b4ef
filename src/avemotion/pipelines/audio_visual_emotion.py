"""`pipeline("audio-visual-emotion")`: emotion predictions from a video, an audio file or array, and/or a transcript.

The pipeline is generic: the model declares what it takes in its `input_spec()` (which modalities, the input and mask
names of each, pre-extracted features it accepts, text length, aligned segment inputs, its analysis window), and the
pipeline builds exactly those inputs; it never names a model. Every result names the modalities that were used. Media longer than the model's window (`config.window_seconds`)
are cut into windows while they are decoded, so memory stays bounded whatever the length; audio and video are
paired by time (presentation timestamps), not by position. Such inputs give one result per window with
`start`/`end` seconds and an aggregate over the whole input.

Input recognition is in `pipelines.inputs`, time windows in `pipelines.windows`; this module is the pipeline class
(preprocess -> batched `_forward` -> postprocess), `model_input_spec` and `register_pipeline`. It is copied next to
every saved checkpoint (`models.auto`) and imports its siblings absolutely, so that `trust_remote_code=True` loads it.
"""

from __future__ import annotations

import functools
import logging
import numbers
import os
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
from transformers.pipelines.base import ChunkPipeline, no_collate_fn, pad_collate_fn
from transformers.pipelines.pt_utils import PipelineChunkIterator, PipelineIterator, PipelinePackIterator

from avemotion.models.declaration import InputSpec, ModalitySpec, read_declaration

# re-exported here (their public names, and the private ones that tests reach) from where they now live
from avemotion.pipelines.inputs import (  # noqa: F401
    EmotionInput,
    InputError,
    _describe_input,
    _Numbered,
    check_seconds,
    looks_like_path,
    normalize_input,
)
from avemotion.pipelines.windows import (  # noqa: F401
    _EPS,
    MIN_WINDOW_SECONDS,
    _AudioTrack,
    _note,
    _SpanNotes,
    _stream_start,
    _VideoTrack,
    audio_windows,
    media_windows,
    time_windows,
    transcript_window,
    video_windows,
)
from avemotion.pipelines.workers import PreprocessPool, can_fork
from avemotion.processing.faces import NoFaceFoundError
from avemotion.processing.media import (
    MIN_AUDIO_SAMPLES,
    check_sampling_rate,
    check_video_array,
    check_waveform,
    iter_audio_blocks,
    iter_video_frames,
    resample,
)
from avemotion.processing.processor import AvEmotionProcessor
from avemotion.processing.segments import pad_segments
from avemotion.utils.inference import prepare_for_inference

logger = logging.getLogger(__name__)

TASK = "audio-visual-emotion"
MODALITIES = ("audio", "video", "text")
DEFAULT_WINDOW_SECONDS = 12.0
_MAIN_PROCESS = os.getpid()  # the preprocessing workers are forked from it: they have other pids
ERRORS_MODES = ("raise", "skip")


class _Windows(IterableDataset):
    """The windows of a `PreprocessPool`, as the dataset of transformers' (in-process) DataLoader."""

    def __init__(self, pool: PreprocessPool):
        self.pool = pool

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.pool)


def _closing(results: Iterator[Any], pool: PreprocessPool) -> Iterator[Any]:
    """The results, stopping the pool's workers when they end, fail, or are closed (or dropped) early."""
    try:
        yield from results
    finally:
        pool.close()


def _collate_errors(collate: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """`collate` (transformers' `pad_collate_fn`) for the items that have model inputs; error items (an `InputError`
    meta, no model inputs) keep their place in the batch's `is_last` and `meta` lists only."""

    def inner(items: list[dict[str, Any]]) -> dict[str, Any]:
        media = [item for item in items if not isinstance(item["meta"], InputError)]
        if len(media) == len(items):
            return collate(items)
        batch = collate(media) if media else {}
        batch["is_last"] = [item["is_last"] for item in items]
        batch["meta"] = [item["meta"] for item in items]
        return batch

    return inner


class AudioVisualEmotionPipeline(ChunkPipeline):
    """Emotion recognition from audio, video and/or text with an avemotion model and its `AvEmotionProcessor`.

    Call it with one input or a list (see `normalize_input` for the accepted forms), or a generator or `datasets`
    dataset of them. A string is a transcript unless it looks like a path (`looks_like_path`); a path that does not
    exist is an error, not text.

    Args (at construction or per call):
        top_k (`int`, *optional*): categorical models: how many labels to return (all by default; at least 1).
        window_seconds (`float`, *optional*): length of the analysis windows (default: `config.window_seconds`);
            at least `MIN_WINDOW_SECONDS` (25 ms, one model frame).
        stride_seconds (`float`, *optional*): hop between windows (default: the window length, no overlap); at least
            25 ms and at most `window_seconds` (a longer hop would leave media unanalysed).
        sampling_rate (`int`, *optional*): rate of raw waveform arrays (default: the feature extractor's, with a
            warning); 1 kHz to 768 kHz.
        errors (`str`, *optional*, defaults to `"raise"`): what an unusable input does. `"raise"`: a `ValueError`
            naming its position (`input #k`) and file, raised when its turn comes, so a generator yields every result
            before it. `"skip"`: its result is `{"error": message, "input": file or "input #k"}` and the other inputs
            are processed.
        batch_size (`int`, *optional*, defaults to 1): windows per model call.
        num_workers (`int`, *optional*, defaults to 0): worker processes that preprocess (decode, detect faces, crop,
            resample) the inputs of a list, generator or dataset while the model runs on earlier windows (see
            `pipelines.workers`). 0: preprocessing runs in the calling process, between model calls. N >= 1: N
            forked processes (one CPU thread each), results in input order and errors attributed as without workers;
            a single (non-list) input is preprocessed in-process. Where processes cannot be forked (Windows) it runs
            in-process, with a warning. A list's inputs are inherited by the workers; a generator's or dataset's are
            pickled to them: one that cannot be pickled raises a `TypeError` naming it (`input #k`) in its turn,
            whatever `errors` (use 0 workers for such inputs). An unexpected exception in a worker (other than the
            `ValueError`/`OSError` of an unusable input, which `errors` handles) raises a `WorkerError` naming the
            input, with the worker's exception as its `__cause__`, whatever `errors`; so does a worker that dies. A
            worker that hangs (does not die) blocks the results: there is no timeout.

    Model speed settings (at construction only; applied once to the model with
    `avemotion.utils.inference.prepare_for_inference`):
        channels_last (`bool`, *optional*, defaults to `True`): store 2-D convolution weights channels-last (the
            EfficientNet face branch); outputs equal the default layout's to float rounding (tested to 1e-5).
        torch_compile (`bool`, `str` or `dict`, *optional*, defaults to `False`): `torch.compile` the model (`True`, a
            mode name such as `"max-autotune"`, or `torch.compile` keyword arguments). Opt-in: the first calls
            compile, and new input shapes recompile.
        tf32 (`bool`, *optional*): let float32 matrix products and convolutions on CUDA use TF32 (`True`; results
            change at about 1e-3 relative) or force full float32 (`False`); `None` leaves PyTorch's process-wide
            setting alone. `dtype=torch.bfloat16` (transformers' own `pipeline` argument) runs the model in bfloat16.

    Windows are aligned by time: audio samples and video frames by their presentation timestamps, so a gap in the
    video (variable frame rate, dropped frames) is a window without frames, which uses the audio only (noted), and a
    window with neither is left out (noted). Audio shorter than one model frame (25 ms) is an error unless another
    modality can be used.

    Returns, per input:
        - categorical: a list of `{"label", "score", "modalities"}` sorted by score;
        - dimensional: `{attribute: value, ..., "modalities"}` on the corpus scale of `config.label_scale`;
        - inputs longer than one window: `{"windows": [{"start", "end", ...per-window result}], "modalities", ...}`
          with the aggregate (duration-weighted mean probabilities, or mean values) at the top level: under
          `"predictions"` for categorical models, as attribute keys for dimensional ones.
        `"notes"` lists fall-backs (e.g. no face found: audio only).
    """

    _load_processor = True
    _load_feature_extractor = False
    _load_image_processor = False
    _load_tokenizer = False

    def __init__(
        self,
        *args: Any,
        channels_last: bool = True,
        torch_compile: bool | str | dict[str, Any] = False,
        tf32: bool | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError(f"{TASK} needs the model's AvEmotionProcessor (save it next to the model)")
        if not isinstance(self.processor, AvEmotionProcessor):
            # a crafted processor_class makes AutoProcessor return a bare image processor or another class
            raise ValueError(
                f"{TASK} needs an AvEmotionProcessor, got {type(self.processor).__name__} (check processor_class in "
                "the model directory's processor_config.json)"
            )
        if tf32 not in (None, True, False):
            raise ValueError(f"tf32 must be True, False or None (leave PyTorch's setting), got {tf32!r}")
        if isinstance(self.model, torch.nn.Module):  # an ONNX Runtime model has no such settings
            prepare_for_inference(self.model, channels_last=channels_last, compile=torch_compile, allow_tf32=tf32)
        elif torch_compile:
            raise ValueError(f"torch_compile needs a PyTorch model, got {type(self.model).__name__}")

    @property
    def model_spec(self) -> InputSpec:
        """The model's declared inputs (`avemotion.models.declaration`, read once)."""
        if "_model_spec" not in self.__dict__:
            self._model_spec = model_input_spec(self.model)
        return self._model_spec

    @property
    def model_modalities(self) -> tuple[str, ...]:
        """The modalities the model takes, in its order."""
        return tuple(self.model_spec.modalities)

    @property
    def min_audio_samples(self) -> int:
        """The shortest waveform the pipeline passes on: the model's one frame (its waveform input's declared
        `min_samples`), at least what the feature extractor takes (`MIN_AUDIO_SAMPLES`)."""
        waveforms = self.model_spec.with_layout("waveform")
        declared = next((spec.min_samples for spec in waveforms if spec.min_samples), 0)
        return max(declared, MIN_AUDIO_SAMPLES)

    def _sanitize_parameters(
        self,
        top_k: int | None = None,
        window_seconds: float | None = None,
        stride_seconds: float | None = None,
        sampling_rate: int | None = None,
        errors: str | None = None,
        **kwargs: Any,
    ):
        if kwargs:
            raise ValueError(f"Unknown arguments for {TASK}: {sorted(kwargs)}")
        preprocess: dict[str, Any] = {}
        if window_seconds is not None:
            preprocess["window_seconds"] = check_seconds(window_seconds, "window_seconds")
        if stride_seconds is not None:
            preprocess["stride_seconds"] = check_seconds(stride_seconds, "stride_seconds")
        # the window/stride pair in effect for this call (construction-time values count too)
        merged = {**getattr(self, "_preprocess_params", {}), **preprocess}
        self._window_and_stride(merged.get("window_seconds"), merged.get("stride_seconds"))
        if sampling_rate is not None:
            preprocess["sampling_rate"] = check_sampling_rate(sampling_rate, "pipeline")
        postprocess: dict[str, Any] = {}
        if top_k is not None:
            if not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool) or top_k < 1:
                raise ValueError(f"top_k must be a whole number >= 1 (or None for every label), got {top_k!r}")
            postprocess["top_k"] = int(top_k)
        if errors is not None:
            if errors not in ERRORS_MODES:
                raise ValueError(f"errors must be one of {ERRORS_MODES}, got {errors!r}")
            postprocess["errors"] = errors
        return preprocess, {}, postprocess

    def _window_and_stride(self, window_seconds: float | None, stride_seconds: float | None) -> tuple[float, float]:
        """The window and stride in effect (defaults: `config.window_seconds` and the window), validated."""
        if window_seconds is None:
            default = self.model_spec.window_seconds or DEFAULT_WINDOW_SECONDS
            window = check_seconds(default, "config.window_seconds")
        else:
            window = check_seconds(window_seconds, "window_seconds")
        stride = window if stride_seconds is None else check_seconds(stride_seconds, "stride_seconds")
        if stride > window + _EPS:
            raise ValueError(
                f"stride_seconds ({stride}) must not exceed window_seconds ({window}): the media between windows "
                "would not be analysed"
            )
        return window, stride

    def __call__(self, inputs: Any, **kwargs: Any):
        try:
            import datasets

            if isinstance(inputs, datasets.Dataset):
                inputs = (row for row in inputs)
        except ImportError:
            pass
        # number the items of a list or stream so that an error names its position
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list):
            if not inputs:  # like an empty generator in transformers: no inputs, no results
                self._sanitize_parameters(
                    **{k: v for k, v in kwargs.items() if k not in ("batch_size", "num_workers")}
                )
                return []
            inputs = [_Numbered(index, value) for index, value in enumerate(inputs)]
        elif isinstance(inputs, types.GeneratorType):
            inputs = (_Numbered(index, value) for index, value in enumerate(inputs))
        elif isinstance(inputs, torch.utils.data.Dataset) and hasattr(inputs, "__len__"):  # e.g. KeyDataset
            inputs = (_Numbered(index, inputs[index]) for index in range(len(inputs)))
        return super().__call__(inputs, **kwargs)

    def get_iterator(
        self,
        inputs: Any,
        num_workers: int,
        batch_size: int,
        preprocess_params: dict[str, Any],
        forward_params: dict[str, Any],
        postprocess_params: dict[str, Any],
    ) -> Iterator[Any]:
        """transformers' chunk iterator (preprocess -> batched forward -> postprocess per input); with `num_workers`
        >= 1 the windows of a list's or stream's inputs come from a `PreprocessPool` of that many processes (in input
        order) instead of transformers' DataLoader, which runs a chunk pipeline's preprocessing in one worker."""
        if not isinstance(num_workers, numbers.Integral) or isinstance(num_workers, bool) or num_workers < 0:
            raise ValueError(
                f"num_workers must be a whole number >= 0 (0: preprocess in-process), got {num_workers!r}"
            )
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        single = isinstance(inputs, list) and not (inputs and isinstance(inputs[0], _Numbered))
        if num_workers and not single and not can_fork():
            logger.warning("%s: num_workers=%d needs forked processes; preprocessing in-process", TASK, num_workers)
            num_workers = 0
        if "TOKENIZERS_PARALLELISM" not in os.environ:  # as transformers' ChunkPipeline.get_iterator
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        pool = None
        if not num_workers or single:
            # preprocessed in the calling process (transformers would start one DataLoader worker for num_workers=1)
            windows: IterableDataset = PipelineChunkIterator(inputs, self.preprocess, preprocess_params)
        else:
            workers = min(int(num_workers), len(inputs)) if isinstance(inputs, list) else int(num_workers)
            pool = PreprocessPool(
                functools.partial(self.preprocess, **preprocess_params),
                inputs,
                workers,
                describe=_describe_input,
                windows_ahead=PreprocessPool.windows_ahead_for(batch_size, workers),
            )
            windows = _Windows(pool)
        # the same batching, forward and regrouping as transformers' ChunkPipeline.get_iterator, error items aside
        feature_extractor = self.feature_extractor if self.feature_extractor is not None else self.image_processor
        collate_fn = (
            no_collate_fn if batch_size == 1 else _collate_errors(pad_collate_fn(self.tokenizer, feature_extractor))
        )
        loader = DataLoader(windows, num_workers=0, batch_size=batch_size, collate_fn=collate_fn)
        model_iterator = PipelinePackIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        results = PipelineIterator(model_iterator, self.postprocess, postprocess_params)
        return results if pool is None else _closing(results, pool)

    # -- preprocessing ------------------------------------------------------------------------------------------------

    def preprocess(
        self,
        inputs: Any,
        window_seconds: float | None = None,
        stride_seconds: float | None = None,
        sampling_rate: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        index, value = (inputs.index, inputs.value) if isinstance(inputs, _Numbered) else (None, inputs)
        window, stride = self._window_and_stride(window_seconds, stride_seconds)
        try:
            yield from self._preprocess_item(value, index or 0, window, stride, sampling_rate)
        except (ValueError, OSError) as error:
            # an unusable input becomes an error item (an `InputError` and no model inputs): reported (or skipped) in
            # its turn by `postprocess`, so that the inputs before it, batched with it or not, keep their results
            yield {"is_last": True, "meta": InputError.from_exception(value, index, error)}

    def _preprocess_item(
        self, value: Any, index: int, window: float, stride: float, sampling_rate: int | None
    ) -> Iterator[dict[str, Any]]:
        item = value if isinstance(value, EmotionInput) else normalize_input(value, index, sampling_rate)
        if item.has_features:
            yield self._features_item(item)
            return
        available = {m for m in ("audio", "video", "text") if getattr(item, m) is not None}
        usable = [m for m in self.model_modalities if m in available]
        if not usable:
            raise ValueError(
                f"{item.name}: this {self.model.config.model_type} model uses {' and '.join(self.model_modalities)}, "
                f"but the input has {' and '.join(sorted(available)) or 'nothing usable'}"
            )
        notes: list[str] = []
        windows = self._windows(item, usable, window, stride, notes)
        current = next(windows, None)
        if current is None:
            raise ValueError(f"{item.name}: nothing to analyse ({'; '.join(notes) or 'no audio or video'})")
        while current is not None:
            start, end, audio, video = current
            encoded = self._encode_window(item, audio, video, notes)
            following = next(windows, None)  # look ahead to mark the last window
            flags = {m: encoded.pop(f"_{m}_used") for m in ("audio", "video", "text")}
            used = [m for m in usable if flags[m]]
            yield {
                **encoded,
                "is_last": following is None,
                # the notes of the whole input travel with its last window (postprocess reads them there)
                "meta": {
                    "start": start,
                    "end": end,
                    "modalities": used,
                    "name": item.name,
                    "notes": list(notes) if following is None else [],
                },  # fmt: skip
            }
            current = following

    def _features_item(self, item: EmotionInput) -> dict[str, Any]:
        """Pre-extracted features go to the model as they are, in one window: every modality whose `input_spec` entry
        has `"features"` takes them (absent: one zero frame, masked), except a transcript given as text, which keeps
        its token inputs; modalities without a `"features"` entry get their usual (possibly empty) inputs."""
        if item.audio is not None or item.video is not None:
            raise ValueError(f"{item.name}: give either media or pre-extracted features, not both")
        modalities = self.model_spec.modalities
        # a transcript is given as text: its cached features (if the model declares any) are the collator's business
        taken = {spec.features[0]: spec for spec in modalities.values() if spec.features and spec.layout != "tokens"}
        for field_name in item.features:
            if field_name not in taken:
                accepted = f"pre-extracted features {sorted(taken)}" if taken else "no pre-extracted features"
                raise ValueError(
                    f"{item.name}: this model does not take pre-extracted features {field_name!r}; it takes "
                    f"{accepted}, or {' and '.join(self.model_modalities)} as media"
                )
        encoded, used = self._model_inputs(item, None, None), []
        for modality, spec in modalities.items():
            if spec.features and spec.features[0] in taken:
                self._drop_inputs(encoded, spec)
                value = item.features.get(spec.features[0])
                encoded.update(self._feature_inputs(item.name, spec, value))
                used += [modality] if value is not None else []
            elif spec.layout == "tokens" and item.text is not None:
                used.append(modality)
        # the length in seconds, from the first given features that have a declared frame rate (else the video's)
        given = [spec for spec in taken.values() if spec.features[0] in item.features]
        timed = next((spec for spec in given if spec.feature_rate), given[0])
        frames = item.features[timed.features[0]]
        rate = timed.feature_rate or item.fps or 30.0
        end = frames.shape[-2] / rate
        meta = {"start": 0.0, "end": end, "modalities": used, "notes": [], "name": item.name}
        return {**encoded, "is_last": True, "meta": meta}

    @staticmethod
    def _drop_inputs(encoded: dict[str, Any], spec: ModalitySpec) -> None:
        """Remove a modality's raw inputs (replaced by its features)."""
        for name in (*spec.inputs, *spec.extra_inputs):
            encoded.pop(name, None)

    @staticmethod
    def _feature_inputs(name: str, spec: ModalitySpec, value: np.ndarray | None) -> dict[str, torch.Tensor]:
        """`{features key: (1, [layers,] frames, dim), mask key: (1, frames)}` (`layers` where the spec declares
        `feature_layers`); an absent value is one zero frame, masked."""
        key, mask_key = spec.features
        dim, layers = spec.feature_dim, spec.feature_layers
        shape = (layers, 1, dim) if layers else (1, dim)
        if value is not None:
            if value.ndim != len(shape) or (layers and value.shape[0] != layers):
                expected = f"({layers} layers, frames, {dim})" if layers else f"(frames, {dim})"
                raise ValueError(f"{name}: this model takes {key!r} as {expected}, got shape {value.shape}")
            if value.shape[-1] != dim:
                raise ValueError(f"{name}: {key!r} must have {dim} values per frame, got {value.shape[-1]}")
        present = value is not None
        value = value if present else np.zeros(shape, np.float32)
        encoded = {key: torch.from_numpy(value)[None]}
        if mask_key is not None:
            encoded[mask_key] = torch.full((1, value.shape[-2]), int(present), dtype=torch.long)
        return encoded

    def _windows(
        self, item: EmotionInput, usable: list[str], window: float, stride: float, notes: list[str]
    ) -> Iterator[tuple[float, float, np.ndarray | None, np.ndarray | None]]:
        """Time-aligned `(start, end, audio samples, video frames)` windows, decoded lazily (see
        `windows.media_windows`); an input with a transcript is one window (`windows.transcript_window`)."""
        rate = self.processor.feature_extractor.sampling_rate
        if "text" in usable:
            samples = np.concatenate(list(self._audio_blocks(item, rate, alone=False))) if "audio" in usable else None
            yield transcript_window(samples, rate, self.min_audio_samples, notes)
            return
        audio = (
            _AudioTrack(self._audio_blocks(item, rate, alone=usable == ["audio"]), rate) if "audio" in usable else None
        )
        video = self._video_track(item, audio is not None) if "video" in usable else None
        yield from media_windows(audio, video, window, stride, self.min_audio_samples, notes)

    def _audio_blocks(self, item: EmotionInput, rate: int, alone: bool = True) -> Iterator[np.ndarray]:
        """Mono sample blocks at `rate`; a waveform shorter than one model frame is an error when it is the only
        usable modality (`alone`), else it is left out later, with a note."""
        if isinstance(item.audio, str):
            return iter_audio_blocks(item.audio, rate, name=f"audio of {item.name}")
        waveform = check_waveform(item.audio, f"audio of {item.name}")
        source_rate = item.sampling_rate
        if source_rate is None:
            logger.warning("%s: no sampling_rate given for the waveform; assuming %d Hz", item.name, rate)
            source_rate = rate
        waveform = resample(waveform, int(source_rate), rate)
        if len(waveform) < self.min_audio_samples and alone:
            raise ValueError(
                f"audio of {item.name}: {len(item.audio)} samples at {source_rate} Hz is shorter than one model frame "
                f"({self.min_audio_samples / rate * 1000:.0f} ms)"
            )
        return iter([waveform])

    def _video_track(self, item: EmotionInput, with_audio: bool) -> _VideoTrack | np.ndarray:
        fps = self.processor.image_processor.video_fps
        if isinstance(item.video, str):
            # frame times count from the first decoded audio sample of the same file (or from the first frame): a
            # container may start at any time (MPEG-TS, cut streams), and audio samples are counted from 0
            same_file = with_audio and item.audio == item.video
            origin = _stream_start(item.video, "audio" if same_file else "video")
            frames = iter_video_frames(item.video, fps=fps, name=f"video of {item.name}")
            return _VideoTrack((max(time - origin, 0.0), frame) for time, frame in frames)
        frames = check_video_array(item.video, f"video of {item.name}")
        rate = item.fps or fps
        if rate is None:
            if with_audio:
                raise ValueError(
                    f"{item.name}: video frames given as an array need 'fps' to be aligned with the audio, "
                    "e.g. {'audio': ..., 'video': frames, 'fps': 25}"
                )
            return frames
        return _VideoTrack(((i / rate, frame) for i, frame in enumerate(frames)), frame_duration=1.0 / rate)

    def _encode_window(
        self, item: EmotionInput, audio: np.ndarray | None, video: np.ndarray | None, notes: list[str]
    ) -> dict[str, Any]:
        """The model inputs of one window (see `_model_inputs`) and which modalities it used (`_{modality}_used`)."""
        pixels = self._face_crops(video, audio is not None, notes) if video is not None else None
        encoded = self._model_inputs(item, audio, pixels)
        encoded["_audio_used"] = audio is not None
        encoded["_video_used"] = pixels is not None
        encoded["_text_used"] = item.text is not None and "text" in self.model_modalities
        return encoded

    def _detection_device(self) -> torch.device | None:
        """Faces are detected on the model's GPU in the main process; forked workers (and CPU models) use the CPU."""
        return self.device if self.device.type == "cuda" and os.getpid() == _MAIN_PROCESS else None

    def _face_crops(self, video: np.ndarray, has_audio: bool, notes: list[str]) -> Any:
        """The processor's face crops of a window's frames; None (noted) when no frame shows a face and the window has
        audio to fall back on."""
        try:
            # uint8 crops: a quarter of the bytes through the workers' pipes and to the device; `_run_model`
            # normalises them where the model runs
            return self.processor.image_processor.face_crops(
                video, return_tensors="pt", device=self._detection_device()
            )
        except NoFaceFoundError as error:
            if not has_audio:
                raise
            _note(notes, f"no face found ({error}); used audio only")
            return None

    def _model_inputs(self, item: EmotionInput, audio: np.ndarray | None, pixels: Any) -> dict[str, torch.Tensor]:
        """The inputs of every modality the model takes (`input_spec`), under the model's names, and its segment
        inputs. Every item has the same keys, so that items can be batched: an absent modality is an empty
        placeholder with an all-zero mask."""
        encoded: dict[str, torch.Tensor] = {}
        builders = {"audio": self._audio_inputs, "video": self._video_inputs, "text": self._text_inputs}
        for modality, spec in self.model_spec.modalities.items():
            if modality not in builders:
                raise ValueError(f"{TASK} takes {MODALITIES}; the model's input_spec names {modality!r}")
            values, mask, extra = builders[modality](item, audio, pixels, spec)
            values_key, mask_key = spec.inputs
            encoded[values_key], encoded[mask_key] = values, mask
            encoded.update({name: extra[name] for name in spec.extra_inputs if name in extra})
        for granularity, (segments_key, mask_key) in self.model_spec.segments.items():
            segments, mask = pad_segments([item.segments.get(granularity)])
            encoded[segments_key], encoded[mask_key] = segments, mask.long()
        return encoded

    def _audio_inputs(self, item: EmotionInput, audio: np.ndarray | None, pixels: Any, spec: ModalitySpec):
        """`(input_values (1, samples), mask (1, samples), {})`; no audio: one model frame of zeros, masked."""
        if audio is None:
            frame = self.min_audio_samples
            return torch.zeros(1, frame), torch.zeros(1, frame, dtype=torch.long), {}
        rate = self.processor.feature_extractor.sampling_rate
        features = self.processor(audio=audio, sampling_rate=rate, return_tensors="pt")
        return features["input_values"], features["audio_attention_mask"], {}

    def _video_inputs(self, item: EmotionInput, audio: np.ndarray | None, pixels: Any, spec: ModalitySpec):
        """`(uint8 face crops (1, frames, 3, H, W), mask (1, frames), {})`; no face crops: one zero frame, masked
        (uint8 too: a batch's items share a dtype)."""
        if pixels is None:
            size = self.processor.image_processor.size
            frames = torch.zeros(1, 1, 3, size["height"], size["width"], dtype=torch.uint8)
            return frames, torch.zeros(1, 1, dtype=torch.long), {}
        return pixels["face_crops"], pixels[self.processor.image_processor.model_input_names[1]], {}

    def _text_inputs(self, item: EmotionInput, audio: np.ndarray | None, pixels: Any, spec: ModalitySpec):
        """`(input_ids (1, tokens), mask (1, tokens), other tokenizer outputs)`, cut to the declared `max_length`
        (none declared: the tokenizer's own limit); no transcript: the tokens of an empty string, masked."""
        text_kwargs: dict[str, Any] = {"truncation": True}
        if spec.max_length:
            text_kwargs["max_length"] = spec.max_length
        tokens = self.processor(text=item.text or "", return_tensors="pt", text_kwargs=text_kwargs)
        return tokens["input_ids"], tokens["attention_mask"] * int(item.text is not None), dict(tokens)

    # -- forward and postprocessing -----------------------------------------------------------------------------------

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        """Logits of a window or a batch of them. Error items (`InputError` metas) have no model inputs (`_collate`
        leaves them out of the batched inputs): their logits are None, and the model sees only the other rows."""
        is_last, meta = model_inputs.pop("is_last"), model_inputs.pop("meta")
        if isinstance(meta, InputError):  # an unbatched error item
            return {"is_last": is_last, "meta": meta, "logits": None}
        errors = [isinstance(item_meta, InputError) for item_meta in meta] if isinstance(meta, list) else []
        if not any(errors):
            return {"is_last": is_last, "meta": meta, "logits": self._run_model(model_inputs)}
        rows = iter(self._run_model(model_inputs) if model_inputs else ())
        return {"is_last": is_last, "meta": meta, "logits": [None if error else next(rows) for error in errors]}

    def _run_model(self, model_inputs: dict[str, Any]) -> torch.Tensor:
        """The model's logits (float32) for a batch: a modality that no row of the batch has is not passed at all,
        segment masks are booleans and other float inputs take the model's dtype."""
        for spec in self.model_spec.modalities.values():
            groups = [(spec.inputs, spec.extra_inputs)]
            if spec.features:
                groups.append((spec.features, ()))
            for (values, mask), extra in groups:
                if values in model_inputs and mask in model_inputs and not model_inputs[mask].any():
                    for name in (values, mask, *extra):
                        model_inputs.pop(name, None)
        for spec in self.model_spec.with_layout("frames"):
            crops = model_inputs.get(spec.inputs[0])
            if crops is not None and crops.dtype == torch.uint8:  # face crops: normalised on the model's device
                model_inputs[spec.inputs[0]] = self.processor.image_processor.normalize_crops(crops)
        segment_keys = {key for keys in self.model_spec.segments.values() for key in keys}
        segment_masks = {mask for _, mask in self.model_spec.segments.values()}
        for name, value in model_inputs.items():
            if name in segment_masks:
                model_inputs[name] = value.bool()
            elif value.is_floating_point() and name not in segment_keys:
                model_inputs[name] = value.to(self.model.dtype)  # the pipeline's dtype
        return self.model(**model_inputs).logits.float()

    def postprocess(self, model_outputs: list[dict[str, Any]], top_k: int | None = None, errors: str = "raise") -> Any:
        """One input's result from its windows' logits (see the class docstring), or its error (`errors`)."""
        error = self._error_result(model_outputs, errors)
        if error is not None:
            return error
        regression = self.model.config.problem_type == "regression"
        windows = self._window_values(model_outputs, regression)
        modalities = [m for m in self.model_modalities if any(m in meta["modalities"] for meta, _ in windows)]
        notes = windows[-1][0]["notes"]
        if len(windows) == 1:
            return self._format(windows[0][1], regression, top_k, modalities, notes)
        durations = torch.tensor([max(meta["end"] - meta["start"], 1e-6) for meta, _ in windows])
        stacked = torch.stack([values for _, values in windows])
        aggregate = (stacked * (durations / durations.sum()).unsqueeze(-1)).sum(0)
        result: dict[str, Any] = {
            "windows": [
                {
                    "start": round(meta["start"], 3),
                    "end": round(meta["end"], 3),
                    **self._window_result(values, regression, top_k, meta["modalities"]),
                }
                for meta, values in windows
            ],  # fmt: skip
            "modalities": modalities,
        }
        result.update(self._window_result(aggregate, regression, top_k, modalities))
        if notes:
            result["notes"] = notes
        return result

    @staticmethod
    def _error_result(model_outputs: list[dict[str, Any]], errors: str) -> dict[str, str] | None:
        """An error item's `{"error", "input"}` result (`errors="skip"`); raises it with `errors="raise"`."""
        for output in model_outputs:
            meta = output["meta"][0] if isinstance(output["meta"], list) else output["meta"]
            if isinstance(meta, InputError):
                if errors == "skip":
                    return {"error": meta.message, "input": meta.name}
                raise ValueError(meta.message)
        return None

    def _window_values(self, model_outputs: list[dict[str, Any]], regression: bool) -> list[tuple[dict, torch.Tensor]]:
        """`(meta, values)` per window: label-scale values (regression) or probabilities."""
        windows = []
        for output in model_outputs:
            meta = output["meta"][0] if isinstance(output["meta"], list) else output["meta"]
            logits = output["logits"].reshape(-1)
            windows.append((meta, self._to_label_scale(logits) if regression else torch.softmax(logits, dim=-1)))
        return windows

    def _to_label_scale(self, raw: torch.Tensor) -> torch.Tensor:
        scale = getattr(self.model.config, "label_scale", None)
        if not scale:
            return raw
        low, high = scale
        return low + (high - low) * raw

    def _window_result(self, values: torch.Tensor, regression: bool, top_k: int | None, modalities: list[str]):
        formatted = self._format(values, regression, top_k, modalities, [])
        if regression:
            return formatted
        return {"predictions": formatted, "modalities": modalities}

    def _format(self, values: torch.Tensor, regression: bool, top_k: int | None, modalities: list[str], notes):
        id2label = self.model.config.id2label
        if regression:
            result: dict[str, Any] = {id2label[i]: float(v) for i, v in enumerate(values.tolist())}
            result["modalities"] = modalities
            if notes:
                result["notes"] = notes
            return result
        k = len(values) if top_k is None else min(top_k, len(values))
        scores, indices = values.topk(k)
        predictions = [
            {"label": id2label[int(i)], "score": float(s), "modalities": modalities} for s, i in zip(scores, indices)
        ]
        if notes:
            for prediction in predictions:
                prediction["notes"] = notes
        return predictions


def model_input_spec(model: Any) -> InputSpec:
    """The model's declared inputs, read and checked by `avemotion.models.declaration.read_declaration`."""
    if not callable(getattr(model, "input_spec", None)):
        raise ValueError(
            f"{TASK} needs a model that declares its inputs with `input_spec()`, got {type(model).__name__}"
        )
    return read_declaration(model).inputs


def register_pipeline() -> None:
    """Register the task with transformers' pipeline registry (done by `import avemotion`)."""
    from transformers import AutoModelForAudioClassification
    from transformers.pipelines import PIPELINE_REGISTRY

    # a directory written by `avemotion export-onnx` (no PyTorch weights) loads as an ONNX Runtime model
    from avemotion.models.onnx_runtime import OnnxRuntimeEmotionModel

    PIPELINE_REGISTRY.register_pipeline(
        TASK,
        pipeline_class=AudioVisualEmotionPipeline,
        pt_model=(AutoModelForAudioClassification, OnnxRuntimeEmotionModel),
        type="multimodal",
    )


__all__ = [
    "ERRORS_MODES",
    "MIN_WINDOW_SECONDS",
    "MODALITIES",
    "TASK",
    "AudioVisualEmotionPipeline",
    "EmotionInput",
    "looks_like_path",
    "model_input_spec",
    "normalize_input",
    "register_pipeline",
]
