"""Resuming is data-only and exact, or it fails loudly: a checkpoint holding a pickle (planted, or accelerate's own
from an earlier release) is refused naming the file and nothing of it runs; a random, optimizer, scheduler or
trainer state that cannot be restored stops an explicit resume naming the file, and `"last"` falls back to the
checkpoint before it only with a warning and a record in `trainer_state.json`; a run killed with SIGKILL at any
point (during a step, while writing a checkpoint, while deleting an old one) resumes to the uninterrupted run's
parameters."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import shutil
import signal

import pytest
import torch
from training_testing import Killed, KilledTrainer, toy_dataset
from vavl_testing import tiny_vavl_config

from avemotion import VavlForEmotionRecognition
from avemotion.cli import main as cli_main
from avemotion.training import EmotionTrainer, TrainingArguments, checkpointing, resume_state
from avemotion.training.resume_state import CheckpointError, UnsafeCheckpointError, read_state, write_state

OPTIONS = dict(save_strategy="steps", save_steps=2, save_total_limit=None, per_device_train_batch_size=2)


def _args(path, **overrides):
    kwargs = dict(output_dir=str(path), num_train_epochs=1, learning_rate=3e-3, disable_tqdm=True, seed=0, **OPTIONS)
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def _model(seed=0):
    torch.manual_seed(seed)
    return VavlForEmotionRecognition(tiny_vavl_config(num_modality_layers=1))


class _Payload:
    """Unpickling it writes the marker file (what `os.system` in a real attack would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A run stopped after update 5 of 6: checkpoints 2 and 4 (each a complete, valid checkpoint)."""
    out = tmp_path_factory.mktemp("killed") / "out"
    with pytest.raises(Killed):
        KilledTrainer(_model(), _args(out), toy_dataset(12, 0, unpaired=0.2)).train()
    return out


@pytest.fixture
def run_dir(killed_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(killed_run, out)
    return out


def _resume(out, checkpoint="last", **overrides):
    trainer = EmotionTrainer(_model(9), _args(out, resume_from_checkpoint=checkpoint, **overrides),
                             toy_dataset(12, 0, unpaired=0.2))  # fmt: skip
    trainer.train()
    return trainer


# ---------------------------------------------------------------------------------------------- planted pickles


@pytest.mark.parametrize(
    "name",
    ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "sampler.bin", "scaler.pt",
     "scheduler.json", "rng_state_0.json", "processor_state.dat"],
)  # fmt: skip
@pytest.mark.parametrize("explicit", [False, True])
def test_a_planted_pickle_never_runs_and_the_resume_is_refused_naming_it(run_dir, tmp_path, capsys, name, explicit):
    """accelerate reads `custom_checkpoint_0.pkl` with weights_only=False: it used to run the payload. Now no file
    of a checkpoint is unpickled; a pickle (by name or by its first bytes, whatever it is called) refuses the
    checkpoint, and `"last"` does not fall back to the older one (a tampered run directory is not a damaged one)."""
    marker = tmp_path / "marker"
    newest = run_dir / "checkpoints" / "checkpoint-0000004"
    if name.endswith(".pt"):  # torch's zip archive holding the pickle
        torch.save({"state": _Payload(marker)}, newest / name)
    else:
        (newest / name).write_bytes(pickle.dumps(_Payload(marker)))
    checkpoint = str(newest) if explicit else "last"
    with pytest.raises(UnsafeCheckpointError, match=rf"checkpoint-0000004/{name}: .*refused"):
        _resume(run_dir, checkpoint)
    assert not marker.exists()
    assert "resumed from" not in capsys.readouterr().out


def test_train_resume_command_refuses_a_planted_checkpoint(tmp_path, capsys):
    """`avemotion train --resume` on a run directory whose newest checkpoint holds accelerate's
    `custom_checkpoint_0.pkl` with a payload: exit status 2, the file named, nothing ran."""
    import datasets

    corpus = datasets.DatasetDict({"train": toy_dataset(12, 0), "validation": toy_dataset(6, 1)})
    corpus.save_to_disk(str(tmp_path / "data"))
    overrides = {k: v for k, v in tiny_vavl_config().to_dict().items() if k in ("projection_dim", "hidden_size",
                 "num_attention_heads", "intermediate_size", "conv_kernel_size", "num_modality_layers",
                 "num_shared_layers", "head_hidden_sizes")}  # fmt: skip
    out = tmp_path / "run"
    argv = ["train", "--dataset", str(tmp_path / "data"), "--output_dir", str(out), "--num_train_epochs", "1",
            "--per_device_train_batch_size", "4", "--disable_tqdm", "--save_strategy", "epoch",
            "--config_overrides", json.dumps(overrides)]  # fmt: skip
    assert cli_main(argv) == 0
    (checkpoint,) = (out / "checkpoints").iterdir()
    marker = tmp_path / "marker"
    torch.save(_Payload(marker), checkpoint / "custom_checkpoint_0.pkl")
    capsys.readouterr()
    assert cli_main([*argv, "--num_train_epochs", "2", "--resume"]) == 2
    error = capsys.readouterr().err
    assert "custom_checkpoint_0.pkl" in error and "refused" in error and "resumed from" not in error
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- states that cannot be restored


def _edit_state(directory, name, edit):
    state = read_state(directory, name)
    write_state(directory, name, edit(state))


def _bad_python_random_state(state):
    return {**state, "python": (3, (1, 2, 3), None)}


def _bad_numpy_random_state(state):
    return {**state, "numpy": {"bit_generator": "PCG64", "state": {}}}


def _optimizer_of_other_shapes(state):
    entry = next(iter(state["state"].values()))
    entry["exp_avg"] = torch.zeros(3, 3, 3)
    return state


def _optimizer_with_nan(state):
    entry = next(iter(state["state"].values()))
    entry["exp_avg"] = torch.full_like(entry["exp_avg"], float("nan"))
    return state


def _optimizer_with_a_number_for_a_tensor(state):
    next(iter(state["state"].values()))["exp_avg"] = 0.5
    return state


def _optimizer_with_a_huge_step(state):
    next(iter(state["state"].values()))["step"] = 10**12
    return state


def _scheduler_with_foreign_keys(state):
    return {**state, "optimizer": "x"}


def _scheduler_missing_a_key(state):
    return {k: v for k, v in state.items() if k != "last_epoch"}


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("rng_state_0", _bad_python_random_state, "not a valid random state"),
        ("rng_state_0", _bad_numpy_random_state, "not a valid random state"),
        ("rng_state_0", lambda s: {**s, "torch": torch.zeros(3, dtype=torch.uint8)}, "torch"),
        ("rng_state_0", lambda s: [1, 2], "not a random state"),
        ("optimizer", _optimizer_of_other_shapes, "has shape"),
        ("optimizer", lambda s: {**s, "param_groups": s["param_groups"] * 2}, "parameter groups expected"),
        ("scheduler", _scheduler_with_foreign_keys, "expected the keys"),
        ("scheduler", _scheduler_missing_a_key, "expected the keys"),
        ("scheduler", lambda s: {**s, "last_epoch": "4"}, "last_epoch: expected a int"),
        ("scheduler", lambda s: {**s, "_last_lr": [-1.0] * len(s["_last_lr"])}, "not a learning rate"),
        ("optimizer", _optimizer_with_nan, "NaN or infinite"),
        ("optimizer", _optimizer_with_a_number_for_a_tensor, "exp_avg = 0.5: expected a tensor"),
        ("optimizer", _optimizer_with_a_huge_step, r"step = 1e\+12: expected 0 to 18"),
        ("optimizer", lambda s: {**s, "param_groups": [{**g, "lr": 1e30} for g in s["param_groups"]]}, "lr = 1e"),
    ],
)  # fmt: skip
def test_a_state_that_cannot_be_restored_stops_the_resume_naming_the_file(
    run_dir, capsys, caplog, name, edit, message
):
    """accelerate logged an unreadable random state at INFO and reported the run resumed; here an explicit resume
    fails naming the file (and is never reported as resumed), and `"last"` falls back to checkpoint 2 with a
    warning and a record in the state."""
    newest = run_dir / "checkpoints" / "checkpoint-0000004"
    _edit_state(newest, name, edit)
    with pytest.raises(CheckpointError, match=rf"checkpoint-0000004/{name}.json.*{message}"):
        _resume(run_dir, str(newest))
    assert "resumed from" not in capsys.readouterr().out
    trainer = _resume(run_dir, "last")
    (record,) = trainer.state.resumed_from
    assert record["checkpoint"] == "checkpoint-0000002"
    assert (
        record["skipped"][0]["checkpoint"] == "checkpoint-0000004"
        and f"{name}.json" in record["skipped"][0]["problem"]
    )
    assert any("checkpoint-0000004" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


@pytest.mark.parametrize("missing", ["rng_state_0.json", "optimizer.json", "scheduler.json", "optimizer.safetensors"])
def test_a_missing_piece_is_named(run_dir, missing):
    newest = run_dir / "checkpoints" / "checkpoint-0000004"
    (newest / missing).unlink()
    with pytest.raises(CheckpointError, match=missing.split(".")[0]):
        _resume(run_dir, str(newest))


def test_a_checkpoint_of_more_processes_is_refused(run_dir):
    newest = run_dir / "checkpoints" / "checkpoint-0000004"
    shutil.copy(newest / "rng_state_0.json", newest / "rng_state_1.json")
    with pytest.raises(CheckpointError, match=r"written by 2 process\(es\).*this run has 1"):
        _resume(run_dir, str(newest))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("step_in_epoch", 10**9),
        ("global_step", -1),
        ("epoch", "0"),
        ("loss_sums", {"x": [0, 0]}),
        ("best_metric", "a"),
        ("global_step", 10**18),
        ("consecutive_nonfinite_batches", 1e12),
        ("best_epoch", "x"),
        ("best_report", "x"),
        ("log_history", [5]),
        ("log_history", [{"epoch": "x", "eval": 5}]),
    ],
)
def test_a_trainer_state_out_of_range_is_named(run_dir, field, value):
    newest = run_dir / "checkpoints" / "checkpoint-0000004"
    state = json.loads((newest / "trainer_state.json").read_text())
    state[field] = value
    (newest / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=rf"trainer_state.json: {field}"):
        _resume(run_dir, str(newest))


def test_state_files_are_plain_json_and_safetensors(run_dir):
    """What a checkpoint holds: the model directory (its remote code copies aside: only trust_remote_code runs
    them), trainer_state.json and the resume states, nothing pickled."""
    newest = run_dir / "checkpoints" / "checkpoint-0000004"
    names = {p.name for p in newest.iterdir() if p.suffix != ".py"}
    assert names == {
        "config.json",
        "model.safetensors",
        "README.md",
        "trainer_state.json",
        "optimizer.json",
        "optimizer.safetensors",
        "scheduler.json",
        "rng_state_0.json",
        "rng_state_0.safetensors",
    }
    for path in newest.glob("*.json"):
        json.loads(path.read_text())
    resume_state.refuse_pickles(newest)


def test_the_codec_round_trips_and_refuses_what_it_does_not_write(tmp_path):
    state = {"a": (1, 2.5, None), 3: [torch.arange(4.0)], "s": "x", "__x": True}
    write_state(tmp_path, "s", state)
    loaded = read_state(tmp_path, "s")
    assert loaded["a"] == (1, 2.5, None) and loaded["s"] == "x" and loaded["__x"] is True
    assert torch.equal(loaded[3][0], torch.arange(4.0))
    (tmp_path / "bad.json").write_text(json.dumps({"format": 1, "state": {"__tensor__": "t9"}}))
    with pytest.raises(CheckpointError, match="bad.json: refers to tensor 't9'"):
        read_state(tmp_path, "bad")
    (tmp_path / "bad.json").write_text(json.dumps({"format": 1, "state": {"__ndarray__": "|O", "values": [1]}}))
    with pytest.raises(CheckpointError, match="array of dtype"):
        read_state(tmp_path, "bad")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a checkpoint state"):
        read_state(tmp_path, "bad")


# ---------------------------------------------------------------------------------------------- kill -9


@pytest.fixture(scope="module")
def one_thread():
    """Every run of a comparison on one thread (the forked child must: see `_train_and_get_killed`), so that the
    parameters compare to float rounding of the same reduction order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("reference") / "out"
    model = _model()
    EmotionTrainer(model, _args(out, save_total_limit=1), toy_dataset(12, 0, unpaired=0.2)).train()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_during_a_step(monkeypatch):
    """SIGKILL at the 11th parameter update: inside update 4's batch, between its steps (the visual step applied,
    the others not)."""
    calls = {"n": 0}
    apply_update = EmotionTrainer._apply_update

    def dying_update(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 11:
            _die()
        return apply_update(self, *args, **kwargs)

    monkeypatch.setattr(EmotionTrainer, "_apply_update", dying_update)


def _kill_while_writing_a_checkpoint(monkeypatch):
    """SIGKILL while checkpoint 4 is written: after its model and optimizer files, before its random states."""
    write = resume_state.write_state

    def dying_write(directory, name, state):
        if name.startswith("rng_state") and "0000004" in str(directory):
            _die()
        write(directory, name, state)

    monkeypatch.setattr(checkpointing, "write_state", dying_write)


def _kill_while_deleting_an_old_checkpoint(monkeypatch):
    """SIGKILL half-way through deleting checkpoint 2 (rotation after checkpoint 4 was renamed into place)."""
    rmtree = shutil.rmtree

    def dying_rmtree(path, ignore_errors=False):
        if os.path.basename(path) == "checkpoint-0000002":
            next(p for p in sorted(path.iterdir()) if p.is_file()).unlink()
            _die()
        rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(checkpointing.shutil, "rmtree", dying_rmtree)


def _train_and_get_killed(out, kill):
    # one thread: the parent's OpenMP pool does not survive a fork (a forked child using it hangs)
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as monkeypatch:
        kill(monkeypatch)
        EmotionTrainer(_model(), _args(out, save_total_limit=1), toy_dataset(12, 0, unpaired=0.2)).train()
    os._exit(0)  # not killed: the parent's assertion on the exit code fails


@pytest.mark.parametrize(
    ("kill", "left"),
    [(_kill_during_a_step, ["checkpoint-0000002"]), (_kill_while_writing_a_checkpoint, ["checkpoint-0000002"]),
     (_kill_while_deleting_an_old_checkpoint, ["checkpoint-0000002", "checkpoint-0000004"])],
)  # fmt: skip
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_parameters(tmp_path, uninterrupted, kill, left):
    out = tmp_path / "out"
    process = multiprocessing.get_context("fork").Process(target=_train_and_get_killed, args=(out, kill))
    process.start()
    process.join(60)
    if process.exitcode is None:  # hung: stop it before failing
        process.kill()
    assert process.exitcode == -signal.SIGKILL
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")) == left
    model = _model(5)
    trainer = EmotionTrainer(model, _args(out, save_total_limit=1, resume_from_checkpoint="last"),
                             toy_dataset(12, 0, unpaired=0.2))  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 6
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter, uninterrupted[name], rtol=0, atol=1e-6, msg=name)


def test_deeply_nested_json_is_a_clear_error(run_dir):
    newest = run_dir / "checkpoints" / "checkpoint-0000004"
    (newest / "trainer_state.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="trainer_state.json: not readable JSON"):
        _resume(run_dir, str(newest))
    (newest / "scheduler.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="scheduler.json: not readable JSON"):
        read_state(newest, "scheduler")


def test_a_symlinked_checkpoint_or_file_is_refused(run_dir, tmp_path):
    """`--resume last` reads the run's own checkpoint folders: a link to a checkpoint elsewhere (or a file of a
    checkpoint linking out) is refused, not followed."""
    outside = tmp_path / "elsewhere"
    shutil.copytree(run_dir / "checkpoints" / "checkpoint-0000004", outside)
    link = run_dir / "checkpoints" / "checkpoint-9999999"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeCheckpointError, match="checkpoint-9999999: a symlink"):
        _resume(run_dir)
    link.unlink()
    newest = run_dir / "checkpoints" / "checkpoint-0000004"
    (newest / "scheduler.json").unlink()
    (newest / "scheduler.json").symlink_to(outside / "scheduler.json")
    with pytest.raises(UnsafeCheckpointError, match="scheduler.json: a symlink"):
        _resume(run_dir)
