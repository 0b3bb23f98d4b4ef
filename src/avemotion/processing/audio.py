"""Audio feature extractor with VAVL's global waveform normalisation."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import numpy as np
from transformers import BatchFeature, Wav2Vec2FeatureExtractor

from avemotion.models.config_limits import check_fields, choice, flag, number, optional, whole

from .media import (
    MIN_AUDIO_SAMPLES,
    SAMPLING_RATE_RANGE,
    check_sampling_rate,
    check_waveform,
    decode_audio_value,
    describe,
    is_path,
    resample,
)

logger = logging.getLogger(__name__)

AUDIO_NORMALIZATIONS = ("global", "utterance", "none")
MAX_DURATION_SECONDS = 86400.0  # a day: far above any clip, low enough that samples * duration stays an int64 count
MAX_WAVEFORM_VALUE = 1e6  # means and padding values of waveforms in [-1, 1] (or raw int16 counts: 32768)
# The settings a saved feature extractor may hold (a processor directory is data): field -> check.
FEATURE_EXTRACTOR_LIMITS = {
    "feature_size": whole(1, 1),  # one value per sample: mono waveforms
    "sampling_rate": whole(*SAMPLING_RATE_RANGE),
    "padding_value": number(-MAX_WAVEFORM_VALUE, MAX_WAVEFORM_VALUE),
    "normalization": choice(AUDIO_NORMALIZATIONS),
    "global_mean": number(-MAX_WAVEFORM_VALUE, MAX_WAVEFORM_VALUE),
    "global_std": number(0.0, MAX_WAVEFORM_VALUE, low_open=True),
    "max_duration_seconds": optional(number(0.0, MAX_DURATION_SECONDS, low_open=True)),
    "return_attention_mask": flag(),
    "padding_side": choice(("right", "left")),
}
# What reading a crafted settings file may raise besides our own `ValueError`s: bad JSON (nested 100000 levels
# deep: RecursionError), structures of the wrong shape (TypeError, AttributeError, KeyError, IndexError), and the
# bare `Exception` that the `tokenizers` library raises for a file it cannot parse.
_LOAD_ERRORS = (Exception,)
_PASSED_THROUGH = (OSError, ImportError)  # a file that is not there, a missing dependency: transformers' meaning


class AvEmotionFeatureExtractor(Wav2Vec2FeatureExtractor):
    r"""
    A `Wav2Vec2FeatureExtractor` with a choice of waveform normalisation.

    Args:
        normalization (`str`, defaults to `"utterance"`):
            `"global"`: `(x - global_mean) / (global_std + 1e-6)` with training-set statistics, applied before zero
            padding (VAVL's normalisation; converted VAVL checkpoints carry the statistics).
            `"utterance"`: zero mean and unit variance per utterance over its real samples (wav2vec2's usual
            normalisation). `"none"`: raw samples.
        global_mean (`float`, defaults to 0.0), global_std (`float`, defaults to 1.0): the training-set statistics
            used by `"global"`.
        max_duration_seconds (`float`, *optional*): cut longer inputs to this duration (logged as a warning).
        Other arguments as in `Wav2Vec2FeatureExtractor` (16 kHz, mono, `return_attention_mask=True`).

    Inputs may be waveforms at any sampling rate (resampled with soxr), audio files or video files (their sound
    track); see `__call__`. Returns `input_values` (batch, samples) and `attention_mask` (batch, samples).
    """

    model_input_names = ["input_values", "attention_mask"]

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 16000,
        padding_value: float = 0.0,
        normalization: Literal["global", "utterance", "none"] = "utterance",
        global_mean: float = 0.0,
        global_std: float = 1.0,
        max_duration_seconds: float | None = None,
        return_attention_mask: bool = True,
        **kwargs: Any,
    ):
        settings = {"feature_size": feature_size, "sampling_rate": sampling_rate, "padding_value": padding_value}
        settings |= {"normalization": normalization, "global_mean": global_mean, "global_std": global_std}
        settings |= {"max_duration_seconds": max_duration_seconds, "return_attention_mask": return_attention_mask}
        if "padding_side" in kwargs:
            settings["padding_side"] = kwargs["padding_side"]
        check_fields(type(self).__name__, settings, FEATURE_EXTRACTOR_LIMITS)
        kwargs.pop("do_normalize", None)
        super().__init__(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            do_normalize=normalization == "utterance",
            **kwargs,
        )
        self.normalization = normalization
        self.global_mean = float(global_mean)
        self.global_std = float(global_std)
        self.max_duration_seconds = None if max_duration_seconds is None else float(max_duration_seconds)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """`Wav2Vec2FeatureExtractor.from_pretrained`, with any failure to read the directory's settings (bad JSON,
        a structure of the wrong shape, a bad value) a `ValueError` naming the directory."""
        with settings_load_errors(pretrained_model_name_or_path, "preprocessor_config.json"):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def __call__(self, raw_speech: Any, sampling_rate: int | None = None, **kwargs: Any) -> BatchFeature:
        """
        Args:
            raw_speech: one input or a batch (a list of inputs). An input is a mono 1-D float waveform in [-1, 1], a
                path to an audio file (wav, flac, mp3, ...) or to a video file (its sound track is read), or a dict
                `{"array": waveform, "sampling_rate": rate}` (a `datasets` `Audio` value). Files are mixed to mono;
                every input is resampled to `self.sampling_rate` (soxr). A 2-D array is an error, not a batch: it
                may as well be (channels, samples) or (samples, channels) audio; pass a batch as a list of 1-D
                waveforms (`list(array)`) and mix channels to mono first.
            sampling_rate: the rate of the waveform arrays (files and dicts carry their own), a whole number of Hz
                from 1 kHz to 768 kHz. Without it, arrays are taken to be at `self.sampling_rate` and a warning says
                so.
            kwargs: passed to `Wav2Vec2FeatureExtractor.__call__` (`padding` defaults to True).

        Every input must give at least `MIN_AUDIO_SAMPLES` (400) samples at `self.sampling_rate` (25 ms at 16 kHz,
        one wav2vec 2.0 frame). Float samples far outside [-1, 1] (peak above 2) are used as given, with a warning.

        Returns:
            `BatchFeature` with `input_values` (batch, samples) and `attention_mask` (batch, samples).
        """
        if sampling_rate is not None:
            sampling_rate = check_sampling_rate(sampling_rate, "audio")
        shape = getattr(raw_speech, "shape", None)
        if shape is not None and len(shape) >= 2 and not is_path(raw_speech):
            if len(shape) >= 3 and getattr(raw_speech, "dtype", None) == np.uint8:
                check_waveform(raw_speech, "audio #0")  # raises: it looks like video frames
            raise ValueError(
                f"audio #0: got one {len(shape)}-D array of shape {tuple(shape)}; an input is a mono 1-D waveform. Mix "
                "multi-channel audio to mono first (e.g. `waveform.mean(axis=0)` for (channels, samples)), and pass "
                "a batch as a list of 1-D waveforms (e.g. `list(batch)`)"
            )
        batched = isinstance(raw_speech, (list, tuple)) and len(raw_speech) > 0
        batched = batched and (_is_record(raw_speech[0]) or is_path(raw_speech[0]) or not np.isscalar(raw_speech[0]))
        items = list(raw_speech) if batched else [raw_speech]
        if sampling_rate is None and any(not is_path(item) and not _is_record(item) for item in items):
            logger.warning(
                "No sampling_rate given for the audio arrays: assuming %d Hz. Pass `sampling_rate=` to have them "
                "resampled.",
                self.sampling_rate,
            )
        waveforms = [
            self.load(item, sampling_rate, name=describe(item, index, "audio")) for index, item in enumerate(items)
        ]
        if self.max_duration_seconds is not None:
            limit = int(round(self.max_duration_seconds * self.sampling_rate))
            for index, waveform in enumerate(waveforms):
                if len(waveform) > limit:
                    logger.warning(
                        "%s: cut from %.2f s to max_duration_seconds=%.2f s",
                        describe(items[index], index, "audio"),
                        len(waveform) / self.sampling_rate,
                        self.max_duration_seconds,
                    )
            waveforms = [w[:limit] for w in waveforms]
        if self.normalization == "global":
            waveforms = [(w - self.global_mean) / (self.global_std + 1e-6) for w in waveforms]
        kwargs.setdefault("padding", True)
        return super().__call__(waveforms, sampling_rate=self.sampling_rate, **kwargs)

    def load(self, audio: Any, sampling_rate: int | None = None, name: str = "audio") -> np.ndarray:
        """One input (path, waveform or `{"array", "sampling_rate"}` dict) -> checked mono float32 at
        `self.sampling_rate`, not yet normalised or cut; at least `MIN_AUDIO_SAMPLES` long."""
        if is_path(audio) or _is_record(audio):
            if isinstance(audio, Mapping) and not (audio.get("path") or audio.get("bytes")):  # an array dict
                missing = [key for key in ("array", "sampling_rate") if key not in audio]
                if missing:
                    raise ValueError(
                        f"{name}: a dict input needs 'array' and 'sampling_rate' keys, missing {missing[0]!r}"
                    )
            waveform = decode_audio_value(audio, self.sampling_rate, name=name)
        else:
            waveform = check_waveform(audio, name)
            rate = self.sampling_rate if sampling_rate is None else check_sampling_rate(sampling_rate, name)
            waveform = resample(waveform, rate, self.sampling_rate)
        if len(waveform) < MIN_AUDIO_SAMPLES:
            raise ValueError(
                f"{name}: {len(waveform)} sample(s) at {self.sampling_rate} Hz is too short; the model needs at least "
                f"{MIN_AUDIO_SAMPLES} ({MIN_AUDIO_SAMPLES / self.sampling_rate * 1000:g} ms, one wav2vec 2.0 frame)"
            )
        return waveform


@contextlib.contextmanager
def settings_load_errors(path: Any, what: str) -> Iterator[None]:
    """Turn a failure while reading `what` (a file name, or words such as "the tokenizer files") of the directory
    `path` into a `ValueError` naming both: JSON errors (also a file nested too deep: RecursionError), wrong
    structures (TypeError, AttributeError, ...), the `tokenizers` library's bare `Exception`. Our own `ValueError`s
    keep their message (prefixed with the directory where they do not name it); `OSError` (a missing file; except
    transformers' "not a valid JSON file") and `ImportError` pass through."""
    try:
        yield
    except OSError as error:  # transformers' words for a settings file that is not JSON: a bad file, not a missing one
        if "not a valid JSON file" not in str(error):
            raise
        raise ValueError(f"{path}: {what}: not valid JSON ({' '.join(str(error).split())[:300]})") from error
    except _PASSED_THROUGH:
        raise
    except _LOAD_ERRORS as error:
        where, message = str(path), " ".join(str(error).split())[:500]
        if type(error) is ValueError:  # ours (or transformers'): a clear message already
            if where in message:
                raise
            raise ValueError(f"{where}: {message}") from error
        if isinstance(error, RecursionError):  # no chained traceback of a thousand frames
            raise ValueError(f"{where}: {what}: cannot be read (nested too deeply: RecursionError)") from None
        kind = "not valid JSON" if isinstance(error, json.JSONDecodeError) else "cannot be read"
        raise ValueError(f"{where}: {what}: {kind} ({type(error).__name__}: {message or 'no detail'})") from error


def _is_record(value: Any) -> bool:
    """A `datasets` audio value: a `{"array", "sampling_rate"}` or `{"path", "bytes"}` mapping, or an audio decoder."""
    return isinstance(value, Mapping) or type(value).__name__ == "AudioDecoder"


__all__ = ["FEATURE_EXTRACTOR_LIMITS", "AvEmotionFeatureExtractor", "settings_load_errors"]
