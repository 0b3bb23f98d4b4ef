"""Segment pooling of the multi-level fusion model: wav2vec 2.0 frame geometry, segment checks and pooling.

A segment is `(start_seconds, end_seconds)`. The model pools wav2vec 2.0 frames inside each segment:

1. take the frames whose centre time lies in `[start, end)`;
2. if none does (segments shorter than one frame step), take the real frame nearest to the segment midpoint;
3. only real (unpadded) frames are ever used;
4. the segment embedding is the mean of those frames.

Two implementations of this rule are provided: a pooling matrix `P` of shape `(batch, segments, frames)` (one batched
matmul) and integer frame bounds with a cumulative sum (memory-light). They give the same result.

Reading alignments and padding segment lists into inputs is data preparation: `avemotion.processing.segments`. This
file is part of the model's remote code, so it imports torch only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# Copied from avemotion.processing.segments.GRANULARITIES
GRANULARITIES = ("frame", "phone", "syllable", "word")
SEGMENT_GRANULARITIES = GRANULARITIES[1:]


def frame_geometry(conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> tuple[int, int]:
    """`(stride, receptive_field)` in samples of a wav2vec2-style CNN feature encoder.

    Frame `i` covers samples `[stride * i, stride * i + receptive_field)`; for wav2vec2-base this is (320, 400).
    """
    if len(conv_kernel) != len(conv_stride):
        raise ValueError(f"conv_kernel and conv_stride differ in length: {len(conv_kernel)} vs {len(conv_stride)}")
    receptive_field, jump = 1, 1
    for kernel, stride in zip(conv_kernel, conv_stride):
        receptive_field += (kernel - 1) * jump
        jump *= stride
    return jump, receptive_field


def frame_centers(
    num_frames: int, stride: int, receptive_field: int, sampling_rate: int, device: torch.device | None = None
) -> torch.Tensor:
    """`(num_frames,)` float64 centre times in seconds: `(stride * i + receptive_field / 2) / sampling_rate`
    (0.02 i + 0.0125 for wav2vec2-base at 16 kHz)."""
    index = torch.arange(num_frames, dtype=torch.float64, device=device)
    return (index * stride + receptive_field / 2) / sampling_rate


def check_segments(
    segments: torch.Tensor,
    segments_mask: torch.Tensor,
    durations: torch.Tensor,
    name: str = "segments",
    max_overrun: float = 0.0,
) -> None:
    """Raise a `ValueError` naming the first bad real segment.

    Args:
        segments: `(batch, num_segments, 2)` start/end seconds.
        segments_mask: `(batch, num_segments)` bool, True on real segments.
        durations: `(batch,)` seconds of real audio per row.
        name: input name for the message.
        max_overrun: seconds an end may lie beyond the audio (aligners often end a little late); such ends are
            clipped by the pooling.
    """
    if segments.dim() != 3 or segments.shape[-1] != 2:
        raise ValueError(f"`{name}` must be (batch, num_segments, 2) start/end seconds, got {tuple(segments.shape)}")
    if tuple(segments_mask.shape) != tuple(segments.shape[:2]):
        raise ValueError(
            f"`{name}_mask` must be (batch, num_segments) = {tuple(segments.shape[:2])}, got {tuple(segments_mask.shape)}"
        )
    start, end = segments[..., 0].double(), segments[..., 1].double()
    limit = durations.double().unsqueeze(-1)
    problems = [
        (~torch.isfinite(start) | ~torch.isfinite(end), "is not finite"),
        (start < 0, "starts before 0 s"),
        (end <= start, "does not end after it starts"),
        (start >= limit, "starts at or after the end of the audio"),
        (end > limit + max_overrun + 1e-9, f"ends more than {max_overrun} s after the end of the audio"),
    ]
    mask = segments_mask.bool()
    for bad, reason in problems:
        bad = bad & mask
        if bad.any():
            row, index = (int(v) for v in bad.nonzero()[0])
            raise ValueError(
                f"`{name}`: segment {index} of row {row}, [{float(start[row, index]):.4f}, "
                f"{float(end[row, index]):.4f}) s, {reason} (audio length {float(durations[row]):.4f} s)"
            )


def _nearest_real_frame(midpoints: torch.Tensor, centers: torch.Tensor, frames_mask: torch.Tensor) -> torch.Tensor:
    """`(batch, num_segments)` index of the real frame whose centre is nearest to each midpoint (lower on ties)."""
    distance = (centers.view(1, 1, -1) - midpoints.unsqueeze(-1)).abs()
    distance = distance.masked_fill(~frames_mask.bool().unsqueeze(1), math.inf)
    return distance.argmin(dim=-1)


def segment_pooling_matrix(
    segments: torch.Tensor, segments_mask: torch.Tensor, frames_mask: torch.Tensor, centers: torch.Tensor
) -> torch.Tensor:
    """The pooling matrix of the segment rule (module docstring).

    Args:
        segments: `(batch, num_segments, 2)` start/end seconds.
        segments_mask: `(batch, num_segments)` bool.
        frames_mask: `(batch, num_frames)` bool, True on real frames.
        centers: `(num_frames,)` frame centre times in seconds ([`frame_centers`]).

    Returns:
        `(batch, num_segments, num_frames)` float64: row n holds `1 / |frames(n)|` on its frames; rows of masked
        segments are zero.
    """
    start, end = segments[..., 0].double().unsqueeze(-1), segments[..., 1].double().unsqueeze(-1)
    real = frames_mask.bool().unsqueeze(1) & segments_mask.bool().unsqueeze(-1)
    selected = (centers >= start) & (centers < end) & real
    empty = segments_mask.bool() & ~selected.any(dim=-1)
    if empty.any():
        nearest = _nearest_real_frame((start + end).squeeze(-1) / 2, centers, frames_mask)
        one_hot = torch.nn.functional.one_hot(nearest, centers.shape[0]).bool()
        selected = selected | (one_hot & empty.unsqueeze(-1))
    selected = selected.double()
    return selected / selected.sum(dim=-1, keepdim=True).clamp(min=1.0)


def segment_frame_bounds(
    segments: torch.Tensor, segments_mask: torch.Tensor, frames_mask: torch.Tensor, centers: torch.Tensor
) -> torch.Tensor:
    """Integer `[first, last + 1)` frame bounds of each segment under the same rule, for [`pool_segments_cumsum`].

    Arguments as in [`segment_pooling_matrix`]; real frames must be a prefix of each row (right padding).

    Returns:
        `(batch, num_segments, 2)` long; masked segments get `(0, 0)`.
    """
    lengths = frames_mask.long().sum(dim=-1, keepdim=True)
    start = segments[..., 0].double().contiguous()
    end = segments[..., 1].double().contiguous()
    first = torch.searchsorted(centers, start, side="left")
    stop = torch.searchsorted(centers, end, side="left")
    first, stop = torch.minimum(first, lengths), torch.minimum(stop, lengths)
    empty = stop <= first
    if empty.any():
        nearest = _nearest_real_frame((start + end) / 2, centers, frames_mask)
        first = torch.where(empty, nearest, first)
        stop = torch.where(empty, nearest + 1, stop)
    bounds = torch.stack([first, stop], dim=-1)
    return bounds.masked_fill(~segments_mask.bool().unsqueeze(-1), 0)


def pool_segments_matrix(hidden_states: torch.Tensor, pooling_matrix: torch.Tensor) -> torch.Tensor:
    """`(batch, num_segments, dim)` segment means: `pooling_matrix (B, N, T) @ hidden_states (B, T, D)`, in float32
    at least (bfloat16 would round the weights `1 / frames`), returned in the dtype of `hidden_states`."""
    dtype = torch.promote_types(hidden_states.dtype, torch.float32)
    return torch.bmm(pooling_matrix.to(dtype), hidden_states.to(dtype)).to(hidden_states.dtype)


def pool_segments_cumsum(hidden_states: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """`(batch, num_segments, dim)` segment means from `(batch, num_segments, 2)` frame bounds, by differences of a
    cumulative sum over time (accumulated in float64 so long utterances lose no precision)."""
    batch, _, dim = hidden_states.shape
    cumulative = torch.cumsum(hidden_states.double(), dim=1)
    cumulative = torch.cat([cumulative.new_zeros(batch, 1, dim), cumulative], dim=1)
    first = bounds[..., 0].unsqueeze(-1).expand(-1, -1, dim)
    stop = bounds[..., 1].unsqueeze(-1).expand(-1, -1, dim)
    total = cumulative.gather(1, stop) - cumulative.gather(1, first)
    count = (bounds[..., 1] - bounds[..., 0]).clamp(min=1).unsqueeze(-1)
    return (total / count).to(hidden_states.dtype)


def pool_segments(
    hidden_states: torch.Tensor,
    segments: torch.Tensor,
    segments_mask: torch.Tensor,
    frames_mask: torch.Tensor,
    centers: torch.Tensor,
    method: str = "matrix",
) -> torch.Tensor:
    """Segment embeddings `(batch, num_segments, dim)` of frame features `(batch, num_frames, dim)`.

    `method` is `"matrix"` ([`segment_pooling_matrix`]) or `"cumsum"` ([`segment_frame_bounds`]); masked segments
    give zero vectors.
    """
    if method == "matrix":
        return pool_segments_matrix(
            hidden_states, segment_pooling_matrix(segments, segments_mask, frames_mask, centers)
        )
    if method == "cumsum":
        return pool_segments_cumsum(hidden_states, segment_frame_bounds(segments, segments_mask, frames_mask, centers))
    raise ValueError(f"segment pooling method must be 'matrix' or 'cumsum', got {method!r}")


__all__ = [
    "GRANULARITIES",
    "SEGMENT_GRANULARITIES",
    "check_segments",
    "frame_centers",
    "frame_geometry",
    "pool_segments",
    "pool_segments_cumsum",
    "pool_segments_matrix",
    "segment_frame_bounds",
    "segment_pooling_matrix",
]
