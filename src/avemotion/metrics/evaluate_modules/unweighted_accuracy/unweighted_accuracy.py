"""Unweighted accuracy (mean per-class recall) with accuracy and macro/micro-F1, as an `evaluate` module."""

import datasets
import evaluate

from avemotion.metrics.emotion import classification_metrics

_DESCRIPTION = "Weighted accuracy (WA), unweighted accuracy (UA, mean per-class recall), macro-F1 and micro-F1."
_KWARGS = "predictions: predicted class indices. references: true class indices. num_labels: optional."


class UnweightedAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_labels=None):
        metrics = classification_metrics(references, predictions, num_labels)
        metrics.pop("confusion_matrix")
        return metrics
