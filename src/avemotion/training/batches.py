"""Batches of the trainer: dataset rows carry their index (so that an error names the dataset row), and labels are
checked before any loss sees them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class RowIndexedDataset(torch.utils.data.Dataset):
    """`(index, row)` pairs of a map-style dataset, so that a batch knows its dataset rows (error messages).

    The frames of a `datasets.Dataset` in numpy format (columns of lists of float lists: cached features, (T, D)
    per row, None for a row without them) are read from Arrow in one piece per column and batch rather than by the
    `datasets` numpy formatter, which converts each frame on its own (about 10x slower at the paper's sizes); the
    rows are the same (float32 arrays (T, D) whatever the stored float width, None), and any other case goes through
    the formatter."""

    def __init__(self, dataset):
        self.dataset = dataset
        self._frames = _frame_columns(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return int(index), self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[int, Any]]:
        rows = self._frame_rows(indices) if self._frames is not None else None
        if rows is None:
            getitems = getattr(self.dataset, "__getitems__", None)
            rows = getitems(indices) if getitems is not None else [self.dataset[i] for i in indices]
        return list(zip((int(i) for i in indices), rows))

    def _frame_rows(self, indices: list[int]) -> list[dict[str, Any]] | None:
        arrow, names, others = self._frames
        table = arrow[indices]
        rows = others.__getitems__(indices) if others is not None else [{} for _ in indices]
        for name in names:
            values = _frames_of(table.column(name).combine_chunks())
            if values is None:  # ragged or empty frames, nulls inside: the formatter's own output
                return None
            for row, value in zip(rows, values):
                row[name] = value
        return rows


def _frame_columns(dataset) -> tuple[Any, list[str], Any] | None:
    """`(arrow view, frame column names, numpy view of the other columns or None)` of a `datasets.Dataset` in plain
    numpy format with list-of-float-list columns; None otherwise."""
    form = getattr(dataset, "format", None)
    if not isinstance(form, dict) or form.get("type") != "numpy" or form.get("format_kwargs"):
        return None
    if form.get("output_all_columns") or not hasattr(dataset, "select_columns"):
        return None
    import datasets

    def is_frames(feature) -> bool:
        inner = getattr(feature, "feature", None)
        leaf = getattr(inner, "feature", None)
        return (isinstance(feature, datasets.List) and isinstance(inner, datasets.List)
                and isinstance(leaf, datasets.Value) and leaf.dtype in ("float16", "float32", "float64"))  # fmt: skip

    columns = form.get("columns") or list(dataset.features)
    names = [name for name in columns if is_frames(dataset.features[name])]
    if not names:
        return None
    others = [name for name in columns if name not in names]
    arrow = dataset.select_columns(names).with_format("arrow")
    return arrow, names, dataset.select_columns(others) if others else None


def _frames_of(column) -> list[Any] | None:
    """Per row: a (T, D) array of a list-of-float-lists Arrow column, or None for a null row; None when a row is
    empty or ragged, or a value is null."""
    import numpy as np

    inner = column.values
    if inner.null_count or inner.values.null_count:
        return None
    outer_offsets, inner_offsets = column.offsets.to_numpy(), inner.offsets.to_numpy()
    # one writable copy per column and batch, float32 whatever the stored float width, as the `datasets` numpy
    # formatter gives floating values (its `_tensorize` casts them to float32)
    leaf = np.array(inner.values.to_numpy(zero_copy_only=False), dtype=np.float32)
    nulls = column.is_null().to_numpy(zero_copy_only=False)
    rows = []
    for index, null in enumerate(nulls):
        if null:
            rows.append(None)
            continue
        first, last = int(outer_offsets[index]), int(outer_offsets[index + 1])
        lengths = np.diff(inner_offsets[first : last + 1])
        if last == first or lengths.min() != lengths.max() or lengths[0] == 0:
            return None
        rows.append(leaf[inner_offsets[first] : inner_offsets[last]].reshape(last - first, int(lengths[0])))
    return rows


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


def default_collator(
    label_column: str | list[str] = "label",
    sampling_rate: int = 16000,
    pad_to_multiple_of: int | None = None,
    inputs: Any = None,
) -> Callable:
    """The data package's padding collator (`avemotion.data.collators.AvEmotionCollator`) for the model's declared
    `inputs` (`read_declaration(model).inputs`); audio values are resampled to `sampling_rate` (the model's);
    padded lengths rounded up to `pad_to_multiple_of`."""
    from avemotion.data.collators import AvEmotionCollator

    return AvEmotionCollator(
        label_column=label_column, sampling_rate=sampling_rate, pad_to_multiple_of=pad_to_multiple_of, inputs=inputs
    )
