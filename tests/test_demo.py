"""The synthetic-corpus demo (make demo) at a reduced size: fusion must learn and beat each single modality."""

import importlib.util
from pathlib import Path

import pytest


def test_demo_fusion_beats_each_modality(tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "examples" / "demo_synthetic.py"
    spec = importlib.util.spec_from_file_location("demo_synthetic", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    summary = demo.main(["--output-dir", str(tmp_path), "--num-clips", "120", "--epochs", "8", "--seed", "1"])
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
