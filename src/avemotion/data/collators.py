"""Batch collation (`AvEmotionCollator`): padding and masks for every modality (rows may lack one), token ids,
speech segments and labels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from avemotion.models.declaration import InputSpec, ModalitySpec, read_input_spec
from avemotion.processing.media import decode_audio_value, is_path
from avemotion.processing.segments import SEGMENT_GRANULARITIES, pad_segments

from .iemocap import SEGMENT_COLUMNS as IEMOCAP_SEGMENT_COLUMNS

# The inputs the package's processors and corpus builders produce, padded when the collator is given no model's
# declaration (the trainer and `default_collator` always pass the model's, `read_declaration(model).inputs`).
PROCESSOR_INPUTS = read_input_spec(
    {
        "modalities": {
            "audio": {"inputs": ("input_values", "attention_mask"), "layout": "waveform",
                      "features": ("audio_features", "audio_features_mask")},
            "video": {"inputs": ("pixel_values_videos", "visual_features_mask"), "layout": "frames",
                      "features": ("visual_features", "visual_features_mask")},
            "text": {"inputs": ("input_ids", "text_attention_mask"), "layout": "tokens",
                     "extra_inputs": ("token_type_ids",)},
        },
        "segments": {g: (f"{g}_segments", f"{g}_segments_mask") for g in SEGMENT_GRANULARITIES},
    },
    "AvEmotionCollator",
)  # fmt: skip
# granularity -> the row columns that may hold its segments (the model input's name first, then the IEMOCAP builder's)
SEGMENT_COLUMNS = {g: (f"{g}_segments", IEMOCAP_SEGMENT_COLUMNS[g]) for g in SEGMENT_GRANULARITIES}


def _is_audio_value(value: Any) -> bool:
    """A path, a `datasets` Audio value (decoded decoder or undecoded dict) or an `{"array", "sampling_rate"}` dict:
    what `decode_audio_value` reads (a bare array is taken as samples at the collator's rate)."""
    return is_path(value) or isinstance(value, dict) or hasattr(value, "get_all_samples")


def _as_tensor(key: str, value: Any, sampling_rate: int, index: int, waveform: bool) -> torch.Tensor:
    """A row's value of `key` as a float tensor; an audio value of a `waveform` input becomes its mono waveform at
    `sampling_rate` (resampled from the value's own rate)."""
    if waveform and _is_audio_value(value):
        return torch.from_numpy(decode_audio_value(value, sampling_rate, name=f"row {index}: audio"))
    return torch.as_tensor(np.asarray(value), dtype=torch.float32)


def _segment_list(value: Any, name: str, index: int) -> list[tuple[float, float]] | None:
    """`(start, end)` seconds from IEMOCAP's `[{"start", "end", "label"}, ...]` (or its Arrow struct-of-lists form),
    `[(start, end[, label]), ...]` or an (N, 2) array; None or empty -> None (no alignment at this granularity)."""
    if value is None:
        return None
    if isinstance(value, dict):  # a `datasets.Sequence` of structs reads back as a dict of lists
        if "start" not in value or "end" not in value:
            raise ValueError(f"row {index}: `{name}` must hold `start` and `end` seconds, got keys {sorted(value)}")
        value = [{"start": s, "end": e} for s, e in zip(value["start"], value["end"])]
    segments = []
    for position, segment in enumerate(value):
        if isinstance(segment, dict):
            if "start" not in segment or "end" not in segment:
                raise ValueError(f"row {index}: `{name}`[{position}] must hold `start` and `end`, got {segment!r}")
            segments.append((float(segment["start"]), float(segment["end"])))
        elif len(segment) >= 2:
            segments.append((float(segment[0]), float(segment[1])))
        else:
            raise ValueError(f"row {index}: `{name}`[{position}] must be (start, end[, label]), got {segment!r}")
    return segments or None


@dataclass
class AvEmotionCollator:
    """Pad `input_values` (N,), `audio_features` (T, D_a), `pixel_values_videos` (T, 3, H, W) and `visual_features`
    (T, D_v) to the longest row, with a mask per modality (1 on real samples/frames).

    A row whose value is None (or missing) for a modality present in other rows gets zeros and an all-zero mask row,
    which the models read as "modality absent" (they run that modality's encoders on the other rows only). A
    modality absent from every row is left out of the batch. An empty value (0 samples, frames or tokens) is an
    error, not a silent "absent"; rows may not mix `input_values` with `audio_features` (or `pixel_values_videos`
    with `visual_features`).
    `audio` (a path, a decoded or undecoded `datasets` Audio value, or an `{"array", "sampling_rate"}` dict) is used
    as `input_values` when a row has no `input_values`; such audio values (in either column) are decoded to mono and
    resampled to `sampling_rate` (`avemotion.processing.media.decode_audio_value`). Bare arrays are taken as they
    are (samples at `sampling_rate`, or already normalised model inputs).

    Labels: `label_column` (default `"label"`, class indices -> (B,) long) or a list of columns (e.g. the attributes,
    -> (B, len) float); a row without a label raises, since a silently dropped label would bias training.
    Other keys (ids, text) are passed through as lists when `keep_columns` names them.

    Text (multi-level fusion model): rows with `input_ids` (token lists or arrays) give `input_ids` (B, L_max), padded
    with the tokenizer's pad id (0 without one), `text_attention_mask` (B, L_max) and, when any row has them,
    `token_type_ids`. With a `tokenizer`, rows without `input_ids` but with a `text_column` string are tokenised here
    (truncated to `max_text_length` tokens). A row without text gets an all-zero `text_attention_mask` row (text
    absent); a row with text that cannot be tokenised (no tokenizer) while other rows have `input_ids` raises.

    Segments (seconds): `phone_segments`, `syllable_segments`, `word_segments`, or the IEMOCAP builder's `phones`,
    `syllables`, `words` columns (`[{"start", "end", "label"}, ...]`), give `{g}_segments` (B, N_max, 2) and
    `{g}_segments_mask` (B, N_max) bool via `pad_segments`; a row without them gets an all-False mask row (the
    model ignores the segments of a row without audio).

    Keys: `inputs` is the model's declaration (`avemotion.models.declaration.read_declaration(model).inputs`):
    its waveform and frame inputs and features are padded under its keys, its token input as text, its declared
    segments as segments. Without one, the keys of the package's processors and builders (`PROCESSOR_INPUTS`, named
    below) are used.

    Returns a dict of tensors: `input_values` (B, N_max) + `attention_mask` (B, N_max), `audio_features`
    (B, T_max, D_a) + `audio_features_mask`, `pixel_values_videos` or `visual_features` (B, T_max, ...) +
    `visual_features_mask` (B, T_max), `labels`.
    """

    label_column: str | list[str] | None = "label"
    keep_columns: tuple[str, ...] = ()
    pad_to_multiple_of: int | None = None
    tokenizer: Any = None
    text_column: str = "text"
    max_text_length: int | None = 512
    sampling_rate: int = 16000
    inputs: InputSpec | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if not rows:
            raise ValueError("AvEmotionCollator got an empty list of rows")
        rows = [dict(row) for row in rows]
        inputs = self.inputs or PROCESSOR_INPUTS
        waveform_keys = {spec.inputs[0] for spec in inputs.with_layout("waveform")}
        for key in waveform_keys:  # an `audio` column is the waveform input of a row without one
            for row in rows:
                if row.get(key) is None and row.get("audio") is not None:
                    row[key] = row["audio"]
        for spec in reversed(inputs.modalities.values()):
            raw, features = spec.inputs[0], (spec.features or (None,))[0]
            if (
                features
                and any(r.get(raw) is not None for r in rows)
                and any(r.get(features) is not None for r in rows)
            ):
                raise ValueError(f"rows mix `{raw}` and `{features}`; use one input per modality and batch")
        batch: dict[str, Any] = {}
        for key, mask_key in inputs.padded_keys.items():
            waveform = key in waveform_keys
            values = [
                None if row.get(key) is None else _as_tensor(key, row[key], self.sampling_rate, index, waveform)
                for index, row in enumerate(rows)
            ]
            if all(v is None for v in values):
                continue
            batch[key], padded_mask = self._pad(key, values)
            if mask_key:
                batch[mask_key] = padded_mask
        for spec in inputs.with_layout("tokens"):
            batch.update(self._text(rows, spec))
        batch.update(self._segments(rows, inputs.segments))
        if self.label_column is not None:
            batch["labels"] = self._labels(rows)
        for column in self.keep_columns:
            batch[column] = [row.get(column) for row in rows]
        return batch

    def _pad(self, key: str, values: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        present = [v for v in values if v is not None]
        trailing = present[0].shape[1:]
        for index, value in enumerate(values):
            if value is not None and value.dim() > 0 and value.shape[0] == 0:
                # an empty value would read as "modality absent" (an all-zero mask row): say so instead
                raise ValueError(f"row {index}: `{key}` is empty (0 frames); pass None for a row without it")
            if value is not None and (value.dim() == 0 or value.shape[1:] != trailing):
                raise ValueError(
                    f"row {index}: `{key}` has shape {tuple(value.shape)}, expected (length, *{tuple(trailing)}) "
                    "like the other rows"
                )
        lengths = torch.tensor([0 if v is None else v.shape[0] for v in values])
        length = int(lengths.max())
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        # one concatenation and one scatter, not a copy per row: the collator runs once per training batch
        flat = torch.cat(present).to(present[0].dtype)
        mask = (torch.arange(length) < lengths.unsqueeze(1)).long()
        padded = flat.new_zeros((len(values), length, *trailing))
        padded[mask.bool()] = flat
        return padded, mask

    def _text(self, rows: list[dict[str, Any]], spec: ModalitySpec) -> dict[str, torch.Tensor]:
        """The token modality's ids and mask (`input_ids`, `text_attention_mask`, and its first extra input,
        `token_type_ids`) from token ids or, with a tokenizer, raw text."""
        ids_key, mask_key = spec.inputs
        types_key = spec.extra_inputs[0] if spec.extra_inputs else None
        ids = [row.get(ids_key) for row in rows]
        types = [row.get(types_key) if types_key else None for row in rows]
        texts = [row.get(self.text_column) for row in rows]
        to_tokenize = [i for i, (t, x) in enumerate(zip(ids, texts)) if t is None and x is not None]
        if to_tokenize and self.tokenizer is not None:
            encoded = self.tokenizer([texts[i] for i in to_tokenize], truncation=True, max_length=self.max_text_length)
            for position, index in enumerate(to_tokenize):
                ids[index] = encoded["input_ids"][position]
                if types_key and "token_type_ids" in encoded:
                    types[index] = encoded["token_type_ids"][position]
        elif to_tokenize and any(t is not None for t in ids):
            first = to_tokenize[0]
            raise ValueError(
                f"row {first} ({rows[first].get('id', '?')}) has `{self.text_column}` but no `{ids_key}` while other "
                f"rows have `{ids_key}`; pass AvEmotionCollator(tokenizer=...) to tokenise it"
            )
        if all(t is None for t in ids):
            return {}
        tensors = [None if t is None else torch.as_tensor(np.asarray(t), dtype=torch.long) for t in ids]
        for index, tensor in enumerate(tensors):
            if tensor is not None and tensor.dim() != 1:
                raise ValueError(
                    f"row {index}: `{ids_key}` must be a 1-D list of token ids, got {tuple(tensor.shape)}"
                )
            if tensor is not None and len(tensor) == 0:
                raise ValueError(f"row {index}: `{ids_key}` is empty; pass None for a row without text")
            if tensor is not None and types[index] is not None and len(types[index]) != len(tensor):
                raise ValueError(
                    f"row {index}: `{types_key}` has {len(types[index])} entries, `{ids_key}` {len(tensor)}"
                )
        pad_id = getattr(self.tokenizer, "pad_token_id", None) or 0
        length = max(len(t) for t in tensors if t is not None)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        out = {
            ids_key: torch.full((len(rows), length), pad_id, dtype=torch.long),
            mask_key: torch.zeros(len(rows), length, dtype=torch.long),
        }
        if types_key and any(t is not None for t in types):
            out[types_key] = torch.zeros(len(rows), length, dtype=torch.long)
        for index, tensor in enumerate(tensors):
            if tensor is None:
                continue
            out[ids_key][index, : len(tensor)] = tensor
            out[mask_key][index, : len(tensor)] = 1
            if types_key in out and types[index] is not None:
                out[types_key][index, : len(tensor)] = torch.as_tensor(np.asarray(types[index]))
        return out

    def _segments(
        self, rows: list[dict[str, Any]], declared: Mapping[str, tuple[str, str]]
    ) -> dict[str, torch.Tensor]:
        """`{g}_segments` (B, N, 2) seconds and `{g}_segments_mask` (B, N) bool (the keys `declared` for granularity
        `g`) for each declared granularity any row has, from the row's `{g}_segments` or IEMOCAP's column."""
        out = {}
        for granularity, (segments_key, mask_key) in declared.items():
            columns = tuple(dict.fromkeys((segments_key, *SEGMENT_COLUMNS.get(granularity, ()))))
            if not any(row.get(c) is not None for row in rows for c in columns):
                continue
            per_row = []
            for index, row in enumerate(rows):
                present = [c for c in columns if row.get(c) is not None]
                if len(present) > 1:
                    raise ValueError(f"row {index} has both `{present[0]}` and `{present[1]}`; keep one of them")
                per_row.append(_segment_list(row[present[0]], present[0], index) if present else None)
            out[segments_key], out[mask_key] = pad_segments(per_row)
        return out

    def _labels(self, rows: list[dict[str, Any]]) -> torch.Tensor:
        columns = [self.label_column] if isinstance(self.label_column, str) else list(self.label_column)
        key = "labels" if all("labels" in row for row in rows) and columns == ["label"] else None
        values = []
        for index, row in enumerate(rows):
            value = row[key] if key else [row.get(c) for c in columns]
            if value is None or (isinstance(value, list) and any(v is None for v in value)):
                raise ValueError(f"row {index} ({row.get('id', '?')}) has no value for label column(s) {columns}")
            values.append(value)
        if isinstance(self.label_column, str):
            flat = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in values]
            tensor = torch.as_tensor(flat)
            return tensor.long() if not tensor.is_floating_point() else tensor.float()
        return torch.as_tensor(values, dtype=torch.float32)
