"""Lin's concordance correlation coefficient per attribute, as an `evaluate` module."""

import datasets
import evaluate

from avemotion.metrics.emotion import regression_metrics

_DESCRIPTION = "Concordance correlation coefficient (CCC) per attribute and their mean, with population variances."
_KWARGS = "predictions: (N, K) floats. references: (N, K) floats. attribute_names: optional list of K names."


class ConcordanceCorrelation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }
            ),
        )

    def _compute(self, predictions, references, attribute_names=None):
        return regression_metrics(references, predictions, attribute_names)
