"""The trainer under faults: an occupied output_dir, NaN losses, damaged checkpoints, bad labels, empty evaluation
sets, truncated weights, and model directories that the pipeline can load (processor + model card)."""

import json
import logging
import math
import re

import datasets
import numpy as np
import pytest
import soundfile
import torch
from training_testing import Killed, KilledTrainer, toy_dataset
from vavl_testing import tiny_efficientnet_config, tiny_vavl_config, tiny_wav2vec2_config

from avemotion import AvEmotionFeatureExtractor, AvEmotionImageProcessor, AvEmotionProcessor, VavlForEmotionRecognition
from avemotion.cli import main as cli_main
from avemotion.training import EmotionTrainer, TrainingArguments
from avemotion.training.run_files import load_model
from avemotion.training.trainer import NonFiniteLossError, load_weights


def _args(path, **overrides):
    kwargs = dict(output_dir=str(path), num_train_epochs=1, per_device_train_batch_size=8, learning_rate=3e-3,
                  disable_tqdm=True, seed=0)  # fmt: skip
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def _model(seed=0):
    torch.manual_seed(seed)
    return VavlForEmotionRecognition(tiny_vavl_config(num_modality_layers=1))


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _checkpoints(out):
    return sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("."))


# ---------------------------------------------------------------------------------------------- item 8: output_dir


def test_existing_output_dir_is_refused_unless_overwritten_or_resumed(tmp_path):
    out, train = tmp_path / "out", toy_dataset(8, 0)  # 2 updates per epoch
    EmotionTrainer(_model(), _args(out, num_train_epochs=2, save_total_limit=None, per_device_train_batch_size=4),
                   train).train()  # fmt: skip
    assert _checkpoints(out) == ["checkpoint-0000002", "checkpoint-0000004"]

    with pytest.raises(ValueError, match=r"already holds a training run \(checkpoints, .*--overwrite_output_dir"):
        EmotionTrainer(_model(1), _args(out, save_total_limit=None, per_device_train_batch_size=4), train).train()
    assert len((out / "training_log.jsonl").read_text().splitlines()) == 2  # untouched

    # overwrite: the old run's checkpoints and log are gone, not mixed with the new run's
    options = dict(save_total_limit=None, per_device_train_batch_size=4)
    EmotionTrainer(_model(1), _args(out, overwrite_output_dir=True, **options), train).train()
    assert _checkpoints(out) == ["checkpoint-0000002"]
    assert [json.loads(line)["epoch"] for line in (out / "training_log.jsonl").read_text().splitlines()] == [1]

    # resume continues the run: one log line per epoch, from the checkpoint
    resumed = EmotionTrainer(
        _model(2), _args(out, num_train_epochs=2, resume_from_checkpoint="last", **options), train
    )
    resumed.train()
    assert resumed.state.global_step == 4
    assert [json.loads(line)["epoch"] for line in (out / "training_log.jsonl").read_text().splitlines()] == [1, 2]


def test_cli_refuses_an_existing_output_dir(tmp_path, capsys):
    datasets.DatasetDict({"train": toy_dataset(8, 0)}).save_to_disk(str(tmp_path / "data"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "training_log.jsonl").write_text('{"epoch": 1}\n')
    command = ["train", "--dataset", str(tmp_path / "data"), "--output_dir", str(out), "--eval_split", "none",
               "--config_overrides", json.dumps({"hidden_size": 16, "num_attention_heads": 2})]  # fmt: skip
    assert cli_main(command) == 2
    assert "already holds a training run (training_log.jsonl)" in capsys.readouterr().err


def test_staging_leftovers_of_an_interrupted_run_are_a_previous_run_and_deleted_on_overwrite(tmp_path):
    out, train = tmp_path / "out", toy_dataset(8, 0)
    leftovers = [".saving.tmp", ".best_model.tmp", ".best_model.old"]  # save_model's and best_model's staging
    for name in leftovers:
        (out / name).mkdir(parents=True)
        (out / name / "model.safetensors").write_bytes(b"partial")
    with pytest.raises(ValueError, match=r"already holds a training run \(\.saving\.tmp, \.best_model\.tmp, "):
        EmotionTrainer(_model(), _args(out), train).train()

    class StopsAfterClaim(EmotionTrainer):
        def _claim_output_dir(self):
            super()._claim_output_dir()
            raise Killed  # look before the run's own saves, which reuse these names

    with pytest.raises(Killed):
        StopsAfterClaim(_model(), _args(out, overwrite_output_dir=True), train).train()
    assert sorted(path.name for path in out.iterdir()) == []


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    from avemotion.training import files as files_module

    target = tmp_path / "eval_results.json"
    target.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        files_module.atomic_write_text(target, "not encodable: \udcff")

    def disk_full(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files_module.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        files_module.atomic_write_text(target, "new\n")
    assert [path.name for path in tmp_path.iterdir()] == ["eval_results.json"]  # no .eval_results.json.tmp-<pid>
    assert target.read_text() == "old\n"


# ---------------------------------------------------------------------------------------------- item 9: NaN losses


def _with_nan(data, rows, column="audio_features"):
    def poison(row, index):
        if index in rows:
            values = np.asarray(row[column], dtype=np.float32)
            values[0, 0] = np.nan
            row[column] = values.tolist()
        return row

    return data.map(poison, with_indices=True, features=data.features)


def test_a_nan_row_is_skipped_and_counted(tmp_path, caplog):
    """One NaN feature row: its batch's acoustic and fusion updates are skipped (once per epoch, counted), and the
    parameters and BatchNorm statistics stay finite; the model still learns."""
    train = _with_nan(toy_dataset(24, 0), {5})
    model = _model()
    trainer = EmotionTrainer(model, _args(tmp_path / "out", num_train_epochs=2), train, toy_dataset(9, 1))
    with caplog.at_level(logging.WARNING, logger="avemotion.training.trainer"):
        report = trainer.train()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert torch.isfinite(tensor).all(), name
    assert trainer.state.nonfinite_skipped_batches == 2
    assert [record["nonfinite_skipped_batches"] for record in trainer.state.log_history] == [1, 1]
    assert all(math.isfinite(v) for record in trainer.state.log_history for v in record["train_loss"].values())
    last = sorted((tmp_path / "out" / "checkpoints").iterdir())[-1]
    assert json.loads((last / "trainer_state.json").read_text())["nonfinite_skipped_batches"] == 2
    warnings = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert len(warnings) == 2, warnings
    for warning in warnings:  # the steps that saw the NaN audio row, and the rows of that step's batch
        assert "step(s) ['acoustic', 'fusion']" in warning, warning
        assert 5 in json.loads(re.search(r"dataset rows (\[[\d, ]*\])", warning).group(1)), warning
    assert math.isfinite(report["combined"]["accuracy"])


def test_persistent_nan_losses_stop_with_the_rows(tmp_path):
    train = _with_nan(toy_dataset(16, 0), set(range(16)), "visual_features")
    args = _args(tmp_path / "out", max_consecutive_nonfinite_batches=2, shuffle=False)
    with pytest.raises(NonFiniteLossError, match=r"in 2 batch\(es\) in a row.*epoch 1, update 2, batch 2/2.*"
                       r"'visual'.*dataset rows \[8, 9, 10, 11, 12, 13, 14, 15\]"):  # fmt: skip
        EmotionTrainer(_model(), args, train).train()


def test_a_diverging_learning_rate_stops_training(tmp_path):
    args = _args(tmp_path / "out", num_train_epochs=5, optimizer="sgd", learning_rate=1e30, schedule="joint",
                 max_consecutive_nonfinite_batches=3)  # fmt: skip
    model = _model()
    with pytest.raises(NonFiniteLossError, match="lower the learning rate"):
        EmotionTrainer(model, args, toy_dataset(16, 0)).train()


# ---------------------------------------------------------------------------------------------- item 10: checkpoints

RESUME_OPTIONS = dict(save_strategy="steps", save_steps=2, save_total_limit=None, per_device_train_batch_size=2)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Final parameters of an uninterrupted run (6 updates)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    model = _model()
    EmotionTrainer(model, _args(out, **RESUME_OPTIONS), toy_dataset(12, 0, unpaired=0.2)).train()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    "damaged", ["model.safetensors", "trainer_state.json", "optimizer.safetensors", "optimizer.json", "scheduler.json",
                "rng_state_0.json"],
)  # fmt: skip
def test_resume_skips_a_truncated_checkpoint(tmp_path, uninterrupted, damaged, caplog):
    """The newest checkpoint (update 4) is truncated: resuming warns naming it, restarts from update 2 and ends with
    the parameters of the uninterrupted run."""
    out, train = tmp_path / "out", toy_dataset(12, 0, unpaired=0.2)
    with pytest.raises(Killed):
        KilledTrainer(_model(), _args(out, **RESUME_OPTIONS), train).train()
    assert _checkpoints(out) == ["checkpoint-0000002", "checkpoint-0000004"]
    newest = out / "checkpoints" / "checkpoint-0000004"
    _truncate(newest / damaged)

    # an explicit checkpoint: one error naming the file
    with pytest.raises(ValueError, match=f"checkpoint-0000004.*{damaged}"):
        EmotionTrainer(_model(5), _args(out, resume_from_checkpoint=str(newest), **RESUME_OPTIONS), train).train()

    model = _model(7)  # another initialisation: everything comes from the checkpoint
    trainer = EmotionTrainer(model, _args(out, resume_from_checkpoint="last", **RESUME_OPTIONS), train)
    with caplog.at_level(logging.WARNING, logger="avemotion.training.trainer"):
        trainer.train()
    assert any("checkpoint-0000004" in r.getMessage() and damaged in r.getMessage() for r in caplog.records)
    assert trainer.state.global_step == 6
    # the fall-back is recorded in the state, so in every later checkpoint's trainer_state.json
    (record,) = trainer.state.resumed_from
    assert record["checkpoint"] == "checkpoint-0000002"
    assert [s["checkpoint"] for s in record["skipped"]] == ["checkpoint-0000004"]
    assert damaged in record["skipped"][0]["problem"]
    assert json.loads((newest / "trainer_state.json").read_text())["resumed_from"] == [record]
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter, uninterrupted[name], rtol=0, atol=1e-6, msg=name)
    # the damaged checkpoint was replaced by a complete one
    assert json.loads((newest / "trainer_state.json").read_text())["global_step"] == 4
    VavlForEmotionRecognition.from_pretrained(newest)


def test_an_interrupted_save_leaves_the_previous_checkpoints(tmp_path):
    """Killed while writing checkpoint 4: no partial `checkpoint-0000004` exists, and --resume uses checkpoint 2."""
    out, train = tmp_path / "out", toy_dataset(12, 0)

    class DiesWhileSaving(EmotionTrainer):
        def _write_model_dir(self, directory, state_dict, metrics):
            super()._write_model_dir(directory, state_dict, metrics)
            if self.state.global_step == 4 and "checkpoint" in directory.name:
                _truncate(directory / "model.safetensors")
                raise Killed

    with pytest.raises(Killed):
        DiesWhileSaving(_model(), _args(out, **RESUME_OPTIONS), train).train()
    assert _checkpoints(out) == ["checkpoint-0000002"]
    trainer = EmotionTrainer(_model(3), _args(out, resume_from_checkpoint="last", **RESUME_OPTIONS), train)
    trainer.train()
    assert trainer.state.global_step == 6


def test_truncated_weights_name_the_file(tmp_path, capsys):
    model_dir = tmp_path / "model"
    _model().save_pretrained(model_dir)
    _truncate(model_dir / "model.safetensors")
    with pytest.raises(ValueError, match="model/model.safetensors"):
        load_model(str(model_dir))
    with pytest.raises(ValueError, match="model/model.safetensors: cannot be read"):
        load_weights(_model(), model_dir)
    datasets.DatasetDict({"train": toy_dataset(8, 0)}).save_to_disk(str(tmp_path / "data"))
    command = ["train", "--dataset", str(tmp_path / "data"), "--model_name_or_path", str(model_dir),
               "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert cli_main(command) == 2
    error = capsys.readouterr().err
    assert "model.safetensors" in error and "Traceback" not in error
    assert cli_main(["evaluate", "--model", str(tmp_path / "missing"), "--dataset", str(tmp_path / "data")]) == 2


# ---------------------------------------------------------------------------------------------- item 14: bad data


def test_labels_out_of_range_name_the_row(tmp_path):
    data = toy_dataset(12, 0).cast_column("label", datasets.Value("int64"))
    bad = data.map(lambda row, i: {"label": 3 if i == 7 else row["label"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"dataset row 7: label 3 is out of range; expected a class index in 0\.\.2"):
        EmotionTrainer(_model(), _args(tmp_path / "a"), bad).train()
    negative = data.map(lambda row, i: {"label": -1 if i == 2 else row["label"]}, with_indices=True)
    with pytest.raises(ValueError, match="dataset row 2: label -1 is out of range"):
        EmotionTrainer(_model(), _args(tmp_path / "b"), data, negative).evaluate()

    config = tiny_vavl_config(problem_type="regression", id2label={0: "arousal"}, label2id={"arousal": 0})
    targets = data.map(lambda row, i: {"arousal": math.nan if i == 4 else 1.0}, with_indices=True)
    with pytest.raises(ValueError, match=r"dataset row 4: label \[nan\] is not finite"):
        args = _args(tmp_path / "c", label_column=["arousal"])
        EmotionTrainer(VavlForEmotionRecognition(config), args, targets).train()


def test_an_empty_evaluation_set_is_a_clear_error(tmp_path):
    empty = toy_dataset(3, 1).select([])
    with pytest.raises(ValueError, match="eval_dataset is empty"):
        EmotionTrainer(_model(), _args(tmp_path / "out"), toy_dataset(8, 0), empty).train()
    with pytest.raises(ValueError, match="dataset to evaluate is empty"):
        EmotionTrainer(_model(), _args(tmp_path / "out")).evaluate(empty)
    assert not (tmp_path / "out").exists()  # refused before anything was written


# ---------------------------------------------------------------------------------------------- item 12: usable output


def test_trained_model_directories_work_with_pipeline_and_predict(tmp_path, capsys):
    """`avemotion train --model_name_or_path DIR` (DIR with a processor): the output, best_model and every checkpoint
    hold the processor and a model card; the pipeline and `avemotion predict` use the output."""
    from transformers import pipeline

    torch.manual_seed(0)
    config = tiny_vavl_config(audio_backbone_config=tiny_wav2vec2_config(),
                              visual_backbone_config=tiny_efficientnet_config(), visual_feature_dim=128,
                              window_seconds=1.0)  # fmt: skip
    source = tmp_path / "source"
    VavlForEmotionRecognition(config).save_pretrained(source)
    processor = AvEmotionProcessor(AvEmotionFeatureExtractor(sampling_rate=16000, normalization="utterance"),
                                   AvEmotionImageProcessor(size={"height": 48, "width": 48}))  # fmt: skip
    processor.save_pretrained(source)
    audio_only = lambda n, seed: toy_dataset(n, seed).map(lambda row: {"visual_features": None})  # noqa: E731
    datasets.DatasetDict({"train": audio_only(16, 0), "validation": audio_only(6, 1)}).save_to_disk(
        str(tmp_path / "data")
    )
    out = tmp_path / "out"
    command = ["train", "--dataset", str(tmp_path / "data"), "--model_name_or_path", str(source), "--output_dir",
               str(out), "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--disable_tqdm"]  # fmt: skip
    assert cli_main(command) == 0
    checkpoint = next((out / "checkpoints").iterdir())
    for directory in (out, out / "best_model", checkpoint):
        assert (directory / "processor_config.json").is_file(), directory
        card = (directory / "README.md").read_text()
        assert "vavl" in card and "unweighted" in card.lower() and str(tmp_path) not in card, directory

    waveform = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    soundfile.write(tmp_path / "speech.wav", waveform, 16000)
    for directory in (out, checkpoint):
        result = pipeline("audio-visual-emotion", model=str(directory))(str(tmp_path / "speech.wav"))
        assert result[0]["modalities"] == ["audio"]
        assert {p["label"] for p in result} == {"angry", "happy", "neutral"}
    capsys.readouterr()
    assert cli_main(["predict", "--model", str(out), str(tmp_path / "speech.wav")]) == 0
    printed = capsys.readouterr().out
    assert "speech.wav" in printed and any(label in printed for label in ("angry", "happy", "neutral"))
