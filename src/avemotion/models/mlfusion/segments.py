"""Speech segments for the multi-level fusion model: IEMOCAP forced-alignment files and segment pooling.

A segment is `(start_seconds, end_seconds, label)`. The model pools wav2vec 2.0 frames inside each segment:

1. take the frames whose centre time lies in `[start, end)`;
2. if none does (segments shorter than one frame step), take the real frame nearest to the segment midpoint;
3. only real (unpadded) frames are ever used;
4. the segment embedding is the mean of those frames.

Two implementations of this rule are provided: a pooling matrix `P` of shape `(batch, segments, frames)` (one batched
matmul) and integer frame bounds with a cumulative sum (memory-light). They give the same result.

An utterance without an alignment file has no segments at that granularity: its segment mask row is all False and
the model leaves the heads of that granularity out for that utterance. Nothing is invented.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Sequence

import torch

logger = logging.getLogger(__name__)

GRANULARITIES = ("frame", "phone", "syllable", "word")
SEGMENT_GRANULARITIES = ("phone", "syllable", "word")
# IEMOCAP ships `<utterance>.phseg`, `.syseg` and `.wdseg` under sentences/ForcedAlignment/<dialog>/.
IEMOCAP_ALIGNMENT_EXTENSIONS = {"phone": ".phseg", "syllable": ".syseg", "word": ".wdseg"}
# Sentence markers and silences of the aligner's output (compared case-insensitively).
SILENCE_LABELS = frozenset({"<s>", "</s>", "<sil>", "sil"})
_VARIANT_SUFFIX = re.compile(r"\(\d+\)$")
_INTEGER = re.compile(r"^[+-]?\d+$")

Segment = tuple[float, float, str]


# ---------------------------------------------------------------------------------------------------------------------
# IEMOCAP forced-alignment files
# ---------------------------------------------------------------------------------------------------------------------


def parse_iemocap_alignment(
    text: str,
    keep_silence: bool = False,
    end_inclusive: bool = True,
    frame_offset: int = 0,
    frames_per_second: float = 100.0,
    source: str = "<string>",
) -> list[Segment]:
    """Parse the text of an IEMOCAP `.wdseg`, `.syseg` or `.phseg` file.

    Each data line holds the start frame, end frame, an integer acoustic score and the label (the rest of the line;
    syllables and phones may have several tokens). Frames are 10 ms. Lines whose first two fields are not integers
    (the column header, the closing `Total score` line, blank lines) are skipped.

    Args:
        text: the file content.
        keep_silence: keep `<s>`, `</s>`, `<sil>` and `SIL` segments (dropped by default).
        end_inclusive: the end frame is the last frame of the segment (the aligner's convention: the next segment
            starts at `end + 1`), so the segment ends at `(end + 1) / 100` s and consecutive segments touch. With
            `False` the end is `end / 100` s, as some public readers compute it.
        frame_offset: frames added to both times (one public reader adds 2; the default adds none).
        frames_per_second: the file's frame rate (100 for IEMOCAP).
        source: a name for error messages.

    Returns:
        `[(start_seconds, end_seconds, label), ...]` in file order, with pronunciation-variant suffixes such as
        `WORD(2)` stripped from the labels.
    """
    segments: list[Segment] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if len(fields) < 2 or not (_INTEGER.match(fields[0]) and _INTEGER.match(fields[1])):
            continue
        if len(fields) < 4 or not _INTEGER.match(fields[2]):
            raise ValueError(
                f"{source}, line {line_number}: expected 'start_frame end_frame score label', got {line.strip()!r}"
            )
        start, end = int(fields[0]), int(fields[1])
        if end < start:
            raise ValueError(f"{source}, line {line_number}: end frame {end} is before start frame {start}")
        label = " ".join(_VARIANT_SUFFIX.sub("", token) for token in fields[3:])
        if not keep_silence and label.lower() in SILENCE_LABELS:
            continue
        end_frame = end + 1 if end_inclusive else end
        segments.append(
            ((start + frame_offset) / frames_per_second, (end_frame + frame_offset) / frames_per_second, label)
        )
    return segments


def read_iemocap_alignment(path: str | os.PathLike, **kwargs) -> list[Segment]:
    """Read one IEMOCAP alignment file; keyword arguments as in [`parse_iemocap_alignment`]."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        return parse_iemocap_alignment(handle.read(), source=os.fspath(path), **kwargs)


def load_iemocap_segments(
    alignment_dir: str | os.PathLike,
    utterance_id: str,
    granularities: Iterable[str] = SEGMENT_GRANULARITIES,
    **kwargs,
) -> dict[str, list[Segment] | None]:
    """Segments of one IEMOCAP utterance at each granularity.

    Args:
        alignment_dir: the utterance's dialog folder, `<Session>/sentences/ForcedAlignment/<dialog>`.
        utterance_id: e.g. `"Ses01F_impro01_F000"`.
        granularities: any of `"phone"`, `"syllable"`, `"word"`.
        kwargs: passed to [`parse_iemocap_alignment`].

    Returns:
        granularity -> segments, or `None` when the file is missing or holds no speech segment. `None` is the
        documented fall-back: the utterance is then used at the frame level only and its segment mask at that
        granularity is all False (see [`pad_segments`]). Each fall-back is logged as a warning.
    """
    result: dict[str, list[Segment] | None] = {}
    for granularity in granularities:
        if granularity not in IEMOCAP_ALIGNMENT_EXTENSIONS:
            raise ValueError(f"granularity must be one of {SEGMENT_GRANULARITIES}, got {granularity!r}")
        path = os.path.join(alignment_dir, utterance_id + IEMOCAP_ALIGNMENT_EXTENSIONS[granularity])
        if not os.path.isfile(path):
            logger.warning(
                "%s: no %s alignment (%s missing); %s level masked", utterance_id, granularity, path, granularity
            )
            result[granularity] = None
            continue
        segments = read_iemocap_alignment(path, **kwargs)
        if not segments:
            logger.warning("%s: %s holds no speech segment; %s level masked", utterance_id, path, granularity)
        result[granularity] = segments or None
    return result


def pad_segments(
    batch: Sequence[Sequence[Sequence] | None], dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad per-utterance segment lists into model inputs.

    Args:
        batch: one entry per utterance: a list of `(start_seconds, end_seconds[, label])`, or `None`/empty when the
            utterance has no alignment at this granularity.

    Returns:
        `(segments, mask)`: `(batch, max_segments, 2)` start/end seconds and a `(batch, max_segments)` bool mask
        (True on real segments). `max_segments` is at least 1 so that shapes stay valid when no row has segments.
    """
    lengths = [len(rows) if rows else 0 for rows in batch]
    segments = torch.zeros(len(batch), max([1, *lengths]), 2, dtype=dtype)
    mask = torch.zeros(len(batch), segments.shape[1], dtype=torch.bool)
    for row, rows in enumerate(batch):
        for index, segment in enumerate(rows or ()):
            if len(segment) < 2:
                raise ValueError(f"segments[{row}][{index}] must be (start, end[, label]), got {segment!r}")
            segments[row, index, 0], segments[row, index, 1] = float(segment[0]), float(segment[1])
        mask[row, : lengths[row]] = True
    return segments, mask


# ---------------------------------------------------------------------------------------------------------------------
# Frame geometry and pooling
# ---------------------------------------------------------------------------------------------------------------------


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
    """`(batch, num_segments, dim)` segment means: `pooling_matrix (B, N, T) @ hidden_states (B, T, D)`."""
    return torch.bmm(pooling_matrix.to(hidden_states.dtype), hidden_states)


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
    "IEMOCAP_ALIGNMENT_EXTENSIONS",
    "SEGMENT_GRANULARITIES",
    "SILENCE_LABELS",
    "check_segments",
    "frame_centers",
    "frame_geometry",
    "load_iemocap_segments",
    "pad_segments",
    "parse_iemocap_alignment",
    "pool_segments",
    "pool_segments_cumsum",
    "pool_segments_matrix",
    "read_iemocap_alignment",
    "segment_frame_bounds",
    "segment_pooling_matrix",
]
