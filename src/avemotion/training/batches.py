"""Batches of the trainer: dataset rows carry their index (so that an error names the dataset row), and labels are
checked before any loss sees them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class RowIndexedDataset(torch.utils.data.Dataset):
    """`(index, row)` pairs of a map-style dataset, so that a batch knows its dataset rows (error messages)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return int(index), self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[int, Any]]:
        getitems = getattr(self.dataset, "__getitems__", None)
        rows = getitems(indices) if getitems is not None else [self.dataset[i] for i in indices]
        return list(zip((int(i) for i in indices), rows))


def check_labels(labels: torch.Tensor, num_labels: int, is_regression: bool, rows: list[int]) -> None:
    """A `ValueError` naming the dataset row of the first label the loss cannot take: a class index outside
    `0..num_labels-1`, or a NaN/infinite target (regression, soft labels)."""
    if labels.is_floating_point():
        bad = ~torch.isfinite(labels)
        bad = bad.reshape(bad.shape[0], -1).any(dim=-1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"dataset row {rows[i]}: label {labels[i].tolist()} is not finite; expected finite targets"
            )
    elif not is_regression:
        bad = (labels < 0) | (labels >= num_labels)
        bad = bad.reshape(bad.shape[0], -1).any(dim=-1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"dataset row {rows[i]}: label {labels[i].tolist()} is out of range; expected a class index in "
                f"0..{num_labels - 1} (the model has {num_labels} labels)"
            )


class RowIndexedCollator:
    """Collate `RowIndexedDataset` items with `collator`, check the labels (before any loss sees them) and add
    `row_indices` (B,) to the batch."""

    def __init__(self, collator: Callable, num_labels: int, is_regression: bool):
        self.collator, self.num_labels, self.is_regression = collator, num_labels, is_regression

    def __call__(self, items: list[tuple[int, Any]]) -> dict:
        indices = [index for index, _ in items]
        try:
            batch = self.collator([row for _, row in items])
        except ValueError as error:  # its "row k" counts within the batch: name the dataset rows too
            raise ValueError(f"batch of dataset rows {indices}: {error}") from error
        if isinstance(batch.get("labels"), torch.Tensor):
            check_labels(batch["labels"], self.num_labels, self.is_regression, indices)
        batch["row_indices"] = torch.tensor(indices)
        return batch


def default_collator(label_column: str | list[str] = "label", sampling_rate: int = 16000) -> Callable:
    """The data package's padding collator (`avemotion.data.collators.AvEmotionCollator`); audio values are resampled
    to `sampling_rate` (the model's, from its `input_spec`)."""
    from avemotion.data.collators import AvEmotionCollator

    return AvEmotionCollator(label_column=label_column, sampling_rate=sampling_rate)
