"""A third model (tests/third_model_testing.py) runs through the collator, the trainer, evaluation, saving,
reloading and the pipeline with no change to any file under src/avemotion/: everything comes from its declaration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from third_model_testing import (
    MIN_SAMPLES,
    ToneEmotionConfig,
    ToneEmotionForEmotionRecognition,
    register_tone_model,
    tone,
    tone_dataset,
)

from avemotion import AutoModelForEmotionRecognition
from avemotion.data.collators import AvEmotionCollator
from avemotion.models.declaration import read_declaration
from avemotion.training import EmotionTrainer, TrainingArguments, train_and_evaluate


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tone model trained for a few epochs, with its run directory."""
    register_tone_model()
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tone")
    args = TrainingArguments(
        output_dir=str(directory / "out"), num_train_epochs=4, per_device_train_batch_size=8, learning_rate=3e-2,
        disable_tqdm=True, seed=0, metric_for_best_model="tone/accuracy",
    )  # fmt: skip
    model = ToneEmotionForEmotionRecognition(ToneEmotionConfig())
    result = train_and_evaluate(model, tone_dataset(32, 0), tone_dataset(16, 1), args)
    return model, result, directory / "out"


def test_the_collator_pads_the_declared_keys():
    model = ToneEmotionForEmotionRecognition(ToneEmotionConfig())
    collate = AvEmotionCollator(inputs=read_declaration(model).inputs)
    rows = [{"speech": np.ones(600, "float32"), "label": 0}, {"speech": np.ones(960, "float32"), "label": 1}]
    batch = collate(rows)
    assert set(batch) == {"speech", "speech_mask", "labels"}
    assert batch["speech"].shape == (2, 960) and batch["speech_mask"].sum(1).tolist() == [600, 960]
    # an `audio` column is the declared waveform input of a row without one, resampled to the declared rate
    audio = collate([{"audio": {"array": np.ones(800, "float32"), "sampling_rate": 8000}, "label": 0}])
    assert audio["speech"].shape == (1, 1600)
    # the package's own keys mean nothing to this model
    assert "input_values" not in collate([{"input_values": np.ones(400), "speech": np.ones(400), "label": 0}])


def test_the_trainer_trains_evaluates_and_saves_it(trained):
    model, result, out = trained
    report = result["eval"]
    assert set(report) >= {"tone", "loss", "num_samples"} and report["num_samples"] == 16
    assert report["tone"]["accuracy"] >= 0.9, report["tone"]  # two tones: an easy task
    reloaded = AutoModelForEmotionRecognition.from_pretrained(out)
    assert isinstance(reloaded, ToneEmotionForEmotionRecognition)
    args = TrainingArguments(output_dir=str(out.parent / "again"), disable_tqdm=True)
    again = EmotionTrainer(reloaded, args, eval_dataset=tone_dataset(16, 1)).evaluate()
    assert again["tone"]["accuracy"] == pytest.approx(report["tone"]["accuracy"])


def test_freeze_backbones_goes_through_its_declared_hook(tmp_path):
    model = ToneEmotionForEmotionRecognition(ToneEmotionConfig())
    args = TrainingArguments(output_dir=str(tmp_path), freeze_backbones=True, disable_tqdm=True)
    EmotionTrainer(model, args, train_dataset=tone_dataset(4, 0))
    assert model.config.freeze_frontend is True
    assert not any(p.requires_grad for p in model.frontend.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())


def test_the_pipeline_runs_it_on_a_waveform(trained):
    from transformers import pipeline

    from avemotion.processing import AvEmotionFeatureExtractor, AvEmotionProcessor

    model, _, out = trained
    processor = AvEmotionProcessor(feature_extractor=AvEmotionFeatureExtractor(sampling_rate=16000))
    pipe = pipeline("audio-visual-emotion", model=model.eval(), processor=processor)
    high = pipe({"audio": tone(3000.0, 0.5, 7), "sampling_rate": 16000})
    low = pipe({"audio": tone(300.0, 0.5, 8), "sampling_rate": 16000})
    assert high[0]["label"] == "high" and low[0]["label"] == "low"
    assert high[0]["modalities"] == ["audio"] and {item["label"] for item in high} == {"high", "low"}
    # the shortest audio is the declared minimum (480 samples, 30 ms), not the package models' 400 (25 ms)
    with pytest.raises(ValueError, match=r"450 samples at 16000 Hz is shorter than one model frame \(30 ms\)"):
        pipe({"audio": tone(3000.0, 450 / 16000, 9), "sampling_rate": 16000})
    assert pipe.min_audio_samples == MIN_SAMPLES
