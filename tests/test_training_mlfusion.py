"""The multi-level fusion model trains end to end through the trainer and `AvEmotionCollator` (audio, token ids and
IEMOCAP-style word segments), and `examples/train_mlfusion.py` runs on a saved dataset of such rows."""

import copy
import json
import runpy
import sys
from pathlib import Path

import datasets
import numpy as np
import torch
from mlfusion_testing import SAMPLING_RATE, tiny_config

from avemotion import MultiLevelFusionForEmotionRecognition
from avemotion.training import EmotionTrainer, TrainingArguments, train_and_evaluate

NUM_LABELS = 4
LABEL_NAMES = ["neutral", "happy", "angry", "sad"]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_mlfusion.py"


def toy_rows(count: int, seed: int) -> datasets.Dataset:
    """Rows whose label sets the tone frequency and the tokens; every 5th row has no word alignment, every 7th no
    text (both masked by the collator)."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        label = index % NUM_LABELS
        seconds = float(rng.uniform(0.3, 0.5))
        t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
        wave = np.sin(2 * np.pi * (150 + 250 * label) * t) + 0.1 * rng.normal(size=t.shape)
        tokens = [2, *(10 + 10 * label + rng.integers(0, 5, size=int(rng.integers(2, 6)))), 3]
        edges = np.linspace(0.0, seconds, 4)
        words = [{"start": float(a), "end": float(b), "label": "W"} for a, b in zip(edges[:-1], edges[1:])]
        rows.append(
            {
                "id": f"utt{seed}_{index}",
                "input_values": wave.astype(np.float32).tolist(),
                "input_ids": None if index % 7 == 6 else [int(x) for x in tokens],
                "words": None if index % 5 == 4 else words,
                "label": label,
            }
        )
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "input_values": datasets.List(datasets.Value("float32")),
            "input_ids": datasets.List(datasets.Value("int64")),
            "words": datasets.List(
                {
                    "start": datasets.Value("float32"),
                    "end": datasets.Value("float32"),
                    "label": datasets.Value("string"),
                }
            ),
            "label": datasets.ClassLabel(names=LABEL_NAMES),
        }
    )
    return datasets.Dataset.from_list(rows, features=features)


def _config():
    id2label = dict(enumerate(LABEL_NAMES))
    return tiny_config(
        granularities=["frame", "word"], id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )


def test_mlfusion_learns_through_the_trainer_and_collator(tmp_path):
    train, evaluation = toy_rows(48, 0), toy_rows(24, 1)
    torch.manual_seed(0)
    model = MultiLevelFusionForEmotionRecognition(_config())
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), schedule="joint", num_train_epochs=8, per_device_train_batch_size=8,
        learning_rate=3e-3, disable_tqdm=True, seed=0, save_strategy="no",
    )  # fmt: skip
    untrained = EmotionTrainer(copy.deepcopy(model), args).evaluate(evaluation)["combined"]["unweighted_accuracy"]
    result = train_and_evaluate(model, train, evaluation, args)
    report = result["eval"]
    assert report["num_samples"] == 24
    accuracy = report["combined"]["unweighted_accuracy"]
    assert accuracy >= 0.75 and accuracy >= untrained + 0.3, (untrained, accuracy)  # chance: 0.25
    losses = [record["train_loss"]["joint"] for record in result["history"]]
    assert len(losses) == 8 and losses[-1] < losses[0]


def test_train_mlfusion_example_runs_on_a_saved_dataset(tmp_path, monkeypatch):
    corpus = datasets.DatasetDict({"train": toy_rows(16, 0), "validation": toy_rows(8, 1), "test": toy_rows(8, 2)})
    corpus.save_to_disk(str(tmp_path / "data"))
    _config().save_pretrained(str(tmp_path / "config"))
    out = tmp_path / "run"
    argv = ["--dataset", str(tmp_path / "data"), "--config", str(tmp_path / "config" / "config.json"),
            "--output_dir", str(out), "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
            "--disable_tqdm", "--save_strategy", "no"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), *argv])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    test_results = json.loads((out / "test_results.json").read_text())
    # each head scores only the rows the collator gave its inputs (no text / no word alignment -> masked)
    test = corpus["test"]
    has_text = [ids is not None for ids in test["input_ids"]]
    has_words = [words is not None for words in test["words"]]
    expected = {
        "combined": len(test),
        "audio_frame": len(test),
        "text": sum(has_text),
        "audio_word": sum(has_words),
        "early_frame": sum(has_text),
        "early_word": sum(t and w for t, w in zip(has_text, has_words)),
    }
    assert sum(has_text) < len(test) and sum(has_words) < len(test)
    assert {branch: test_results[branch]["num_samples"] for branch in expected} == expected
    assert json.loads((out / "config.json").read_text())["model_type"] == "mlfusion"
