"""examples/recipes/vavl_crema_d.py end to end on a miniature corpus in CREMA-D's layout (the synthetic corpus writer)
with tiny backbones: a tiny HSEmotion-style pickle converted by the recipe, a tiny wav2vec2 cut to fewer layers; a
couple of epochs; pushed to the loopback Hub stand-in."""

import importlib.util
import json
import math
from pathlib import Path

import datasets
import numpy as np
from test_hsemotion_conversion import _save_old_timm_model
from transformers import Wav2Vec2Model
from vavl_testing import tiny_wav2vec2_config

from avemotion import AvEmotionProcessor, VavlForEmotionRecognition
from avemotion.data import write_synthetic_corpus

RECIPE = Path(__file__).resolve().parents[1] / "examples" / "recipes" / "vavl_crema_d.py"
TINY = {"projection_dim": 8, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64,
        "conv_kernel_size": 5, "num_modality_layers": 1, "num_shared_layers": 1, "head_hidden_sizes": [24, 16],
        "max_position_embeddings": 64}  # fmt: skip
METRICS = ("accuracy", "unweighted_accuracy", "macro_f1", "micro_f1")


def _recipe():
    spec = importlib.util.spec_from_file_location("vavl_crema_d", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_runs_end_to_end_and_pushes(tmp_path, monkeypatch, hub):
    corpus = write_synthetic_corpus(tmp_path / "crema-d", num_clips=18, num_speakers=5, seed=3, fps=6,
                                    image_size=32, min_duration=0.6, max_duration=0.9)  # fmt: skip
    _save_old_timm_model(tmp_path / "enet_tiny.pt", monkeypatch, num_classes=0)
    Wav2Vec2Model(tiny_wav2vec2_config(num_hidden_layers=3)).save_pretrained(tmp_path / "w2v")
    out = tmp_path / "run"

    summary = _recipe().main([
        "--data_dir", str(corpus), "--labels_csv", str(corpus / "labels.csv"), "--output_dir", str(out),
        "--face_checkpoint", str(tmp_path / "enet_tiny.pt"), "--image_size", "32",
        "--audio_backbone", str(tmp_path / "w2v"), "--audio_num_layers", "2", "--face_detector", "none",
        "--config_overrides", json.dumps(TINY), "--num_train_epochs", "2", "--per_device_train_batch_size", "8",
        "--learning_rate", "1e-3", "--push_to_hub", "org/vavl-crema-d-mini",
        "--hub_id", f"{tmp_path / 'w2v'}=facebook/wav2vec2-large-robust",
    ])  # fmt: skip

    # every step's output exists
    assert (out / "face-model" / "model.safetensors").is_file()
    assert {p.name for p in (out / "features").iterdir()} >= {"train", "validation", "test"}
    assert {p.name for p in (out / "test-views").iterdir()} >= {"test_audio_only", "test_video_only"}
    for name in ("audio_visual", "audio_only", "video_only"):
        assert (out / "eval" / f"{name}.json").is_file()
    assert json.loads((out / "results.json").read_text()) == summary

    # per-modality metrics are finite numbers in [0, 1]
    for name in ("audio_visual", "audio_only", "video_only", "audio_heads_on_paired_clips"):
        for metric in METRICS:
            value = summary[name][metric]
            assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0, (name, metric)
        assert summary[name]["num_samples"] >= 1

    # the trained model keeps both backbones, the paper's layer cut and VAVL's training statistics
    model = VavlForEmotionRecognition.from_pretrained(out / "model")
    config = model.config
    assert config.audio_backbone_config.num_hidden_layers == 2 and config.normalize_visual_features
    assert config.visual_backbone_name == str(out / "face-model") and config.visual_backbone_config.image_size == 32
    train_frames = np.concatenate([np.asarray(row, dtype=np.float64) for row in
                                   datasets.load_from_disk(str(out / "features" / "train"))["visual_features"]
                                   if row is not None])  # fmt: skip
    np.testing.assert_allclose(model.vavl.visual_features_mean.numpy(), train_frames.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.vavl.visual_features_std.numpy(), train_frames.std(0), rtol=1e-3, atol=1e-6)
    processor = AvEmotionProcessor.from_pretrained(out / "model")
    assert dict(processor.image_processor.size) == {"height": 32, "width": 32}
    assert processor.feature_extractor.normalization == "global" and processor.feature_extractor.global_std > 0
    args = json.loads((out / "model" / "training_args.json").read_text())
    assert (args["learning_rate"], args["weight_decay"], args["adam_beta1"], args["num_train_epochs"]) == (
        1e-3, 5e-7, 0.95, 2)  # fmt: skip
    assert args["shuffle"] is False and args["optimizer"] == "adam"

    # pushed: model, processor and card; no local path in the uploaded configs
    files = hub.store["org/vavl-crema-d-mini"]
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    pushed = json.loads(files["config.json"])
    assert pushed["audio_backbone_name"] == "facebook/wav2vec2-large-robust"
    assert pushed["visual_backbone_name"] == "face-model" and str(tmp_path) not in files["config.json"].decode()


def test_recipe_runs_unchanged_on_two_processes(tmp_path, monkeypatch):
    """`accelerate launch --num_processes 2 examples/recipes/vavl_crema_d.py ...`: the processes share the feature
    caching (one cache-features output), the training (as the trainer's own multi-process test) and evaluation."""
    from distributed_testing import launch

    corpus = write_synthetic_corpus(tmp_path / "crema-d", num_clips=12, num_speakers=4, seed=4, fps=6,
                                    image_size=32, min_duration=0.6, max_duration=0.9)  # fmt: skip
    _save_old_timm_model(tmp_path / "enet_tiny.pt", monkeypatch, num_classes=0)
    Wav2Vec2Model(tiny_wav2vec2_config(num_hidden_layers=3)).save_pretrained(tmp_path / "w2v")
    out = tmp_path / "run"
    done = launch(2, str(RECIPE), "--data_dir", str(corpus), "--labels_csv", str(corpus / "labels.csv"),
                  "--output_dir", str(out), "--face_checkpoint", str(tmp_path / "enet_tiny.pt"), "--image_size", "32",
                  "--audio_backbone", str(tmp_path / "w2v"), "--audio_num_layers", "2", "--face_detector", "none",
                  "--config_overrides", json.dumps(TINY), "--num_train_epochs", "1",
                  "--per_device_train_batch_size", "4", tmp_path=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "results.json").read_text())
    assert summary["audio_visual"]["num_samples"] >= 1
    assert json.loads((out / "model" / "eval_results.json").read_text())["num_processes"] == 2
    assert (out / "features" / "cache_features.json").is_file() and not (out / "features" / "chunks").exists()
