"""Metrics against scikit-learn and hand-computed values, and the local evaluate modules."""

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from avemotion.metrics import branch_metrics, classification_metrics, load_metric, regression_metrics


def test_classification_metrics_by_hand_and_against_sklearn():
    references = [0, 0, 0, 0, 1, 1, 2, 2]
    predictions = [0, 0, 0, 1, 1, 0, 2, 1]
    metrics = classification_metrics(references, predictions, num_labels=3)
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    # per-class recall 3/4, 1/2, 1/2
    assert metrics["unweighted_accuracy"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert metrics["unweighted_accuracy"] == pytest.approx(balanced_accuracy_score(references, predictions))
    assert metrics["macro_f1"] == pytest.approx(f1_score(references, predictions, average="macro"))
    assert metrics["micro_f1"] == pytest.approx(metrics["accuracy"])
    assert metrics["confusion_matrix"] == [[3, 1, 0], [1, 1, 0], [0, 1, 1]]
    with pytest.raises(ValueError, match="equal length"):
        classification_metrics([0, 1], [0])


def test_ccc_by_hand():
    references = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0], [4.0, 8.0]])
    predictions = np.array([[2.0, 2.0], [3.0, 4.0], [4.0, 6.0], [5.0, 8.0]])  # first column shifted by one
    metrics = regression_metrics(references, predictions, ["arousal", "valence"])
    assert metrics["ccc_arousal"] == pytest.approx(2 * 1.25 / (1.25 + 1.25 + 1.0))
    assert metrics["ccc_valence"] == pytest.approx(1.0)
    assert metrics["ccc_mean"] == pytest.approx((2.5 / 3.5 + 1.0) / 2)


def test_branch_metrics_skip_rows_a_branch_could_not_score():
    references = np.array([0, 1, 1, 0])
    audio = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    visual = np.array([[0.0, 1.0], [np.nan, np.nan], [1.0, 0.0], [1.0, 0.0]])
    report = branch_metrics(
        {"audio_logits": audio, "visual_logits": visual}, references, "single_label_classification",
        report_names={"audio_logits": "audio"},
    )  # fmt: skip
    assert report["audio"]["accuracy"] == 1.0 and report["audio"]["num_samples"] == 4
    # an output without a declared report name is reported under its own name
    assert report["visual_logits"]["num_samples"] == 3 and report["visual_logits"]["accuracy"] == pytest.approx(1 / 3)
    assert "visual" not in report


def test_evaluate_modules_load_offline():
    ua = load_metric("unweighted_accuracy")
    result = ua.compute(references=[0, 0, 1, 2], predictions=[0, 1, 1, 2])
    assert result["unweighted_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)
    ccc = load_metric("concordance_correlation")
    result = ccc.compute(references=[[1.0], [2.0], [3.0], [4.0]], predictions=[[2.0], [3.0], [4.0], [5.0]])
    assert result["ccc_0"] == pytest.approx(2.5 / 3.5)
    with pytest.raises(ValueError, match="Unknown metric"):
        load_metric("bleu")
