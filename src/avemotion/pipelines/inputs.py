"""Input recognition of the `audio-visual-emotion` pipeline: what each accepted input form is (a media path, a
transcript, a waveform, video frames, a dict), normalised to an `EmotionInput`, and `InputError`, the record of an
input that cannot be used, naming its position and file."""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avemotion.pipelines.windows import MIN_WINDOW_SECONDS
from avemotion.processing.media import MEDIA_SUFFIXES, check_fps, check_sampling_rate, media_streams
from avemotion.processing.segments import SEGMENT_GRANULARITIES

# an input-dict key of pre-extracted features ends so (which ones a model takes is its declared `features` keys)
FEATURES_SUFFIX = "_features"
# Strings with one of these suffixes are file names even with spaces in them (a missing one is an error, not text).
_FILE_SUFFIXES = MEDIA_SUFFIXES | {".txt", ".json", ".jsonl", ".csv", ".tsv", ".srt", ".vtt", ".lab", ".npy", ".npz"}
# A file-like suffix: "speech.wa", "notes.txt" (not "e.g." or "3.5").
_SUFFIX_PATTERN = re.compile(r"[^.\s]\.[A-Za-z][A-Za-z0-9]{0,4}$")


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
    # pre-extracted (frames, dim) features by input key (`audio_features`, ...), for models without backbones (e.g.
    # from the feature cache); the model's declaration says which keys it takes
    features: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def has_features(self) -> bool:
        return bool(self.features)


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
    for name in (key for key in inputs if isinstance(key, str) and key.endswith(FEATURES_SUFFIX)):
        value = inputs.get(name)
        if value is not None:
            value = np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=np.float32)
            if value.ndim not in (2, 3) or not np.isfinite(value).all():  # the model's spec fixes which (later)
                raise ValueError(
                    f"{item.name}: {name!r} must be a finite (frames, dim) array (or (layers, frames, dim) for a "
                    f"model that takes every hidden state), got shape {value.shape}"
                )
            item.features[name] = value
    item.segments = dict(inputs.get("segments") or {})
    unknown = set(item.segments) - set(SEGMENT_GRANULARITIES)
    if unknown:
        raise ValueError(
            f"{item.name}: unknown segment granularities {sorted(unknown)}; expected {SEGMENT_GRANULARITIES}"
        )
    if any(item.segments.values()) and item.audio is None and item.video is None and not item.has_features:
        # the same error whether the item is alone or batched with items that have audio
        raise ValueError(f"{item.name}: 'segments' are times in the audio, but the input has no audio")
    if item.audio is None and item.video is None and item.text is None and not item.has_features:
        raise ValueError(f"{item.name}: the dict holds none of 'audio', 'video' or 'text'")
    return item


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


@dataclass(frozen=True)
class InputError:
    """An input that cannot be used: its name (file or `input #k`) and the error message (naming its position and
    file). It travels in place of the input's windows, without model inputs; `postprocess` reports or skips it."""

    name: str
    message: str

    @classmethod
    def from_exception(cls, value: Any, index: int | None, error: Exception) -> InputError:
        """The record of `error`, raised while preprocessing input `value` at position `index` (None: a single input);
        the message gains the position and the file where it does not name them."""
        message, file = str(error) or type(error).__name__, _input_file(value)
        where = []
        if index is not None and not re.search(rf"\binput #{index}\b", message):
            where.append(f"input #{index}")
        if file is not None and file not in message:
            where.append(f"({file!r})" if where else repr(file))
        if where:
            message = f"{' '.join(where)}: {message}"
        return cls(name=file if file is not None else f"input #{index or 0}", message=message)


__all__ = [
    "FEATURES_SUFFIX",
    "EmotionInput",
    "InputError",
    "check_seconds",
    "looks_like_path",
    "normalize_input",
]
