"""Audio feature extractor with VAVL's global waveform normalisation."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from transformers import BatchFeature, Wav2Vec2FeatureExtractor

AUDIO_NORMALIZATIONS = ("global", "utterance", "none")


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
        max_duration_seconds (`float`, *optional*): cut longer inputs to this duration.
        Other arguments as in `Wav2Vec2FeatureExtractor` (16 kHz, mono, `return_attention_mask=True`).

    Returns `input_values` (batch, samples) and `attention_mask` (batch, samples).
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
        if normalization not in AUDIO_NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {AUDIO_NORMALIZATIONS}, got {normalization!r}")
        if not np.isfinite(global_mean) or not np.isfinite(global_std) or global_std < 0:
            raise ValueError(f"global_mean/global_std must be finite with std >= 0, got {global_mean}, {global_std}")
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
        self.max_duration_seconds = max_duration_seconds

    def __call__(self, raw_speech: np.ndarray | list, **kwargs: Any) -> BatchFeature:
        """raw_speech: one waveform (1-D array or list of floats) or a batch (list of 1-D arrays, or a 2-D array)."""
        batched = isinstance(raw_speech, (list, tuple)) and len(raw_speech) > 0 and not np.isscalar(raw_speech[0])
        batched = batched or (isinstance(raw_speech, np.ndarray) and raw_speech.ndim == 2)
        waveforms = [np.asarray(w, dtype=np.float32) for w in (raw_speech if batched else [raw_speech])]
        for index, waveform in enumerate(waveforms):
            if waveform.ndim != 1:
                raise ValueError(f"audio #{index}: expected a mono 1-D waveform, got shape {waveform.shape}")
            if waveform.size == 0:
                raise ValueError(f"audio #{index}: the waveform is empty")
            if not np.isfinite(waveform).all():
                raise ValueError(f"audio #{index}: the waveform contains NaN or infinite samples")
        if self.max_duration_seconds is not None:
            limit = int(round(self.max_duration_seconds * self.sampling_rate))
            waveforms = [w[:limit] for w in waveforms]
        if self.normalization == "global":
            waveforms = [(w - self.global_mean) / (self.global_std + 1e-6) for w in waveforms]
        kwargs.setdefault("padding", True)
        return super().__call__(waveforms, **kwargs)


__all__ = ["AvEmotionFeatureExtractor"]
