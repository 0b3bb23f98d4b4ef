"""`avemotion.plotting`: the figures' content (the values drawn, the modality band, axis names, cell texts, CCC in
titles, the image itself read back), not only that a file exists; the package imports without matplotlib."""

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avemotion import plotting
from avemotion.metrics import classification_metrics, regression_metrics
from avemotion.plotting import (
    plot_confusion_matrix,
    plot_regression_scatter,
    plot_timeline,
    plot_training_curves,
    save_figure,
    timeline_windows,
    window_regions,
    write_evaluation_figures,
)

LABELS = ["angry", "happy", "neutral", "sad"]


def _predictions(probabilities, modalities):
    ranked = sorted(zip(LABELS, probabilities), key=lambda pair: -pair[1])
    return [{"label": label, "score": float(score), "modalities": modalities} for label, score in ranked]


def _windowed_result():
    """5 windows of 2 s over 9 s (the tail window aligned to the end); no face in windows 2 and 3."""
    rng = np.random.default_rng(0)
    spans = [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0), (7.0, 9.0)]
    windows = []
    for index, (start, end) in enumerate(spans):
        modalities = ["audio"] if index in (2, 3) else ["audio", "video"]
        predictions = _predictions(rng.dirichlet(np.ones(4)), modalities)
        windows.append({"start": start, "end": end, "predictions": predictions, "modalities": modalities})
    return {"windows": windows, "modalities": ["audio", "video"], "predictions": windows[0]["predictions"]}


def _axes(figure, label):
    [ax] = [ax for ax in figure.axes if ax.get_label() == label]
    return ax


def _pixels(figure, path):
    """The saved image as an (H, W, 3) array."""
    return np.asarray(Image.open(save_figure(figure, path)).convert("RGB"), dtype=np.int32)


def _drawn(pixels) -> float:
    """The share of pixels that are not white."""
    return float((pixels < 245).any(-1).mean())


def test_timeline_of_windows_draws_each_window_and_its_modalities(tmp_path):
    result = _windowed_result()
    figure = plot_timeline(result, labels=LABELS, title="interview.mp4")
    emotions, band = _axes(figure, "emotions"), _axes(figure, "modalities")
    assert emotions.get_xlim() == pytest.approx((0.0, 9.0))  # the media's duration: the end of the last window
    assert emotions.get_title() == "interview.mp4" and band.get_xlabel() == "time (s)"
    # the band: one bar per window, tiling [0, 9] s, named (gid) and coloured by the modalities each window used
    bars = sorted(band.patches, key=lambda patch: patch.get_x())
    assert [bar.get_gid() for bar in bars] == ["audio+video", "audio+video", "audio", "audio", "audio+video"]
    edges = [(bar.get_x(), bar.get_x() + bar.get_width()) for bar in bars]
    np.testing.assert_allclose(edges, [(0, 2), (2, 4), (4, 6), (6, 7.5), (7.5, 9)])  # overlap split at the midpoint
    assert bars[0].get_facecolor() != bars[2].get_facecolor() and bars[0].get_facecolor() == bars[1].get_facecolor()
    # the stacked bars: per class, one bar per window, of height the window's probability
    heights = np.array([[bar.get_height() for bar in container] for container in emotions.containers])  # (C, W)
    expected = [
        [{p["label"]: p["score"] for p in w["predictions"]}[label] for w in result["windows"]] for label in LABELS
    ]
    np.testing.assert_allclose(heights, expected, atol=1e-9)
    np.testing.assert_allclose(heights.sum(0), 1.0, atol=1e-6)
    legend = [text.get_text() for text in emotions.get_legend().get_texts()]
    assert [entry.split(" (")[0] for entry in legend] == LABELS
    pixels = _pixels(figure, tmp_path / "timeline.png")
    assert pixels.shape == (420, 1000, 3)
    assert _drawn(pixels) > 0.4 and pixels.std() > 40


def test_short_clip_is_one_bar_over_its_duration():
    result = _predictions([0.1, 0.6, 0.2, 0.1], ["audio", "video"])
    figure = plot_timeline(result, duration=2.5)
    emotions, band = _axes(figure, "emotions"), _axes(figure, "modalities")
    assert emotions.get_xlim() == pytest.approx((0.0, 2.5))
    assert [len(container) for container in emotions.containers] == [1, 1, 1, 1]
    assert sorted(bar.get_height() for bar in emotions.patches) == pytest.approx([0.1, 0.1, 0.2, 0.6])
    assert [(bar.get_gid(), bar.get_width()) for bar in band.patches] == [("audio+video", pytest.approx(2.5))]
    unknown = plot_timeline(result)  # no duration: one bar without a time axis
    assert _axes(unknown, "modalities").get_xlabel() == "whole input (duration unknown)"


def test_top_k_results_show_the_rest_as_other():
    result = _predictions([0.1, 0.6, 0.2, 0.1], ["audio"])[:2]
    emotions = _axes(plot_timeline(result, duration=1.0), "emotions")
    legend = [text.get_text().split(" (")[0] for text in emotions.get_legend().get_texts()]
    assert legend == ["happy", "neutral", "other"]
    assert sum(bar.get_height() for bar in emotions.patches) == pytest.approx(1.0)


def test_dimensional_timeline_draws_attributes_on_the_model_scale():
    values = [(3.5, 2.0, 4.0), (1.5, 4.5, 3.0), (4.0, 3.0, 2.5)]
    result = {
        "windows": [
            {"start": float(k), "end": k + 1.0, "arousal": a, "valence": v, "dominance": d,
             "modalities": ["audio", "video"] if k == 0 else ["audio"]}
            for k, (a, v, d) in enumerate(values)
        ],  # fmt: skip
        "modalities": ["audio", "video"],
        "arousal": 3.0, "valence": 3.2, "dominance": 3.2,
    }  # fmt: skip
    figure = plot_timeline(result, scale=[1.0, 5.0], labels=["arousal", "valence", "dominance"])
    emotions, band = _axes(figure, "emotions"), _axes(figure, "modalities")
    assert emotions.get_ylim() == pytest.approx((0.88, 5.12))
    assert "scale 1 to 5" in emotions.get_ylabel()
    lines = {line.get_label().split(" (")[0]: line for line in emotions.get_lines()}
    assert list(lines) == ["arousal", "valence", "dominance"]
    np.testing.assert_allclose(lines["valence"].get_ydata(), [2.0, 2.0, 4.5, 4.5, 3.0, 3.0])
    np.testing.assert_allclose(lines["valence"].get_xdata(), [0, 1, 1, 2, 2, 3])
    assert [bar.get_gid() for bar in band.patches] == ["audio+video", "audio", "audio"]
    single = plot_timeline({"arousal": 2.0, "valence": 4.0, "modalities": ["audio"]}, duration=3.0, scale=[1, 5])
    [arousal, _] = _axes(single, "emotions").get_lines()
    np.testing.assert_allclose(arousal.get_xdata(), [0, 3]) and np.testing.assert_allclose(arousal.get_ydata(), [2, 2])


@pytest.mark.parametrize(
    ("spans", "expected"),
    [
        ([(0, 2), (2, 4), (4, 5)], [(0, 2), (2, 4), (4, 5)]),  # back to back: as they are
        ([(0, 0.6), (0.6, 1.2), (0.9, 1.5)], [(0, 0.6), (0.6, 1.05), (1.05, 1.5)]),  # tail window
        ([(0, 2), (1, 3), (2, 4)], [(0, 1.5), (1.5, 2.5), (2.5, 4)]),  # stride shorter than the window
        ([(0, 1), (2, 3)], [(0, 1), (2, 3)]),  # a gap stays empty
    ],
)
def test_window_regions(spans, expected):
    _, windows = timeline_windows({"windows": [{"start": s, "end": e, "x": 1.0} for s, e in spans]})
    lefts, rights = window_regions(windows)
    np.testing.assert_allclose(np.stack([lefts, rights], axis=1), expected)


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ({"error": "no face found", "input": "a.mp4"}, "the input failed .no face found."),
        ("happy", "expected the pipeline's result"),
        ({"windows": []}, "non-empty list of windows"),
        ({"windows": [{"start": 0, "predictions": []}]}, "'start' and 'end'"),
        ([{"label": "happy"}], "'label' and a 'score'"),
        ({"modalities": ["audio"]}, "expected attribute values"),
    ],
)
def test_timeline_rejects_what_is_not_one_result(result, message):
    with pytest.raises(ValueError, match=message):
        plot_timeline(result)


def test_confusion_matrix_names_classes_and_writes_counts_and_rates(tmp_path):
    references = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    predictions = [0, 0, 1, 1, 2, 2, 2, 2, 0, 3]
    matrix = classification_metrics(references, predictions, num_labels=4)["confusion_matrix"]
    figure = plot_confusion_matrix(matrix, LABELS, title="audio")
    [ax] = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert [t.get_text() for t in ax.get_xticklabels()] == LABELS
    assert [t.get_text() for t in ax.get_yticklabels()] == LABELS
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("predicted", "true", "audio")
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert len(cells) == 16
    assert cells[(0, 0)] == "2\n0.67" and cells[(0, 1)] == "1\n0.33" and cells[(2, 2)] == "3\n0.75"
    assert cells[(2, 0)] == "1\n0.25" and cells[(3, 3)] == "1\n1.00" and cells[(3, 0)] == "0\n0.00"
    pixels = _pixels(figure, tmp_path / "cm.png")
    assert pixels.shape[0] >= 360 and pixels.shape[1] >= 420
    assert _drawn(pixels) > 0.15 and pixels.std() > 30
    with pytest.raises(ValueError, match=r"expected \(3, 3\) counts"):
        plot_confusion_matrix(matrix, LABELS[:3])


def test_regression_scatter_has_the_ccc_in_each_title(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.uniform(1, 5, (40, 2))
    predicted = truth + rng.normal(0, [0.3, 1.5], (40, 2))
    predicted[3, 1] = np.nan  # a row the branch did not score: left out of that panel
    figure = plot_regression_scatter(truth, predicted, ["arousal", "valence"])
    kept = ~np.isnan(predicted[:, 1])
    ccc = regression_metrics(truth[kept], predicted[kept], ["arousal", "valence"])
    ccc["ccc_arousal"] = regression_metrics(truth[:, 0], predicted[:, 0])["ccc_0"]
    assert [ax.get_title() for ax in figure.axes] == [
        f"arousal: CCC {ccc['ccc_arousal']:.3f}",
        f"valence: CCC {ccc['ccc_valence']:.3f}",
    ]
    assert [len(ax.collections[0].get_offsets()) for ax in figure.axes] == [40, 39]
    assert figure.axes[0].get_xlabel() == "true" and figure.axes[0].get_ylabel() == "predicted"
    given = plot_regression_scatter(truth[:, 0], predicted[:, 0], ["arousal"], ccc={"arousal": 0.5})
    assert given.axes[0].get_title() == "arousal: CCC 0.500"
    assert _drawn(_pixels(figure, tmp_path / "scatter.png")) > 0.05


def test_training_curves_from_the_log_file(tmp_path):
    records = [
        {"epoch": e, "global_step": 4 * e, "train_loss": {"acoustic": 1.0 / e, "visual": 1.2 / e},
         "eval": {"loss": 1.1 / e, "audio_visual": {"unweighted_accuracy": [0.4, 0.7, 0.6][e - 1]}}}
        for e in (1, 2, 3)
    ]  # fmt: skip
    (tmp_path / "training_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    figure = plot_training_curves(tmp_path / "training_log.jsonl", "audio_visual/unweighted_accuracy")
    losses, metric = _axes(figure, "losses"), _axes(figure, "metric")
    assert [line.get_label() for line in losses.get_lines()] == ["train acoustic", "train visual", "evaluation"]
    np.testing.assert_allclose(losses.get_lines()[2].get_ydata(), [1.1, 0.55, 1.1 / 3])
    np.testing.assert_allclose(metric.get_lines()[0].get_ydata(), [0.4, 0.7, 0.6])
    assert metric.get_legend().get_texts()[0].get_text() == "best: epoch 2 (0.700)"
    assert metric.get_ylabel() == "audio_visual/unweighted_accuracy"
    without_eval = plot_training_curves([{"epoch": 1, "train_loss": {"joint": 0.5}}])
    assert [ax.get_label() for ax in without_eval.axes] == ["losses"]
    assert _drawn(_pixels(figure, tmp_path / "curves.png")) > 0.05
    (tmp_path / "broken.jsonl").write_text('{"epoch": 1}\n{"epo')
    with pytest.raises(ValueError, match="broken.jsonl:2: not a JSON record"):
        plot_training_curves(tmp_path / "broken.jsonl")


def test_write_evaluation_figures_names_a_file_per_branch(tmp_path):
    report = {
        "combined": {"accuracy": 0.5, "confusion_matrix": [[1, 1], [0, 2]]},
        "audio": {"accuracy": 0.25, "confusion_matrix": [[0, 2], [1, 1]]},
        "loss": 0.7,
    }
    written = write_evaluation_figures(report, tmp_path / "figures", ["calm", "angry"])
    assert [path.name for path in written] == ["confusion_matrix_combined.png", "confusion_matrix_audio.png"]
    assert all(Image.open(path).size[0] >= 400 for path in written)
    regression = {"audio": {"ccc_arousal": 0.123}, "visual": {}}
    truth = np.linspace(1, 5, 8)[:, None]
    outputs = {"audio": truth + 0.1, "visual": np.full((8, 1), np.nan)}  # visual scored nothing: no figure
    written = write_evaluation_figures(regression, tmp_path / "r", ["arousal"], outputs, truth)
    assert [path.name for path in written] == ["scatter_audio.png"]


def test_the_package_imports_without_matplotlib_and_says_how_to_install_it(monkeypatch):
    for path in Path(plotting.__file__).parent.glob("*.py"):  # matplotlib is imported inside the functions only
        top_level = [
            node for node in ast.parse(path.read_text()).body if isinstance(node, (ast.Import, ast.ImportFrom))
        ]
        names = [node.module or "" for node in top_level if isinstance(node, ast.ImportFrom)]
        names += [alias.name for node in top_level if isinstance(node, ast.Import) for alias in node.names]
        assert not [name for name in names if name.split(".")[0] == "matplotlib"], path
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'avemotion\[plot\]'"):
        plot_timeline([{"label": "happy", "score": 1.0, "modalities": ["audio"]}])
