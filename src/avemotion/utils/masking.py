"""Masks and masked reductions over padded `(batch, time, ...)` tensors. Plain torch, no avemotion import (layer 0). The
modeling files keep `# Copied from avemotion.utils.masking.<name>` copies so that their remote code runs without
avemotion; `tests/test_copies.py` keeps the copies equal."""

from __future__ import annotations

from typing import Any

import torch


def masked_mean(hidden_states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over axis 1 of `(B, T, D)` using the `(B, T)` bool mask; rows with no real position give zeros."""
    if mask is None:
        return hidden_states.mean(dim=1)
    weights = mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def feature_frames_mask(audio_config: Any, num_frames: int, attention_mask: torch.Tensor) -> torch.Tensor:
    """`(B, num_frames)` bool: the frames of a wav2vec2-style backbone that cover real samples of the right-padded
    `(B, N)` `attention_mask`.

    The frame count of each row follows from its sample count through the convolutional feature encoder
    (`audio_config.conv_kernel`, `audio_config.conv_stride`) and, when `audio_config.add_adapter`, the adapter's
    strided layers (wav2vec2's own length formula). A row with fewer samples than one frame gets no frame.
    """
    lengths = attention_mask.long().sum(dim=-1)
    for kernel, stride in zip(audio_config.conv_kernel, audio_config.conv_stride):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    if getattr(audio_config, "add_adapter", False):
        for _ in range(audio_config.num_adapter_layers):
            lengths = torch.div(lengths - 1, audio_config.adapter_stride, rounding_mode="floor") + 1
    steps = torch.arange(num_frames, device=attention_mask.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(-1)


__all__ = ["feature_frames_mask", "masked_mean"]
