"""`pipeline("audio-visual-emotion")`: emotion predictions from a video, an audio file or array, and/or a transcript.

The model decides which modalities it uses (VAVL: audio and video; the multi-level fusion model: audio and text);
every result names the modalities that were used. Media longer than the model's window (`config.window_seconds`)
are cut into windows while they are decoded, so memory stays bounded whatever the length; such inputs give one
result per window with `start`/`end` seconds and an aggregate over the whole input.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.pipelines.base import ChunkPipeline

from avemotion.processing.faces import NoFaceFoundError
from avemotion.processing.media import (
    check_video_array,
    check_waveform,
    iter_audio_blocks,
    iter_video_frames,
    media_streams,
    resample,
)

logger = logging.getLogger(__name__)

TASK = "audio-visual-emotion"
# The modalities each model type can use.
MODEL_MODALITIES = {"vavl": ("audio", "video"), "mlfusion": ("audio", "text")}
_MEDIA_SUFFIXES = {
    ".wav", ".flac", ".mp3", ".ogg", ".aiff", ".aif", ".m4a", ".aac", ".opus",
    ".mp4", ".avi", ".flv", ".mkv", ".mov", ".webm", ".mpg", ".mpeg",
}  # fmt: skip
_MIN_AUDIO_SAMPLES = 400  # one wav2vec2 frame (25 ms at 16 kHz)
_GRANULARITIES = ("phone", "syllable", "word")


@dataclass
class EmotionInput:
    """One normalised pipeline input. `audio`/`video` are a file path, or an array with its rate."""

    name: str
    audio: str | np.ndarray | None = None
    sampling_rate: int | None = None
    video: str | np.ndarray | None = None
    fps: float | None = None
    text: str | None = None
    segments: dict[str, list] = field(default_factory=dict)
    # pre-extracted (frames, dim) features, for models without backbones (e.g. from the feature cache)
    audio_features: np.ndarray | None = None
    visual_features: np.ndarray | None = None

    @property
    def has_features(self) -> bool:
        return self.audio_features is not None or self.visual_features is not None


def _is_media_path(value: Any) -> bool:
    """A path object, an existing file, or a string ending in a media suffix (so that a mistyped file name is an
    error, not a transcript); any other string is a transcript, even one with a '/' in it."""
    if isinstance(value, os.PathLike):
        return True
    if not isinstance(value, str) or "\n" in value:
        return False
    return Path(value).is_file() or Path(value.strip()).suffix.lower() in _MEDIA_SUFFIXES


def normalize_input(inputs: Any, index: int = 0, sampling_rate: int | None = None) -> EmotionInput:
    """Turn any accepted input form into an `EmotionInput`.

    Accepted: a media path (a video gives its frames and its sound track), a transcript string (a string that is
    not a path), a 1-D waveform (with `sampling_rate`), (T, H, W, 3) uint8 frames, `{"array", "sampling_rate"}`,
    or a dict `{"audio", "video", "text", "segments", "sampling_rate", "fps"}` with any subset (other keys such as
    `label` or `id` of a dataset row are ignored).
    """
    if isinstance(inputs, (str, os.PathLike)):
        if not _is_media_path(inputs):
            return EmotionInput(name=f"input #{index}", text=str(inputs))
        path = os.fspath(inputs)
        if not Path(path).is_file():
            raise ValueError(f"{path!r}: no such file")
        has_audio, has_video = media_streams(path)
        return EmotionInput(name=path, audio=path if has_audio else None, video=path if has_video else None)
    if isinstance(inputs, np.ndarray) or torch.is_tensor(inputs):
        array = inputs.detach().cpu().numpy() if torch.is_tensor(inputs) else inputs
        if array.ndim == 4:
            return EmotionInput(name=f"input #{index}", video=array)
        return EmotionInput(name=f"input #{index}", audio=array, sampling_rate=sampling_rate)
    if isinstance(inputs, dict) or hasattr(inputs, "keys"):
        if "array" in inputs and not ({"audio", "video", "text"} & set(inputs.keys())):
            return EmotionInput(name=f"input #{index}", audio=np.asarray(inputs["array"]),
                                sampling_rate=int(inputs["sampling_rate"]))  # fmt: skip
        return _normalize_dict(inputs, index, sampling_rate)
    raise ValueError(
        f"input #{index}: expected a media path, a transcript, a waveform array, video frames or a dict with "
        f"'audio', 'video' and/or 'text', got {type(inputs).__name__}"
    )


def _normalize_dict(inputs: Any, index: int, sampling_rate: int | None) -> EmotionInput:
    item = EmotionInput(name=f"input #{index}", sampling_rate=inputs.get("sampling_rate", sampling_rate))
    item.fps = inputs.get("fps")
    audio, video, text = inputs.get("audio"), inputs.get("video"), inputs.get("text")
    if audio is not None:
        if isinstance(audio, (str, os.PathLike)):
            item.audio, item.name = os.fspath(audio), os.fspath(audio)
        elif hasattr(audio, "keys") or hasattr(audio, "__getitem__") and not isinstance(audio, (list, np.ndarray)):
            # {"array", "sampling_rate"} or a datasets audio decoder
            item.audio, item.sampling_rate = np.asarray(audio["array"]), int(audio["sampling_rate"])
        else:
            item.audio = np.asarray(audio.detach().cpu() if torch.is_tensor(audio) else audio)
    if video is not None:
        item.video = os.fspath(video) if isinstance(video, (str, os.PathLike)) else np.asarray(video)
        if isinstance(item.video, str):
            item.name = item.video if item.audio is None else item.name
    if text is not None:
        if not isinstance(text, str):
            raise ValueError(f"{item.name}: 'text' must be a string, got {type(text).__name__}")
        item.text = text
    for name in ("audio_features", "visual_features"):
        value = inputs.get(name)
        if value is not None:
            value = np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=np.float32)
            if value.ndim != 2 or not np.isfinite(value).all():
                raise ValueError(
                    f"{item.name}: {name!r} must be a finite (frames, dim) array, got shape {value.shape}"
                )
            setattr(item, name, value)
    item.segments = dict(inputs.get("segments") or {})
    unknown = set(item.segments) - set(_GRANULARITIES)
    if unknown:
        raise ValueError(f"{item.name}: unknown segment granularities {sorted(unknown)}; expected {_GRANULARITIES}")
    if item.audio is None and item.video is None and item.text is None and not item.has_features:
        raise ValueError(f"{item.name}: the dict holds none of 'audio', 'video' or 'text'")
    return item


def audio_windows(
    blocks: Iterator[np.ndarray], rate: int, window_seconds: float, stride_seconds: float
) -> Iterator[tuple[float, float, np.ndarray]]:
    """Cut a stream of sample blocks into windows `[k * stride, k * stride + window)`; an uncovered tail gets one
    last window aligned to the end of the stream. Only the last `window` samples are held."""
    window, hop = int(round(window_seconds * rate)), int(round(stride_seconds * rate))
    buffer, offset, next_start, covered = np.zeros(0, dtype=np.float32), 0, 0, 0
    for block in blocks:
        buffer = np.concatenate([buffer, block])
        while offset + len(buffer) >= next_start + window:
            begin = next_start - offset
            yield next_start / rate, (next_start + window) / rate, buffer[begin : begin + window]
            covered, next_start = next_start + window, next_start + hop
            keep_from = min(next_start, offset + len(buffer) - window) - offset
            if keep_from > 0:
                buffer, offset = buffer[keep_from:], offset + keep_from
    total = offset + len(buffer)
    if total > covered:
        start = max(0, total - window)
        yield start / rate, total / rate, buffer[start - offset :]


def video_windows(
    frames: Iterator[tuple[float, np.ndarray]], window_seconds: float, stride_seconds: float
) -> Iterator[tuple[float, float, np.ndarray]]:
    """Group timed frames into the same windows as `audio_windows` (by timestamp); holds one window of frames."""
    held: list[tuple[float, np.ndarray]] = []
    next_start, covered, last_time, step = 0.0, 0.0, 0.0, 0.0
    for time, frame in frames:
        step = time - last_time if held else step
        last_time = time
        while time >= next_start + window_seconds:
            chunk = [f for t, f in held if next_start <= t < next_start + window_seconds]
            if chunk:
                yield next_start, next_start + window_seconds, np.stack(chunk)
            covered, next_start = next_start + window_seconds, next_start + stride_seconds
            held = [(t, f) for t, f in held if t >= min(next_start, time - window_seconds)]
        held.append((time, frame))
    end = last_time + step
    if held and end > covered:
        start = max(0.0, end - window_seconds)
        chunk = [f for t, f in held if t >= start - 1e-6]
        yield start, end, np.stack(chunk)


class AudioVisualEmotionPipeline(ChunkPipeline):
    """Emotion recognition from audio, video and/or text with an avemotion model and its `AvEmotionProcessor`.

    Call it with one input or a list (see `normalize_input` for the accepted forms), or a generator or `datasets`
    dataset of them.

    Args (at construction or per call):
        top_k (`int`, *optional*): categorical models: how many labels to return (all by default).
        window_seconds (`float`, *optional*): length of the analysis windows (default: `config.window_seconds`).
        stride_seconds (`float`, *optional*): hop between windows (default: the window length, no overlap).
        sampling_rate (`int`, *optional*): rate of raw waveform arrays (default: the feature extractor's).

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

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        model_type = self.model.config.model_type
        if model_type not in MODEL_MODALITIES:
            raise ValueError(f"{TASK} supports {sorted(MODEL_MODALITIES)} models, got model_type {model_type!r}")
        self.model_modalities = MODEL_MODALITIES[model_type]
        if self.processor is None:
            raise ValueError(f"{TASK} needs the model's AvEmotionProcessor (save it next to the model)")

    def _sanitize_parameters(
        self,
        top_k: int | None = None,
        window_seconds: float | None = None,
        stride_seconds: float | None = None,
        sampling_rate: int | None = None,
        **kwargs: Any,
    ):
        if kwargs:
            raise ValueError(f"Unknown arguments for {TASK}: {sorted(kwargs)}")
        preprocess = {}
        if window_seconds is not None:
            if window_seconds <= 0:
                raise ValueError(f"window_seconds must be positive, got {window_seconds}")
            preprocess["window_seconds"] = window_seconds
        if stride_seconds is not None:
            if stride_seconds <= 0:
                raise ValueError(f"stride_seconds must be positive, got {stride_seconds}")
            preprocess["stride_seconds"] = stride_seconds
        if sampling_rate is not None:
            preprocess["sampling_rate"] = sampling_rate
        postprocess = {"top_k": top_k} if top_k is not None else {}
        return preprocess, {}, postprocess

    def __call__(self, inputs: Any, **kwargs: Any):
        try:
            import datasets

            if isinstance(inputs, datasets.Dataset):
                inputs = (row for row in inputs)
        except ImportError:
            pass
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        return super().__call__(inputs, **kwargs)

    # -- preprocessing ------------------------------------------------------------------------------------------------

    def preprocess(
        self,
        inputs: Any,
        window_seconds: float | None = None,
        stride_seconds: float | None = None,
        sampling_rate: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        item = inputs if isinstance(inputs, EmotionInput) else normalize_input(inputs, sampling_rate=sampling_rate)
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
        window = window_seconds or float(getattr(self.model.config, "window_seconds", 12.0) or 12.0)
        stride = stride_seconds or window
        notes: list[str] = []
        windows = self._windows(item, usable, window, stride)
        current = next(windows, None)
        while current is not None:
            following = next(windows, None)  # look ahead to mark the last window
            start, end, audio, video = current
            encoded = self._encode_window(item, audio, video, notes)
            flags = {m: encoded.pop(f"_{m}_used") for m in ("audio", "video", "text")}
            used = [m for m in usable if flags[m]]
            yield {
                **encoded,
                "is_last": following is None,
                "meta": {"start": start, "end": end, "modalities": used, "notes": list(notes), "name": item.name},
            }
            current = following

    def _features_item(self, item: EmotionInput) -> dict[str, Any]:
        """Pre-extracted features go to the model as they are, in one window (VAVL only)."""
        if self.model.config.model_type != "vavl":
            raise ValueError(f"{item.name}: pre-extracted features are supported for VAVL models only")
        if item.audio is not None or item.video is not None:
            raise ValueError(f"{item.name}: give either media or pre-extracted features, not both")
        config, encoded, used = self.model.config, {}, []
        for modality, name, dim in (("audio", "audio_features", config.audio_feature_dim),
                                    ("video", "visual_features", config.visual_feature_dim)):  # fmt: skip
            value = getattr(item, name)
            if value is not None and value.shape[1] != dim:
                raise ValueError(f"{item.name}: {name!r} must have {dim} values per frame, got {value.shape[1]}")
            present = value is not None
            value = value if present else np.zeros((1, dim), np.float32)
            encoded[name] = torch.from_numpy(value)[None]
            encoded[f"{name}_mask"] = torch.full((1, len(value)), int(present), dtype=torch.long)
            used += [modality] if present else []
        frames = item.audio_features if item.audio_features is not None else item.visual_features
        rate = 50.0 if item.audio_features is not None else (item.fps or 30.0)
        meta = {"start": 0.0, "end": len(frames) / rate, "modalities": used, "notes": [], "name": item.name}
        return {**encoded, "is_last": True, "meta": meta}

    def _windows(
        self, item: EmotionInput, usable: list[str], window: float, stride: float
    ) -> Iterator[tuple[float, float, np.ndarray | None, np.ndarray | None]]:
        """Aligned `(start, end, audio samples, video frames)` windows, decoded lazily.

        An input with a transcript is one window (the transcript belongs to the whole utterance)."""
        rate = self.processor.feature_extractor.sampling_rate
        if "text" in usable:
            samples = np.concatenate(list(self._audio_blocks(item, rate))) if "audio" in usable else None
            yield 0.0, 0.0 if samples is None else len(samples) / rate, samples, None
            return
        audio = audio_windows(self._audio_blocks(item, rate), rate, window, stride) if "audio" in usable else ()
        video = self._video_windows(item, window, stride) if "video" in usable else ()
        for audio_window, video_window in itertools.zip_longest(audio, video):
            start, end = (audio_window or video_window)[:2]
            yield (
                start,
                end,
                audio_window[2] if audio_window else None,
                video_window[2] if video_window else None,
            )

    def _audio_blocks(self, item: EmotionInput, rate: int) -> Iterator[np.ndarray]:
        if isinstance(item.audio, str):
            return iter_audio_blocks(item.audio, rate, name=f"audio of {item.name}")
        waveform = check_waveform(item.audio, f"audio of {item.name}")
        source_rate = item.sampling_rate
        if source_rate is None:
            logger.warning("%s: no sampling_rate given for the waveform; assuming %d Hz", item.name, rate)
            source_rate = rate
        return iter([resample(waveform, int(source_rate), rate)])

    def _video_windows(self, item: EmotionInput, window: float, stride: float):
        fps = self.processor.image_processor.video_fps
        if isinstance(item.video, str):
            frames = iter_video_frames(item.video, fps=fps, name=f"video of {item.name}")
            return video_windows(frames, window, stride)
        frames = check_video_array(item.video, f"video of {item.name}")
        rate = item.fps or fps
        if rate is None:  # frames of unknown rate: one window
            return iter([(0.0, 0.0, frames)])
        return video_windows(((i / rate, frame) for i, frame in enumerate(frames)), window, stride)

    def _encode_window(
        self, item: EmotionInput, audio: np.ndarray | None, video: np.ndarray | None, notes: list[str]
    ) -> dict[str, Any]:
        processor, rate = self.processor, self.processor.feature_extractor.sampling_rate
        encoded: dict[str, Any] = {}
        pixels = None
        if video is not None:
            try:
                pixels = processor(video=video, return_tensors="pt")
            except NoFaceFoundError as error:
                if audio is None:
                    raise
                note = f"no face found ({error}); used audio only"
                if note not in notes:
                    notes.append(note)
        if audio is not None and len(audio) < _MIN_AUDIO_SAMPLES:
            audio = np.pad(audio, (0, _MIN_AUDIO_SAMPLES - len(audio)))
        if self.model.config.model_type == "vavl":
            encoded.update(self._vavl_inputs(audio, pixels, rate))
        else:
            encoded.update(self._mlfusion_inputs(item, audio, rate))
        encoded["_audio_used"] = audio is not None
        encoded["_video_used"] = pixels is not None
        encoded["_text_used"] = item.text is not None and "text" in self.model_modalities
        return encoded

    def _vavl_inputs(self, audio: np.ndarray | None, pixels: Any, rate: int) -> dict[str, torch.Tensor]:
        # Every item has the same keys (absent modality: an all-zero mask row) so that items can be batched.
        if audio is not None:
            features = self.processor(audio=audio, sampling_rate=rate, return_tensors="pt")
            values, mask = features["input_values"], features["audio_attention_mask"]
        else:
            values = torch.zeros(1, _MIN_AUDIO_SAMPLES)
            mask = torch.zeros(1, _MIN_AUDIO_SAMPLES, dtype=torch.long)
        if pixels is not None:
            frames, frames_mask = pixels["pixel_values_videos"], pixels["visual_features_mask"]
        else:
            size = self.processor.image_processor.size
            frames = torch.zeros(1, 1, 3, size["height"], size["width"])
            frames_mask = torch.zeros(1, 1, dtype=torch.long)
        return {
            "input_values": values,
            "attention_mask": mask,
            "pixel_values_videos": frames,
            "visual_features_mask": frames_mask,
        }

    def _mlfusion_inputs(self, item: EmotionInput, audio: np.ndarray | None, rate: int) -> dict[str, torch.Tensor]:
        from avemotion.models.mlfusion.segments import pad_segments

        encoded: dict[str, torch.Tensor] = {}
        if audio is not None:
            features = self.processor(audio=audio, sampling_rate=rate, return_tensors="pt")
            encoded["input_values"], encoded["attention_mask"] = (
                features["input_values"],
                features["audio_attention_mask"],
            )
        else:
            encoded["input_values"] = torch.zeros(1, _MIN_AUDIO_SAMPLES)
            encoded["attention_mask"] = torch.zeros(1, _MIN_AUDIO_SAMPLES, dtype=torch.long)
        max_length = getattr(self.model.config, "max_text_length", 128)
        tokens = self.processor(
            text=item.text or "", return_tensors="pt", text_kwargs={"truncation": True, "max_length": max_length}
        )
        encoded["input_ids"] = tokens["input_ids"]
        encoded["text_attention_mask"] = tokens["attention_mask"] * int(item.text is not None)
        for granularity in _GRANULARITIES:
            segments, mask = pad_segments([item.segments.get(granularity)])
            encoded[f"{granularity}_segments"], encoded[f"{granularity}_segments_mask"] = segments, mask.long()
        return encoded

    # -- forward and postprocessing -----------------------------------------------------------------------------------

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        is_last, meta = model_inputs.pop("is_last"), model_inputs.pop("meta")
        pairs = [("input_values", "attention_mask"), ("pixel_values_videos", "visual_features_mask"),
                 ("input_ids", "text_attention_mask"), ("audio_features", "audio_features_mask"),
                 ("visual_features", "visual_features_mask")]  # fmt: skip
        for values, mask in pairs:
            # a modality that no row of the batch has is not passed at all
            if values in model_inputs and mask in model_inputs and not model_inputs[mask].any():
                model_inputs.pop(values)
                model_inputs.pop(mask)
                if values == "input_ids":
                    model_inputs.pop("token_type_ids", None)
        for name, value in model_inputs.items():
            if name.endswith("_segments_mask"):
                model_inputs[name] = value.bool()
            elif value.is_floating_point() and not name.endswith("_segments"):
                model_inputs[name] = value.to(self.model.dtype)  # the pipeline's dtype
        outputs = self.model(**model_inputs)
        return {"is_last": is_last, "meta": meta, "logits": outputs.logits.float()}

    def postprocess(self, model_outputs: list[dict[str, Any]], top_k: int | None = None) -> Any:
        config = self.model.config
        regression = config.problem_type == "regression"
        windows = []
        for output in model_outputs:
            meta = output["meta"]
            meta = meta[0] if isinstance(meta, list) else meta
            logits = output["logits"].reshape(-1)
            values = self._to_label_scale(logits) if regression else torch.softmax(logits, dim=-1)
            windows.append((meta, values))
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
        k = len(values) if top_k is None else max(1, min(top_k, len(values)))
        scores, indices = values.topk(k)
        predictions = [
            {"label": id2label[int(i)], "score": float(s), "modalities": modalities} for s, i in zip(scores, indices)
        ]
        if notes:
            for prediction in predictions:
                prediction["notes"] = notes
        return predictions


def register_pipeline() -> None:
    """Register the task with transformers' pipeline registry (done by `import avemotion`)."""
    from transformers import AutoModelForAudioClassification
    from transformers.pipelines import PIPELINE_REGISTRY

    # a directory written by `avemotion export-onnx` (no PyTorch weights) loads as an ONNX Runtime model
    from avemotion.onnx.runtime import OnnxRuntimeEmotionModel

    PIPELINE_REGISTRY.register_pipeline(
        TASK,
        pipeline_class=AudioVisualEmotionPipeline,
        pt_model=(AutoModelForAudioClassification, OnnxRuntimeEmotionModel),
        type="multimodal",
    )


__all__ = ["TASK", "AudioVisualEmotionPipeline", "EmotionInput", "normalize_input", "register_pipeline"]
