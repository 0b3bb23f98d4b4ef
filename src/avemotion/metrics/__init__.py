"""Metrics of the field: WA, UA, macro/micro-F1, confusion matrix, CCC, per modality branch.

`load_metric(name)` returns the same metrics as `evaluate` modules loaded from local files (evaluate cannot reach
the Hub here): `"unweighted_accuracy"` and `"concordance_correlation"`.
"""

from .emotion import branch_metrics, classification_metrics, load_metric, regression_metrics

__all__ = ["branch_metrics", "classification_metrics", "load_metric", "regression_metrics"]
