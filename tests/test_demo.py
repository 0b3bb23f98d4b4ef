"""The synthetic-corpus demo (make demo) at a reduced size: fusion must learn and beat each single modality."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def test_demo_fusion_beats_each_modality(tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "examples" / "demo_synthetic.py"
    spec = importlib.util.spec_from_file_location("demo_synthetic", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    # the app screenshot (headless Chromium) is tested in test_demo_app.py
    args = ["--output-dir", str(tmp_path), "--num-clips", "120", "--epochs", "8", "--seed", "1", "--no-screenshot"]
    summary = demo.main(args)
    test = summary["test"]
    fusion, audio, visual = (test[b]["accuracy"] for b in ("audio_visual", "audio", "visual"))
    assert fusion >= 0.6, summary  # chance is 1/6; the corpus allows 1.0
    assert fusion > audio and fusion > visual and summary["fusion_beats_each_modality"]
    # single modalities cannot pass their ceilings (unweighted accuracy: audio 1/2, video 1/3)
    assert test["audio"]["unweighted_accuracy"] <= 0.5 + 0.1 and test["visual"]["unweighted_accuracy"] <= 1 / 3 + 0.1
    out = capsys.readouterr().out
    assert "fusion beats each single modality: yes" in out and "pipeline on a held-out clip" in out
    assert (tmp_path / "demo_metrics.json").is_file()
    assert summary["ceilings"]["audio-visual"] == pytest.approx(1.0)
    # the model carries its features' standardisation for the app; the timeline of six 2 s turns is a real picture
    features = json.loads((tmp_path / "vavl" / "best" / "synthetic_features.json").read_text())
    assert {len(features["standardize"][name]["mean"]) for name in ("audio_features", "visual_features")} == {32, 256}
    if importlib.util.find_spec("gradio") and importlib.util.find_spec("matplotlib"):
        assert "app on a 12 s clip of six turns" in out and summary["pictures"]["timeline"].endswith("timeline.png")
        with Image.open(tmp_path / "timeline.png") as image:
            assert image.format == "PNG" and image.size == (1000, 420)
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
