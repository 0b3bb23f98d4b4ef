"""Metric functions (scikit-learn for the categorical ones) and the local `evaluate` modules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avemotion.utils.losses import concordance_correlation_coefficient

_EVALUATE_MODULES = Path(__file__).parent / "evaluate_modules"


def classification_metrics(
    references: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray, num_labels: int | None = None
) -> dict[str, Any]:
    """Accuracy (WA), unweighted accuracy (UA: mean per-class recall over the classes present in `references`),
    macro- and micro-F1, and the confusion matrix (rows: reference, columns: prediction)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

    references, predictions = np.asarray(references), np.asarray(predictions)
    if references.shape != predictions.shape or references.ndim != 1 or references.size == 0:
        raise ValueError(
            f"references and predictions must be non-empty 1-D arrays of equal length, got {references.shape} "
            f"and {predictions.shape}"
        )
    present = np.unique(references)
    labels = np.arange(num_labels) if num_labels is not None else np.union1d(present, np.unique(predictions))
    return {
        "accuracy": float(accuracy_score(references, predictions)),
        "unweighted_accuracy": float(recall_score(references, predictions, labels=present, average="macro")),
        "macro_f1": float(f1_score(references, predictions, labels=labels, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(references, predictions, labels=labels, average="micro", zero_division=0)),
        "confusion_matrix": confusion_matrix(references, predictions, labels=labels).tolist(),
    }


def regression_metrics(
    references: np.ndarray, predictions: np.ndarray, attribute_names: Sequence[str] | None = None
) -> dict[str, float]:
    """CCC per attribute (population variances, as the field reports it) and their mean. Arrays: (N, K)."""
    references = np.asarray(references, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    if references.ndim == 1:
        references, predictions = references[:, None], predictions.reshape(-1, 1)
    if references.shape != predictions.shape or references.shape[0] < 2:
        raise ValueError(
            f"references and predictions must be (N >= 2, K) arrays of equal shape, got {references.shape} "
            f"and {predictions.shape}"
        )
    names = list(attribute_names) if attribute_names is not None else [str(k) for k in range(references.shape[1])]
    ccc = concordance_correlation_coefficient(
        torch.from_numpy(predictions), torch.from_numpy(references), eps=0.0
    ).numpy()
    result = {f"ccc_{name}": float(value) for name, value in zip(names, ccc)}
    result["ccc_mean"] = float(np.mean(ccc))
    return result


def branch_metrics(
    branch_outputs: Mapping[str, np.ndarray],
    references: np.ndarray,
    problem_type: str,
    id2label: Mapping[int, str] | None = None,
    report_names: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics for each model output branch.

    Args:
        branch_outputs: output name (`"logits"`, `"fusion_logits"`, `"audio_logits"`, ...) -> (N, K) array; rows
            that a branch could not score (e.g. no video) are NaN and are left out of that branch's metrics.
        references: (N,) class indices, or (N, K) targets for regression.
        problem_type: `"single_label_classification"` or `"regression"`.
        id2label: class or attribute names.
        report_names: output name -> report name, as the model declares its evaluation branches
            (`avemotion.models.declaration`); an output without one is reported under its own name.

    Returns:
        branch report name (`"audio_visual"`, `"audio"`, ...) -> metrics, plus `"num_samples"` per branch.
    """
    report = {}
    references = np.asarray(references)
    for output_name, values in branch_outputs.items():
        values = np.asarray(values, dtype=np.float64)
        scored = ~np.isnan(values).any(axis=-1)
        if not scored.any():
            continue
        name = (report_names or {}).get(output_name, output_name)
        if problem_type == "regression":
            names = [id2label[k] for k in range(values.shape[-1])] if id2label else None
            metrics = regression_metrics(references[scored], values[scored], names)
        else:
            metrics = classification_metrics(references[scored], values[scored].argmax(-1), values.shape[-1])
        metrics["num_samples"] = int(scored.sum())
        report[name] = metrics
    return report


def load_metric(name: str, **kwargs: Any):
    """Load one of the package's `evaluate` modules from its local file (no Hub access needed)."""
    import evaluate

    path = _EVALUATE_MODULES / name / f"{name}.py"
    if not path.is_file():
        available = sorted(p.name for p in _EVALUATE_MODULES.iterdir() if p.is_dir())
        raise ValueError(f"Unknown metric {name!r}; available: {available}")
    return evaluate.load(str(path), **kwargs)
