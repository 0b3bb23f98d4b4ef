"""`pipeline("audio-visual-emotion")`: emotion predictions from a video, an audio file or array, and/or a transcript.

The pipeline is generic: the model declares what it takes in its `input_spec()` (which modalities, the input and mask
names of each, pre-extracted features it accepts, text length, aligned segment inputs, its analysis window), and the
pipeline builds exactly those inputs; it never names a model. Every result names the modalities that were used. Media longer than the model's window (`config.window_seconds`)
are cut into windows while they are decoded, so memory stays bounded whatever the length; audio and video are
paired by time (presentation timestamps), not by position. Such inputs give one result per window with
`start`/`end` seconds and an aggregate over the whole input.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import os
import re
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
from transformers.pipelines.base import ChunkPipeline, no_collate_fn, pad_collate_fn
from transformers.pipelines.pt_utils import PipelineIterator, PipelinePackIterator

from avemotion.pipelines.workers import PreprocessPool, can_fork
from avemotion.processing.faces import NoFaceFoundError
from avemotion.processing.media import (
    MEDIA_SUFFIXES,
    MIN_AUDIO_SAMPLES,
    check_fps,
    check_sampling_rate,
    check_video_array,
    check_waveform,
    iter_audio_blocks,
    iter_video_frames,
    media_streams,
    resample,
)
from avemotion.processing.processor import AvEmotionProcessor
from avemotion.processing.segments import SEGMENT_GRANULARITIES, pad_segments
from avemotion.utils.inference import prepare_for_inference

logger = logging.getLogger(__name__)

TASK = "audio-visual-emotion"
MODALITIES = ("audio", "video", "text")
# the input-dict keys of pre-extracted features, per modality (the model's `input_spec` says which it accepts)
FEATURE_FIELDS = {"audio": "audio_features", "video": "visual_features"}
DEFAULT_WINDOW_SECONDS = 12.0
_MAIN_PROCESS = os.getpid()  # the preprocessing workers are forked from it: they have other pids
# Strings with one of these suffixes are file names even with spaces in them (a missing one is an error, not text).
_FILE_SUFFIXES = MEDIA_SUFFIXES | {".txt", ".json", ".jsonl", ".csv", ".tsv", ".srt", ".vtt", ".lab", ".npy", ".npz"}
# A file-like suffix: "speech.wa", "notes.txt" (not "e.g." or "3.5").
_SUFFIX_PATTERN = re.compile(r"[^.\s]\.[A-Za-z][A-Za-z0-9]{0,4}$")
_MIN_AUDIO_SAMPLES = MIN_AUDIO_SAMPLES  # one wav2vec2 frame (25 ms at 16 kHz)
# Shortest window and stride: one model frame; shorter ones only multiply windows (1e-6 s ran out of memory).
MIN_WINDOW_SECONDS = 0.025
ERRORS_MODES = ("raise", "skip")
_EPS = 1e-6  # seconds; tolerance when comparing timestamps


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


def looks_like_path(value: str) -> bool:
    """Whether a string names a file rather than being a transcript.

    A string is a path when it ends in a media or text-file suffix (`clip.mp4`, `my notes.txt`), or has no whitespace
    and contains a path separator or a file-like suffix (`clips/a`, `speech.wa`). Sentences (anything with a space
    that does not end in such a suffix, e.g. "yes/no, and/or a transcript") are text; `{"text": ...}` is always text.
    """
    stripped = value.strip()
    if not stripped or "\n" in stripped:
        return False
    if Path(stripped).suffix.lower() in _FILE_SUFFIXES:
        return True
    if any(character.isspace() for character in stripped):
        return False
    return "/" in stripped or os.sep in stripped or _SUFFIX_PATTERN.search(stripped) is not None


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL byte: not a file
        return False


def _is_media_path(value: Any) -> bool:
    """A path object, an existing file or directory, or a string that looks like a path (see `looks_like_path`)."""
    if isinstance(value, os.PathLike):
        return True
    return isinstance(value, str) and (_exists(value) or looks_like_path(value))


def check_seconds(value: Any, name: str) -> float:
    """A window length or stride: finite and at least `MIN_WINDOW_SECONDS` (one model frame)."""
    valid = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not valid or value < MIN_WINDOW_SECONDS:
        raise ValueError(
            f"{name} must be a finite number of seconds >= {MIN_WINDOW_SECONDS} (one model frame), got {value!r}"
        )
    return float(value)


def _array_input(array: np.ndarray, name: str, sampling_rate: int | None) -> EmotionInput:
    """Classify a bare array by its shape: 1-D is a waveform, (T, H, W, C) or grayscale (T, H, W) is video; anything
    else is an error (a 2-D array is not a batch: several inputs go in a list)."""
    if array.ndim == 1:
        return EmotionInput(name=name, audio=array, sampling_rate=sampling_rate)
    if array.ndim in (3, 4):  # (T, H, W, C) frames, or (T, H, W) grayscale; check_video_array says what it takes
        return EmotionInput(name=name, video=array)
    if array.ndim == 2:
        raise ValueError(
            f"{name}: a 2-D array of shape {array.shape} is neither a waveform (samples,) nor video frames "
            "(frames, height, width, 3); mix channels to mono (e.g. x.mean(axis=0)), and pass several waveforms as "
            "a list"
        )
    raise ValueError(
        f"{name}: expected a 1-D waveform or (frames, height, width, 3) frames, got an array of shape {array.shape}"
    )


def normalize_input(inputs: Any, index: int = 0, sampling_rate: int | None = None) -> EmotionInput:
    """Turn any accepted input form into an `EmotionInput`.

    Accepted: a media path (a video gives its frames and its sound track), a transcript string (a string that does
    not look like a path, see `looks_like_path`), a 1-D waveform (with `sampling_rate`), (T, H, W, 3) uint8 frames,
    `{"array", "sampling_rate"}`, or a dict `{"audio", "video", "text", "segments", "sampling_rate", "fps"}` with
    any subset (other keys such as `label` or `id` of a dataset row are ignored). Errors are `ValueError`s naming
    the file or `input #index`.
    """
    name = f"input #{index}"
    if sampling_rate is not None:
        sampling_rate = check_sampling_rate(sampling_rate, name)
    if isinstance(inputs, (str, os.PathLike)):
        if not _is_media_path(inputs):
            return EmotionInput(name=name, text=str(inputs))
        path = os.fspath(inputs)
        if Path(path).is_dir():
            raise ValueError(f"{path!r}: is a directory, expected a media file")
        if not Path(path).is_file():
            hint = "" if Path(path).suffix.lower() in MEDIA_SUFFIXES else "; pass a transcript as {'text': ...}"
            raise ValueError(f"{path!r}: no such file{hint}")
        has_audio, has_video = media_streams(path)
        return EmotionInput(name=path, audio=path if has_audio else None, video=path if has_video else None)
    if isinstance(inputs, np.ndarray) or torch.is_tensor(inputs):
        return _array_input(inputs.detach().cpu().numpy() if torch.is_tensor(inputs) else inputs, name, sampling_rate)
    if isinstance(inputs, dict) or hasattr(inputs, "keys"):
        if "array" in inputs and not ({"audio", "video", "text"} & set(inputs.keys())):
            array, rate = _audio_dict(inputs, name, sampling_rate)
            return EmotionInput(name=name, audio=array, sampling_rate=rate)
        return _normalize_dict(inputs, index, sampling_rate)
    raise ValueError(
        f"{name}: expected a media path, a transcript, a waveform array, video frames or a dict with "
        f"'audio', 'video' and/or 'text', got {type(inputs).__name__}"
    )


def _audio_dict(audio: Any, name: str, sampling_rate: int | None) -> tuple[np.ndarray, int]:
    """`{"array", "sampling_rate"}` (or a `datasets` audio decoder); the call's `sampling_rate` fills a missing one."""
    rate = audio["sampling_rate"] if "sampling_rate" in audio else sampling_rate
    if rate is None:
        raise ValueError(f"{name}: the {{'array': ...}} audio dict needs a 'sampling_rate' (or pass sampling_rate=)")
    array = audio["array"]
    return np.asarray(array.detach().cpu() if torch.is_tensor(array) else array), check_sampling_rate(rate, name)


def _normalize_dict(inputs: Any, index: int, sampling_rate: int | None) -> EmotionInput:
    item = EmotionInput(name=f"input #{index}", sampling_rate=sampling_rate)
    if inputs.get("sampling_rate") is not None:
        item.sampling_rate = check_sampling_rate(inputs["sampling_rate"], item.name)
    if inputs.get("fps") is not None:
        item.fps = check_fps(inputs["fps"], item.name)
    audio, video, text = inputs.get("audio"), inputs.get("video"), inputs.get("text")
    if audio is not None:
        if isinstance(audio, (str, os.PathLike)):
            item.audio, item.name = os.fspath(audio), os.fspath(audio)
        elif hasattr(audio, "keys") or hasattr(audio, "__getitem__") and not isinstance(audio, (list, np.ndarray)):
            # {"array", "sampling_rate"} or a datasets audio decoder
            item.audio, item.sampling_rate = _audio_dict(audio, item.name, item.sampling_rate)
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
    for name in FEATURE_FIELDS.values():
        value = inputs.get(name)
        if value is not None:
            value = np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=np.float32)
            if value.ndim not in (2, 3) or not np.isfinite(value).all():  # the model's spec fixes which (later)
                raise ValueError(
                    f"{item.name}: {name!r} must be a finite (frames, dim) array (or (layers, frames, dim) for a "
                    f"model that takes every hidden state), got shape {value.shape}"
                )
            setattr(item, name, value)
    item.segments = dict(inputs.get("segments") or {})
    unknown = set(item.segments) - set(SEGMENT_GRANULARITIES)
    if unknown:
        raise ValueError(
            f"{item.name}: unknown segment granularities {sorted(unknown)}; expected {SEGMENT_GRANULARITIES}"
        )
    if any(item.segments.values()) and item.audio is None and item.video is None and item.audio_features is None:
        # the same error whether the item is alone or batched with items that have audio
        raise ValueError(f"{item.name}: 'segments' are times in the audio, but the input has no audio")
    if item.audio is None and item.video is None and item.text is None and not item.has_features:
        raise ValueError(f"{item.name}: the dict holds none of 'audio', 'video' or 'text'")
    return item


class _AudioTrack:
    """A stream of sample blocks read on demand, holding only the samples later windows still need."""

    def __init__(self, blocks: Iterator[np.ndarray], rate: int):
        self._blocks, self.rate = iter(blocks), rate
        self._buffer, self._offset, self.done = np.zeros(0, dtype=np.float32), 0, False

    @property
    def end(self) -> float:
        """Seconds read so far (the duration once `done`)."""
        return (self._offset + len(self._buffer)) / self.rate

    def read_to(self, seconds: float) -> None:
        target = int(round(seconds * self.rate))
        while not self.done and self._offset + len(self._buffer) < target:
            block = next(self._blocks, None)
            if block is None:
                self.done = True
            else:
                self._buffer = np.concatenate([self._buffer, np.asarray(block, dtype=np.float32)])

    def take(self, start: float, end: float) -> np.ndarray:
        begin = int(round(start * self.rate))
        stop = begin + int(round((end - start) * self.rate))
        return self._buffer[max(begin - self._offset, 0) : max(stop - self._offset, 0)]

    def drop_before(self, seconds: float) -> None:
        cut = int(round(seconds * self.rate)) - self._offset
        if cut > 0:
            self._buffer, self._offset = self._buffer[cut:], self._offset + cut


class _VideoTrack:
    """Timed frames `(seconds, frame)` read on demand, holding only the frames later windows still need.

    Frames are placed by their presentation time, so gaps (variable frame rate, dropped frames) stay gaps. The stream
    ends one frame duration after its last frame (`frame_duration`, else the shortest interval seen)."""

    def __init__(self, frames: Iterator[tuple[float, np.ndarray]], frame_duration: float | None = None):
        self._frames, self._held = iter(frames), []
        self._last: float | None = None
        self._step, self.done = frame_duration, False

    @property
    def end(self) -> float:
        if self._last is None:
            return 0.0
        return self._last + (self._step or 0.0) if self.done else self._last

    def read_to(self, seconds: float) -> None:
        while not self.done and (self._last is None or self._last < seconds - _EPS):
            item = next(self._frames, None)
            if item is None:
                self.done = True
                break
            time, frame = float(item[0]), item[1]
            if self._last is not None and time - self._last > _EPS:
                self._step = min(self._step or math.inf, time - self._last)
            self._last = time if self._last is None else max(self._last, time)
            self._held.append((time, frame))

    def take(self, start: float, end: float) -> list[np.ndarray]:
        return [frame for time, frame in self._held if start - _EPS <= time < end - _EPS]

    def drop_before(self, seconds: float) -> None:
        self._held = [(time, frame) for time, frame in self._held if time >= seconds - _EPS]


def time_windows(
    audio: _AudioTrack | None, video: _VideoTrack | None, window_seconds: float, stride_seconds: float
) -> Iterator[tuple[float, float, np.ndarray | None, list[np.ndarray] | None]]:
    """Cut audio and video into the same windows, by time: `[k * stride, k * stride + window)` while the longer
    stream covers them, then one last window aligned to the end of the longer stream if its tail is uncovered.

    Yields `(start, end, samples, frames)`; `samples` / `frames` hold what that stream has in the window (possibly
    nothing: a gap in the video, or a stream shorter than the other). Memory stays bounded by one window per
    stream, whatever the input's length."""
    tracks = [track for track in (audio, video) if track is not None]
    if not tracks:
        return

    def take(start: float, end: float):
        return (
            audio.take(start, end) if audio is not None else None,
            video.take(start, end) if video is not None else None,
        )

    k, covered = 0, None
    while True:
        start = k * stride_seconds
        end = start + window_seconds
        for track in tracks:
            track.read_to(end)
        if all(track.done for track in tracks) and end > max(track.end for track in tracks) + _EPS:
            break
        yield (start, end, *take(start, end))
        covered, k = end, k + 1
        for track in tracks:  # keep what the next window, or a tail window at the end of this stream, needs
            track.drop_before(min(k * stride_seconds, track.end - window_seconds))
    duration = max(track.end for track in tracks)
    if covered is None or duration > covered + _EPS:
        start = max(0.0, duration - window_seconds)
        yield (start, duration, *take(start, duration + window_seconds))  # everything from `start` on


def audio_windows(
    blocks: Iterator[np.ndarray], rate: int, window_seconds: float, stride_seconds: float
) -> Iterator[tuple[float, float, np.ndarray]]:
    """Cut a stream of sample blocks into windows `[k * stride, k * stride + window)`; an uncovered tail gets one
    last window aligned to the end of the stream. Only about one window of samples is held."""
    for start, end, samples, _ in time_windows(_AudioTrack(blocks, rate), None, window_seconds, stride_seconds):
        yield start, end, samples


def video_windows(
    frames: Iterator[tuple[float, np.ndarray]], window_seconds: float, stride_seconds: float
) -> Iterator[tuple[float, float, np.ndarray]]:
    """Group timed frames into the same windows as `audio_windows` (by timestamp; windows without frames are left
    out); holds about one window of frames."""
    for start, end, _, chunk in time_windows(None, _VideoTrack(frames), window_seconds, stride_seconds):
        if chunk:
            yield start, end, np.stack(chunk)


def _stream_start(path: str, kind: str) -> float:
    """Seconds at which the first `kind` ("audio" or "video") stream of a media file starts (0 when unknown)."""
    try:
        with av.open(path) as container:
            streams = getattr(container.streams, kind)
            if streams and streams[0].start_time is not None:
                return float(streams[0].start_time * streams[0].time_base)
    except (av.error.FFmpegError, OSError):  # unreadable: the decoders report it, naming the file
        pass
    return 0.0


def _note(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)


class _SpanNotes:
    """Notes about time spans, consecutive spans merged: "1.00-2.00, 5.00-9.00 s: no video frames; ..."."""

    def __init__(self, limit: int = 5):
        self._spans: dict[str, list[list[float]]] = {}
        self._limit = limit

    def add(self, what: str, start: float, end: float) -> None:
        spans = self._spans.setdefault(what, [])
        if spans and start <= spans[-1][1] + _EPS:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])

    def render(self) -> list[str]:
        notes = []
        for what, spans in self._spans.items():
            text = ", ".join(f"{start:.2f}-{end:.2f}" for start, end in spans[: self._limit])
            more = f" (and {len(spans) - self._limit} more spans)" if len(spans) > self._limit else ""
            notes.append(f"{text} s{more}: {what}")
        return notes


@dataclass
class _Numbered:
    """An item of a list or generator input with its position, so that errors can name it."""

    index: int
    value: Any


def _input_file(value: Any) -> str | None:
    """The file an input names (for error messages), if any."""
    if isinstance(value, os.PathLike) or isinstance(value, str) and _is_media_path(value):
        return os.fspath(value)
    if isinstance(value, dict):
        for key in ("video", "audio"):
            if isinstance(value.get(key), (str, os.PathLike)):
                return os.fspath(value[key])
    return None


def _describe_input(item: Any) -> str:
    """How errors of a worker name an input: `input #k` and its file, if any."""
    index, value = (item.index, item.value) if isinstance(item, _Numbered) else (0, item)
    file = _input_file(value)
    return f"input #{index}" + (f" ({file!r})" if file is not None else "")


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
    def model_spec(self) -> dict[str, Any]:
        """The model's `input_spec()` (read once)."""
        if "_model_spec" not in self.__dict__:
            self._model_spec = model_input_spec(self.model)
        return self._model_spec

    @property
    def model_modalities(self) -> tuple[str, ...]:
        """The modalities the model takes, in its order."""
        return tuple(self.model_spec["modalities"])

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
            default = self.model_spec.get("window_seconds") or DEFAULT_WINDOW_SECONDS
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
        if not num_workers or single:
            # the parent's DataLoader in the calling process (transformers would start one worker for num_workers=1)
            return super().get_iterator(inputs, 0, batch_size, preprocess_params, forward_params, postprocess_params)
        workers = min(int(num_workers), len(inputs)) if isinstance(inputs, list) else int(num_workers)
        pool = PreprocessPool(
            functools.partial(self.preprocess, **preprocess_params),
            inputs,
            workers,
            describe=_describe_input,
            windows_ahead=PreprocessPool.windows_ahead_for(batch_size, workers),
        )
        # the same batching, forward and regrouping as transformers' ChunkPipeline.get_iterator
        feature_extractor = self.feature_extractor if self.feature_extractor is not None else self.image_processor
        collate_fn = no_collate_fn if batch_size == 1 else pad_collate_fn(self.tokenizer, feature_extractor)
        loader = DataLoader(_Windows(pool), num_workers=0, batch_size=batch_size, collate_fn=collate_fn)
        model_iterator = PipelinePackIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return _closing(PipelineIterator(model_iterator, self.postprocess, postprocess_params), pool)

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
            # an unusable input becomes an error item: reported (or skipped) in its turn by `postprocess`, so that
            # the inputs before it, batched with it or not, keep their results
            yield self._error_item(value, index, error)

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

    def _error_item(self, value: Any, index: int | None, error: Exception) -> dict[str, Any]:
        """An item carrying the error message (naming the position and the file) instead of media; its model inputs
        are empty placeholders with the usual keys, so that it can be batched, and `_forward` leaves it out."""
        message, file = str(error) or type(error).__name__, _input_file(value)
        where = []
        if index is not None and not re.search(rf"\binput #{index}\b", message):
            where.append(f"input #{index}")
        if file is not None and file not in message:
            where.append(f"({file!r})" if where else repr(file))
        if where:
            message = f"{' '.join(where)}: {message}"
        name = file if file is not None else f"input #{index or 0}"
        encoded = self._model_inputs(EmotionInput(name=name), None, None)
        return {**encoded, "is_last": True, "meta": {"error": message, "name": name}}

    def _features_item(self, item: EmotionInput) -> dict[str, Any]:
        """Pre-extracted features go to the model as they are, in one window: every modality whose `input_spec` entry
        has `"features"` takes them (absent: one zero frame, masked), except a transcript given as text, which keeps
        its token inputs; modalities without a `"features"` entry get their usual (possibly empty) inputs."""
        if item.audio is not None or item.video is not None:
            raise ValueError(f"{item.name}: give either media or pre-extracted features, not both")
        modalities = self.model_spec["modalities"]
        for modality, field_name in FEATURE_FIELDS.items():
            if getattr(item, field_name) is not None and "features" not in modalities.get(modality, {}):
                raise ValueError(
                    f"{item.name}: this model does not take pre-extracted {modality} features ({field_name!r}); it "
                    f"takes {' and '.join(self.model_modalities)} as media"
                )
        encoded, used = self._model_inputs(item, None, None), []
        for modality, spec in modalities.items():
            field_name = FEATURE_FIELDS.get(modality)  # text: tokens of a transcript (or its empty placeholder)
            if field_name is not None and "features" in spec:
                self._drop_inputs(encoded, spec)
                value = getattr(item, field_name)
                encoded.update(self._feature_inputs(item.name, spec, value))
                used += [modality] if value is not None else []
            elif modality == "text" and item.text is not None:
                used.append(modality)
        frames = item.audio_features if item.audio_features is not None else item.visual_features
        rate = 50.0 if item.audio_features is not None else (item.fps or 30.0)
        end = frames.shape[-2] / rate
        meta = {"start": 0.0, "end": end, "modalities": used, "notes": [], "name": item.name}
        return {**encoded, "is_last": True, "meta": meta}

    @staticmethod
    def _drop_inputs(encoded: dict[str, Any], spec: dict[str, Any]) -> None:
        """Remove a modality's raw inputs (replaced by its features)."""
        for name in (*spec["inputs"], *spec.get("extra_inputs", ())):
            encoded.pop(name, None)

    @staticmethod
    def _feature_inputs(name: str, spec: dict[str, Any], value: np.ndarray | None) -> dict[str, torch.Tensor]:
        """`{features key: (1, [layers,] frames, dim), mask key: (1, frames)}` (`layers` where the spec declares
        `feature_layers`); an absent value is one zero frame, masked."""
        key, mask_key = spec["features"]
        dim, layers = spec["feature_dim"], spec.get("feature_layers")
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
        """Time-aligned `(start, end, audio samples, video frames)` windows, decoded lazily; a modality that has
        nothing usable in a window is None there (and noted); windows with nothing usable are left out (noted).

        An input with a transcript is one window (the transcript belongs to the whole utterance)."""
        rate = self.processor.feature_extractor.sampling_rate
        if "text" in usable:
            samples = np.concatenate(list(self._audio_blocks(item, rate, alone=False))) if "audio" in usable else None
            if samples is not None and len(samples) < _MIN_AUDIO_SAMPLES:
                _note(notes, f"the audio is shorter than one model frame ({_MIN_AUDIO_SAMPLES} samples); not used")
                samples = None
            yield 0.0, 0.0 if samples is None else len(samples) / rate, samples, None
            return
        audio = (
            _AudioTrack(self._audio_blocks(item, rate, alone=usable == ["audio"]), rate) if "audio" in usable else None
        )
        video = self._video_track(item, audio is not None) if "video" in usable else None
        if isinstance(video, np.ndarray):  # frames of unknown rate and no audio: one window
            yield 0.0, 0.0, None, video
            return
        spans = _SpanNotes()
        for start, end, samples, frames in time_windows(audio, video, window, stride):
            has_audio = samples is not None and len(samples) >= _MIN_AUDIO_SAMPLES
            if not has_audio and not frames:
                missing = []
                if audio is not None:
                    short = samples is not None and len(samples) > 0
                    missing.append(f"audio shorter than one model frame ({_MIN_AUDIO_SAMPLES} samples)" if short
                                   else "no audio")  # fmt: skip
                if video is not None:
                    missing.append("no video frames")
                spans.add(f"{' and '.join(missing)}; window left out", start, end)
                continue
            if audio is not None and not has_audio:
                spans.add("no audio; used video only", start, end)
            if video is not None and not frames:
                spans.add("no video frames; used audio only", start, end)
            yield start, end, samples if has_audio else None, np.stack(frames) if frames else None
        for note in spans.render():
            _note(notes, note)

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
        if len(waveform) < _MIN_AUDIO_SAMPLES and alone:
            raise ValueError(
                f"audio of {item.name}: {len(item.audio)} samples at {source_rate} Hz is shorter than one model frame "
                f"({_MIN_AUDIO_SAMPLES / rate * 1000:.0f} ms)"
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
        for modality, spec in self.model_spec["modalities"].items():
            if modality not in builders:
                raise ValueError(f"{TASK} takes {MODALITIES}; the model's input_spec names {modality!r}")
            values, mask, extra = builders[modality](item, audio, pixels, spec)
            values_key, mask_key = spec["inputs"]
            encoded[values_key], encoded[mask_key] = values, mask
            encoded.update({name: extra[name] for name in spec.get("extra_inputs", ()) if name in extra})
        for granularity, (segments_key, mask_key) in self.model_spec.get("segments", {}).items():
            segments, mask = pad_segments([item.segments.get(granularity)])
            encoded[segments_key], encoded[mask_key] = segments, mask.long()
        return encoded

    def _audio_inputs(self, item: EmotionInput, audio: np.ndarray | None, pixels: Any, spec: dict[str, Any]):
        """`(input_values (1, samples), mask (1, samples), {})`; no audio: one model frame of zeros, masked."""
        if audio is None:
            return torch.zeros(1, _MIN_AUDIO_SAMPLES), torch.zeros(1, _MIN_AUDIO_SAMPLES, dtype=torch.long), {}
        rate = self.processor.feature_extractor.sampling_rate
        features = self.processor(audio=audio, sampling_rate=rate, return_tensors="pt")
        return features["input_values"], features["audio_attention_mask"], {}

    def _video_inputs(self, item: EmotionInput, audio: np.ndarray | None, pixels: Any, spec: dict[str, Any]):
        """`(uint8 face crops (1, frames, 3, H, W), mask (1, frames), {})`; no face crops: one zero frame, masked
        (uint8 too: a batch's items share a dtype)."""
        if pixels is None:
            size = self.processor.image_processor.size
            frames = torch.zeros(1, 1, 3, size["height"], size["width"], dtype=torch.uint8)
            return frames, torch.zeros(1, 1, dtype=torch.long), {}
        return pixels["face_crops"], pixels["visual_features_mask"], {}

    def _text_inputs(self, item: EmotionInput, audio: np.ndarray | None, pixels: Any, spec: dict[str, Any]):
        """`(input_ids (1, tokens), mask (1, tokens), other tokenizer outputs)`, cut to the spec's `max_length`; no
        transcript: the tokens of an empty string, masked."""
        max_length = spec.get("max_length") or 128
        tokens = self.processor(
            text=item.text or "", return_tensors="pt", text_kwargs={"truncation": True, "max_length": max_length}
        )
        return tokens["input_ids"], tokens["attention_mask"] * int(item.text is not None), dict(tokens)

    # -- forward and postprocessing -----------------------------------------------------------------------------------

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        is_last, meta = model_inputs.pop("is_last"), model_inputs.pop("meta")
        metas = meta if isinstance(meta, list) else [meta]
        kept = [row for row, item_meta in enumerate(metas) if "error" not in item_meta]
        if len(kept) == len(metas):
            logits = self._run_model(model_inputs)
        else:  # error items carry no media: the model sees only the other rows
            logits = torch.zeros(len(metas), self.model.config.num_labels)
            if kept:
                rows = torch.tensor(kept)
                kept_logits = self._run_model({name: value[rows] for name, value in model_inputs.items()})
                logits = kept_logits.new_zeros(len(metas), kept_logits.shape[-1])  # on the model's device
                logits[rows.to(logits.device)] = kept_logits
        return {"is_last": is_last, "meta": meta, "logits": logits}

    def _run_model(self, model_inputs: dict[str, Any]) -> torch.Tensor:
        """The model's logits (float32) for a batch: a modality that no row of the batch has is not passed at all,
        segment masks are booleans and other float inputs take the model's dtype."""
        for spec in self.model_spec["modalities"].values():
            groups = [(spec["inputs"], spec.get("extra_inputs", ()))]
            if "features" in spec:
                groups.append((spec["features"], ()))
            for (values, mask), extra in groups:
                if values in model_inputs and mask in model_inputs and not model_inputs[mask].any():
                    for name in (values, mask, *extra):
                        model_inputs.pop(name, None)
        video = self.model_spec["modalities"].get("video")
        crops = model_inputs.get(video["inputs"][0]) if video else None
        if crops is not None and crops.dtype == torch.uint8:  # face crops: normalised on the model's device
            model_inputs[video["inputs"][0]] = self.processor.image_processor.normalize_crops(crops)
        segment_keys = {key for keys in self.model_spec.get("segments", {}).values() for key in keys}
        segment_masks = {mask for _, mask in self.model_spec.get("segments", {}).values()}
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
            if "error" in meta:
                if errors == "skip":
                    return {"error": meta["error"], "input": meta["name"]}
                raise ValueError(meta["error"])
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


def model_input_spec(model: Any) -> dict[str, Any]:
    """The model's `input_spec()` (see the model classes), checked: every modality names its `"inputs"` pair."""
    declare = getattr(model, "input_spec", None)
    if not callable(declare):
        raise ValueError(
            f"{TASK} needs a model that declares its inputs with `input_spec()`, got {type(model).__name__}"
        )
    spec = declare()
    modalities = spec.get("modalities") or {}
    if not modalities or any(len(entry.get("inputs", ())) != 2 for entry in modalities.values()):
        raise ValueError(f"{type(model).__name__}.input_spec(): each modality needs an (inputs, mask) pair")
    return spec


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
