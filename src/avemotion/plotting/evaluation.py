"""Evaluation figures: confusion matrices (counts and row-normalised rates) and predicted-vs-true scatter plots with
the CCC, and the files `avemotion evaluate --figures DIR` writes from a per-branch report."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._figures import new_figure, save_figure


def plot_confusion_matrix(matrix: Any, class_names: Sequence[str], *, title: str | None = None):
    """A confusion matrix (rows: true class, columns: predicted class) with, in each cell, the count and the
    row-normalised rate (the share of that true class); colours follow the rates.

    Args:
        matrix: (C, C) counts, e.g. the `confusion_matrix` of a `branch_metrics` report.
        class_names: the C class names, in index order (the axes' tick labels).
        title: the axes' title (e.g. the branch and its accuracy).

    Returns:
        a `matplotlib.figure.Figure` with one axes; cell texts read `"count\\nrate"`.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    names = [str(n) for n in class_names]
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(names):
        raise ValueError(f"matrix: expected ({len(names)}, {len(names)}) counts for {names}, got shape {counts.shape}")
    totals = counts.sum(1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)
    size = len(names)
    figure = new_figure(max(4.8, 0.75 * size + 2.8), max(3.6, 0.65 * size + 2.0))
    ax = figure.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, label="share of the true class", shrink=0.85)
    fontsize = "medium" if size <= 6 else "small" if size <= 10 else "x-small"
    for row in range(size):
        for column in range(size):
            rate = rates[row, column]
            ax.text(column, row, f"{counts[row, column]}\n{rate:.2f}", ha="center", va="center", fontsize=fontsize,
                    color="white" if rate > 0.55 else "black")  # fmt: skip
    crowded = max(map(len, names)) * size > 48  # long names: slanted
    ax.set_xticks(range(size), names, rotation=40 if crowded else 0, ha="right" if crowded else "center")
    ax.set_yticks(range(size), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(title or f"Confusion matrix (accuracy {accuracy:.3f}, n={counts.sum()})")
    return figure


def concordance_correlation(references: np.ndarray, predictions: np.ndarray) -> float:
    """Lin's CCC of two (N,) arrays with population variances (as `avemotion.metrics.regression_metrics`)."""
    x, y = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
    covariance = np.mean((x - x.mean()) * (y - y.mean()))
    denominator = x.var() + y.var() + (x.mean() - y.mean()) ** 2
    return float(2 * covariance / denominator) if denominator > 0 else float("nan")


def plot_regression_scatter(
    references: Any,
    predictions: Any,
    attribute_names: Sequence[str],
    *,
    ccc: Mapping[str, float] | None = None,
    title: str | None = None,
):
    """Predicted vs. true values, one panel per attribute, with the identity line and the CCC in each panel's title.

    Args:
        references, predictions: (N, K) arrays (or (N,) for one attribute); rows with NaN are left out.
        attribute_names: the K attribute names.
        ccc: attribute -> CCC to show (default: computed here from the rows drawn).
        title: the figure's title.

    Returns:
        a `matplotlib.figure.Figure` with K axes titled `"<attribute>: CCC <value>"`.
    """
    truth, predicted = np.asarray(references, dtype=np.float64), np.asarray(predictions, dtype=np.float64)
    if truth.ndim == 1:
        truth, predicted = truth[:, None], predicted.reshape(-1, 1)
    names = [str(n) for n in attribute_names]
    if truth.shape != predicted.shape or truth.ndim != 2 or truth.shape[1] != len(names):
        raise ValueError(f"references and predictions: expected (N, {len(names)}) arrays for {names}, got "
                         f"{truth.shape} and {predicted.shape}")  # fmt: skip
    figure = new_figure(3.6 * len(names) + 0.4, 3.9)
    for index, (name, ax) in enumerate(zip(names, figure.subplots(1, len(names), squeeze=False)[0])):
        kept = ~(np.isnan(truth[:, index]) | np.isnan(predicted[:, index]))
        x, y = truth[kept, index], predicted[kept, index]
        value = (ccc or {}).get(name, concordance_correlation(x, y) if kept.sum() >= 2 else float("nan"))
        ax.scatter(x, y, s=14, alpha=0.6, edgecolors="none")
        if kept.any():
            low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
            pad = 0.05 * (high - low or 1.0)
            ax.plot([low - pad, high + pad], [low - pad, high + pad], color="grey", linestyle="--", linewidth=1)
            ax.set_xlim(low - pad, high + pad)
            ax.set_ylim(low - pad, high + pad)
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(f"{name}: CCC {value:.3f}")
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
    if title:
        figure.suptitle(title)
    return figure


def _file_part(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", str(name)).strip("_") or "branch"


def write_evaluation_figures(
    report: Mapping[str, Any],
    directory: str | Path,
    class_names: Sequence[str],
    predictions: Mapping[str, np.ndarray] | None = None,
    references: np.ndarray | None = None,
    dpi: int = 100,
) -> list[Path]:
    """Write the figures of a per-branch evaluation report into `directory`:
    `confusion_matrix_<branch>.png` for each branch with a `confusion_matrix`, and, for regression,
    `scatter_<branch>.png` for each branch of `predictions` (branch -> (N, K), NaN rows left out) against
    `references` (N, K), titled with the report's `ccc_<attribute>`. Returns the paths written."""
    directory = Path(directory)
    written = []
    for branch, metrics in report.items():
        if isinstance(metrics, Mapping) and "confusion_matrix" in metrics:
            title = f"{branch}: accuracy {metrics.get('accuracy', float('nan')):.3f}"
            if "unweighted_accuracy" in metrics:
                title += f", UA {metrics['unweighted_accuracy']:.3f}"
            figure = plot_confusion_matrix(metrics["confusion_matrix"], class_names, title=title)
            written.append(save_figure(figure, directory / f"confusion_matrix_{_file_part(branch)}.png", dpi))
    for branch, values in (predictions or {}).items():
        if references is None:
            raise ValueError("write_evaluation_figures: predictions without references")
        if np.isnan(np.asarray(values, dtype=np.float64)).all():
            continue  # a branch that scored no row
        metrics = report.get(branch) if isinstance(report.get(branch), Mapping) else {}
        ccc = {name: metrics[f"ccc_{name}"] for name in class_names if f"ccc_{name}" in metrics}
        title = f"{branch}: predicted vs. true"
        figure = plot_regression_scatter(references, values, class_names, ccc=ccc or None, title=title)
        written.append(save_figure(figure, directory / f"scatter_{_file_part(branch)}.png", dpi))
    return written
