"""Batch collation with padding and masks for every modality; rows may lack a modality."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# row key -> mask key in the batch (the names VAVL's forward takes)
SEQUENCE_KEYS = {
    "input_values": "attention_mask",
    "audio_features": "audio_features_mask",
    "pixel_values_videos": "visual_features_mask",
    "visual_features": "visual_features_mask",
}


def _as_tensor(value: Any) -> torch.Tensor:
    if hasattr(value, "get_all_samples"):  # a datasets/torchcodec AudioDecoder
        return value.get_all_samples().data.mean(0).float()
    if isinstance(value, dict) and "array" in value:
        value = value["array"]
    return torch.as_tensor(np.asarray(value), dtype=torch.float32)


@dataclass
class AvEmotionCollator:
    """Pad `input_values` (N,), `audio_features` (T, D_a), `pixel_values_videos` (T, 3, H, W) and `visual_features`
    (T, D_v) to the longest row, with a mask per modality (1 on real samples/frames).

    A row whose value is None (or missing) for a modality present in other rows gets zeros and an all-zero mask row,
    which VAVL reads as "modality absent". A modality absent from every row is left out of the batch.
    `audio` (a decoded `datasets` Audio value) is used as `input_values` when a row has no `input_values`.

    Labels: `label_column` (default `"label"`, class indices -> (B,) long) or a list of columns (e.g. the attributes,
    -> (B, len) float); a row without a label raises, since a silently dropped label would bias training.
    Other keys (ids, text) are passed through as lists when `keep_columns` names them.

    Returns a dict of tensors: `input_values` (B, N_max) + `attention_mask` (B, N_max), `audio_features`
    (B, T_max, D_a) + `audio_features_mask`, `pixel_values_videos` or `visual_features` (B, T_max, ...) +
    `visual_features_mask` (B, T_max), `labels`.
    """

    label_column: str | list[str] | None = "label"
    keep_columns: tuple[str, ...] = ()
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if not rows:
            raise ValueError("AvEmotionCollator got an empty list of rows")
        rows = [dict(row) for row in rows]
        for row in rows:
            if row.get("input_values") is None and row.get("audio") is not None:
                row["input_values"] = row["audio"]
        if any(r.get("pixel_values_videos") is not None for r in rows) and any(
            r.get("visual_features") is not None for r in rows
        ):
            raise ValueError("rows mix `pixel_values_videos` and `visual_features`; use one visual input per batch")
        batch: dict[str, Any] = {}
        for key, mask_key in SEQUENCE_KEYS.items():
            values = [None if row.get(key) is None else _as_tensor(row[key]) for row in rows]
            if all(v is None for v in values):
                continue
            batch[key], batch[mask_key] = self._pad(key, values)
        if self.label_column is not None:
            batch["labels"] = self._labels(rows)
        for column in self.keep_columns:
            batch[column] = [row.get(column) for row in rows]
        return batch

    def _pad(self, key: str, values: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        present = [v for v in values if v is not None]
        trailing = present[0].shape[1:]
        for index, value in enumerate(values):
            if value is not None and (value.dim() == 0 or value.shape[1:] != trailing):
                raise ValueError(
                    f"row {index}: `{key}` has shape {tuple(value.shape)}, expected (length, *{tuple(trailing)}) "
                    "like the other rows"
                )
        length = max(v.shape[0] for v in present)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        padded = present[0].new_zeros((len(values), length, *trailing))
        mask = torch.zeros(len(values), length, dtype=torch.long)
        for index, value in enumerate(values):
            if value is not None:
                padded[index, : value.shape[0]] = value
                mask[index, : value.shape[0]] = 1
        return padded, mask

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
