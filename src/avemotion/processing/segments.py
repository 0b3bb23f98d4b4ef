"""Speech segments on the data side: the granularity names, the IEMOCAP forced-alignment reader and padding of
per-utterance segment lists into model inputs.

A segment is `(start_seconds, end_seconds, label)`. This module prepares segments; what a model does with them (the
multi-level fusion model pools speech frames inside each one) lives with the model. Data code (corpus builders,
collators) and the pipeline import segment helpers from here, never from a model folder.

An utterance without an alignment file has no segments at that granularity: [`load_iemocap_segments`] returns None
for it and [`pad_segments`] gives it an all-False mask row. Nothing is invented.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence

import torch

logger = logging.getLogger(__name__)

# The speech granularities: `frame` is the speech encoder's own frames, the others come from a forced alignment.
# (The canonical names; the multi-level fusion model keeps a `# Copied from` copy, since its remote code cannot import
# avemotion.)
GRANULARITIES = ("frame", "phone", "syllable", "word")
SEGMENT_GRANULARITIES = GRANULARITIES[1:]
# IEMOCAP ships `<utterance>.phseg`, `.syseg` and `.wdseg` under sentences/ForcedAlignment/<dialog>/.
IEMOCAP_ALIGNMENT_EXTENSIONS = {"phone": ".phseg", "syllable": ".syseg", "word": ".wdseg"}
# Sentence markers and silences of the aligner's output (compared case-insensitively).
SILENCE_LABELS = frozenset({"<s>", "</s>", "<sil>", "sil"})
_VARIANT_SUFFIX = re.compile(r"\(\d+\)$")
_INTEGER = re.compile(r"^[+-]?\d+$")

Segment = tuple[float, float, str]


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


__all__ = [
    "GRANULARITIES",
    "IEMOCAP_ALIGNMENT_EXTENSIONS",
    "SEGMENT_GRANULARITIES",
    "SILENCE_LABELS",
    "Segment",
    "load_iemocap_segments",
    "pad_segments",
    "parse_iemocap_alignment",
    "read_iemocap_alignment",
]
