"""Training curves from a run's `training_log.jsonl` (one JSON record per epoch: `epoch`, `train_loss` per training
step, and the evaluation report under `eval`)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._figures import class_colours, new_figure

DEFAULT_METRICS = ("combined/unweighted_accuracy", "combined/ccc_mean", "loss")


def read_training_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a `training_log.jsonl`; a `ValueError` naming the file and line for a line that is not JSON."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as error:  # JSONDecodeError; nested too deep
                raise ValueError(f"{path}:{number}: not a JSON record ({str(error)[:200]})") from error
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: not a JSON record (a {type(record).__name__})")
            records.append(record)
    return records


def metric_of(report: Any, metric: str) -> float:
    """`report["<branch>"]["<metric>"]` (or `report["loss"]`) as a float; NaN when absent."""
    value = report
    for part in metric.split("/"):
        if not isinstance(value, dict) or part not in value:
            return math.nan
        value = value[part]
    return float(value) if isinstance(value, (int, float)) else math.nan


def _pick_metric(records: Sequence[dict[str, Any]], metric: str | None) -> str | None:
    reports = [record.get("eval") for record in records if isinstance(record.get("eval"), dict)]
    if not reports:
        return None
    if metric is not None:
        return metric
    return next((m for m in DEFAULT_METRICS if any(not math.isnan(metric_of(r, m)) for r in reports)), None)


def plot_training_curves(records: Sequence[dict[str, Any]] | str | Path, metric: str | None = None):
    """Loss per epoch (one line per training step, e.g. `acoustic`, `visual`, `fusion`, and the evaluation loss) and
    the selection metric per epoch (`metric_for_best_model`, e.g. `"combined/unweighted_accuracy"`; default: the
    first of `DEFAULT_METRICS` in the log), with the best epoch marked.

    Args:
        records: the run's per-epoch records, or the path of its `training_log.jsonl`.
        metric: `"<branch>/<metric>"` or `"loss"`; lower is better when it names a loss.

    Returns:
        a `matplotlib.figure.Figure`: axes `"losses"`, and `"metric"` when the log has evaluation reports.
    """
    if isinstance(records, (str, Path)):
        records = read_training_log(records)
    records = [r for r in records if isinstance(r, dict) and "epoch" in r]
    if not records:
        raise ValueError("records: no per-epoch training records (with an 'epoch') to plot")
    chosen = _pick_metric(records, metric)
    figure = new_figure(10.0 if chosen else 5.6, 3.6)
    axes = figure.subplots(1, 2 if chosen else 1, squeeze=False)[0]
    epochs = [record["epoch"] for record in records]
    steps = list(dict.fromkeys(name for r in records for name in (r.get("train_loss") or {})))
    losses = axes[0]
    losses.set_label("losses")
    for name, colour in zip(steps, class_colours(len(steps) + 1)):
        values = [float((r.get("train_loss") or {}).get(name, math.nan)) for r in records]
        losses.plot(epochs, values, marker="o", color=colour, label=f"train {name}")
    evaluation_loss = [metric_of(r.get("eval"), "loss") for r in records]
    if any(not math.isnan(v) for v in evaluation_loss):
        losses.plot(epochs, evaluation_loss, marker="s", linestyle="--", color="black", label="evaluation")
    losses.set(xlabel="epoch", ylabel="loss", title="Losses")
    losses.legend(fontsize="small")
    losses.grid(alpha=0.3)
    if chosen:
        _draw_metric(axes[1], epochs, [metric_of(r.get("eval"), chosen) for r in records], chosen)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    return figure


def _draw_metric(ax: Any, epochs: list[int], values: list[float], metric: str) -> None:
    ax.set_label("metric")
    ax.plot(epochs, values, marker="o", color="tab:green")
    finite = [(v, e) for v, e in zip(values, epochs) if not math.isnan(v)]
    if finite:
        sign = 1.0 if "loss" in metric else -1.0  # the first epoch with the best value, as the trainer selects
        best_value, best_epoch = min(finite, key=lambda pair: (sign * pair[0], pair[1]))
        ax.scatter([best_epoch], [best_value], s=140, facecolors="none", edgecolors="red", linewidths=2, zorder=3,
                   label=f"best: epoch {best_epoch} ({best_value:.3f})")  # fmt: skip
        ax.legend(fontsize="small")
    ax.set(xlabel="epoch", ylabel=metric, title=f"Evaluation {metric}")
    ax.grid(alpha=0.3)
