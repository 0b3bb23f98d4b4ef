"""The trainer's fast path (issue 14): the same losses and parameters as the straightforward path, length buckets that
change nothing but the shapes, the optimizer implementations, one host read per batch, `auto_find_batch_size`, and the
`tf32` / `torch_compile` options reaching torch."""

import os
import shutil
import sys

import pytest
import torch
from training_testing import toy_dataset
from vavl_testing import tiny_vavl_config

from avemotion import VavlForEmotionRecognition
from avemotion.data.collators import AvEmotionCollator
from avemotion.training import EmotionTrainer, TrainingArguments
from avemotion.training import trainer as trainer_module
from avemotion.training.arguments import add_training_arguments, training_arguments_from_namespace
from avemotion.training.resume_state import read_state, write_state
from avemotion.training.schedules import rows_with, select_rows, step_keys

NO_DROPOUT = dict(conformer_dropout=0.0, head_dropout=0.0)


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return VavlForEmotionRecognition(tiny_vavl_config(num_modality_layers=1, **{**NO_DROPOUT, **overrides}))


def _args(path, **overrides):
    kwargs = dict(output_dir=str(path), num_train_epochs=1, per_device_train_batch_size=4, learning_rate=3e-3,
                  disable_tqdm=True, seed=0, shuffle=False, save_strategy="no")  # fmt: skip
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


class RecordingTrainer(EmotionTrainer):
    """Records each batch's step losses (read after the batch)."""

    def _training_batch(self, batch, boundary):
        losses = super()._training_batch(batch, boundary)
        self.recorded = [*getattr(self, "recorded", []), {k: float(v) for k, v in losses.items()}]
        return losses


def _train(path, data, model=None, **overrides):
    model = model or _model()
    trainer = RecordingTrainer(model, _args(path, **overrides), data)
    trainer.train()
    return trainer, {name: p.detach().clone() for name, p in model.named_parameters()}


def _reference_run(model, data, batch_size, lr):
    """The straightforward schedule: per batch, per declared step, its rows by boolean mask, forward, backward, the
    other steps' gradients dropped, a for-loop Adam step over every parameter with a gradient."""
    steps = trainer_module.resolve_schedule("auto", model)
    modalities = trainer_module.modality_inputs(model)
    names = dict(model.named_parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.95, 0.999), eps=1e-8, weight_decay=5e-7,
                                 foreach=False)  # fmt: skip
    collate, losses = AvEmotionCollator(), []
    model.train()
    for start in range(0, len(data), batch_size):
        batch = collate([data[i] for i in range(start, min(start + batch_size, len(data)))])
        record = {}
        for step in steps:
            rows = rows_with(batch, step, modalities)
            if rows is not None and not rows.any():
                continue
            sub = batch if rows is None else select_rows(batch, rows, step_keys(step, modalities))
            loss = step.loss(**sub) if step.outside_ddp else model(**sub)[step.loss]
            if step.outside_ddp:
                params = [p for n, p in names.items() if step.owns(n)]
                for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
                    p.grad = g
            else:
                loss.backward()
            for name, parameter in names.items():
                if not step.owns(name):
                    parameter.grad = None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            record[step.name] = float(loss)
        losses.append(record)
    return losses, {name: p.detach().clone() for name, p in model.named_parameters()}


def _assert_same(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


def _assert_same_losses(a, b, atol=1e-6):
    assert [set(x) for x in a] == [set(y) for y in b]
    for x, y in zip(a, b):
        for key in x:
            assert abs(x[key] - y[key]) <= atol, (key, x[key], y[key])


# fused Adam rounds differently: a parameter whose gradient is zero up to rounding (an attention key bias) gets a
# normalised update of either sign, up to the learning rate; the losses stay within 1e-6
FUSED_PARAMETER_ATOL = 3e-3


def test_fast_trainer_equals_the_straightforward_schedule(tmp_path):
    """Unpaired rows (every step sees a sub-batch): the trainer's losses per batch and final parameters equal the
    straightforward loop's to 1e-6 with the foreach and the for-loop optimizer; with fused Adam (the default: no host
    read per step), the losses."""
    data = toy_dataset(16, 0, unpaired=0.4)
    expected_losses, expected = _reference_run(_model(), data, batch_size=4, lr=3e-3)
    for implementation in ("foreach", "for_loop", "auto"):
        trainer, params = _train(tmp_path / implementation, data, optimizer_implementation=implementation)
        _assert_same_losses(trainer.recorded, expected_losses)
        _assert_same(params, expected, atol=FUSED_PARAMETER_ATOL if implementation == "auto" else 1e-6)
        assert trainer._device_checks is (implementation == "auto")
    assert {"visual", "acoustic", "fusion"} == set().union(*map(set, expected_losses))


@pytest.mark.parametrize("implementation", ["fused", "foreach"])
def test_optimizer_implementations_agree_and_share_checkpoints(tmp_path, implementation):
    data = toy_dataset(12, 0)
    reference, expected = _train(tmp_path / "loop", data, optimizer_implementation="for_loop")
    trainer, params = _train(tmp_path / implementation, data, optimizer_implementation=implementation)
    assert trainer.optimizer.optimizer.defaults[implementation] is True
    _assert_same(params, expected, atol=FUSED_PARAMETER_ATOL if implementation == "fused" else 1e-6)
    _assert_same_losses(trainer.recorded, reference.recorded)
    # a for-loop optimizer's state (e.g. an older checkpoint) loads into this one, and the other way round
    state = reference.optimizer.state_dict()
    trainer.optimizer.load_state_dict(state)
    assert trainer.optimizer.state_dict()["state"].keys() == state["state"].keys()
    reference.optimizer.load_state_dict(trainer.optimizer.state_dict())
    assert trainer._device_checks is (implementation == "fused")


def test_auto_picks_fused_adam_and_foreach_sgd(tmp_path):
    choose = trainer_module.optimizer_implementation
    assert choose("auto", torch.device("cuda"), "adamw") == choose("auto", torch.device("cpu"), "adam") == {
        "fused": True}  # fmt: skip
    assert choose("auto", torch.device("cuda"), "sgd") == {"foreach": True}
    assert choose("for_loop", torch.device("cuda"), "adam") == {"foreach": False}
    with pytest.raises(ValueError, match="optimizer_implementation must be one of"):
        _args(tmp_path, optimizer_implementation="apex")
    with pytest.raises(ValueError, match="'fused' is for adam/adamw"):
        _args(tmp_path, optimizer="sgd", optimizer_implementation="fused")
    sgd = EmotionTrainer(_model(), _args(tmp_path, optimizer="sgd"), toy_dataset(4, 0))
    sgd._prepare()
    assert sgd.optimizer.optimizer.defaults["foreach"] is True and not sgd._device_checks


def test_nonfinite_losses_are_handled_alike_on_the_device_and_the_host(tmp_path):
    """A NaN audio row: the device path (fused, found_inf) skips the same updates as the host check."""
    from test_training_faults import _with_nan

    data = _with_nan(toy_dataset(16, 0), {5})
    results = {}
    for implementation in ("fused", "for_loop"):
        trainer, params = _train(tmp_path / implementation, data, optimizer_implementation=implementation)
        results[implementation] = (trainer.state.nonfinite_skipped_batches, trainer.recorded, params)
    assert results["fused"][0] == results["for_loop"][0] == 1
    _assert_same_losses(results["fused"][1], results["for_loop"][1])
    _assert_same(results["fused"][2], results["for_loop"][2], atol=FUSED_PARAMETER_ATOL)
    assert all(torch.isfinite(p).all() for p in results["fused"][2].values())


def test_one_host_read_per_batch(tmp_path, monkeypatch):
    """Reads of tensor values (`item`, `tolist`, `bool`, `float`, `int`) made by the trainer during an epoch: one per
    batch (the steps' finiteness), plus the row selection of the host copy of the batch (no device involved)."""
    trainer = EmotionTrainer(_model(), _args(tmp_path), toy_dataset(16, 0, unpaired=0.3))
    trainer._prepare()
    assert trainer._device_checks
    reads = []
    for method in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, method)

        def wrapper(self, *args, _original=original, **kwargs):
            caller = sys._getframe(1)
            if caller.f_code.co_filename == trainer_module.__file__:
                reads.append(caller.f_code.co_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, wrapper)
    trainer._train_epoch(0)
    monkeypatch.undo()
    batches = 4
    by_function = {name: reads.count(name) for name in set(reads)}
    # per batch: _read_checks once; _read_loss_sums and the epoch's mean once per epoch
    assert by_function.pop("_read_checks") == batches, by_function
    assert by_function.pop("_read_loss_sums") == 1 and set(by_function) <= {"_train_epoch", "<dictcomp>"}, reads


def test_length_buckets_change_shapes_not_results(tmp_path):
    """pad_to_multiple_of: padded lengths are multiples of 16 (one shape for these rows) and the training losses and
    parameters equal the unpadded run's within 1e-5 (masks hide the padding)."""
    data = toy_dataset(12, 0, unpaired=0.3)
    rows = [data[i] for i in range(4)]
    batch = AvEmotionCollator(pad_to_multiple_of=16)(rows)
    assert batch["audio_features"].shape[1] == batch["visual_features"].shape[1] == 16
    for optimizer in ("sgd", "adam"):  # sgd: the parameters too (Adam amplifies rounding in zero gradients)
        plain, expected = _train(tmp_path / f"plain-{optimizer}", data, optimizer=optimizer)
        bucketed, params = _train(tmp_path / f"buckets-{optimizer}", data, optimizer=optimizer, pad_to_multiple_of=16)
        assert bucketed.data_collator.pad_to_multiple_of == 16
        _assert_same_losses(bucketed.recorded, plain.recorded, atol=1e-5)
        if optimizer == "sgd":
            _assert_same(params, expected, atol=1e-5)


def test_length_buckets_leave_the_fusion_model_outputs(tmp_path):
    """The multi-level fusion model's inputs (waveform samples, token ids, word segments) padded to multiples: the
    same logits within 1e-5."""
    from mlfusion_testing import tiny_config
    from test_training_mlfusion import toy_rows

    from avemotion import MultiLevelFusionForEmotionRecognition

    torch.manual_seed(0)
    model = MultiLevelFusionForEmotionRecognition(tiny_config(granularities=["frame", "word"], num_labels=4)).eval()
    rows = [toy_rows(6, 0)[i] for i in range(6)]
    outputs = []
    for multiple in (None, 32):
        batch = AvEmotionCollator(pad_to_multiple_of=multiple)(rows)
        batch.pop("labels")
        if multiple:
            assert batch["input_values"].shape[1] % 32 == 0 and batch["input_ids"].shape[1] == 32
        with torch.no_grad():
            outputs.append(model(**batch).logits)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-5)


def test_collated_padding_equals_the_row_by_row_padding():
    data = toy_dataset(8, 0, unpaired=0.5)
    rows = [data[i] for i in range(8)]
    batch = AvEmotionCollator(pad_to_multiple_of=4)(rows)
    for key, mask_key in (("audio_features", "audio_features_mask"), ("visual_features", "visual_features_mask")):
        for index, row in enumerate(rows):
            value = row[key]
            length = 0 if value is None else len(value)
            assert batch[mask_key][index].tolist() == [1] * length + [0] * (batch[key].shape[1] - length)
            if value is not None:
                assert torch.equal(batch[key][index, :length], torch.tensor(value))
            assert not batch[key][index, length:].any()


def test_auto_find_batch_size_halves_until_it_fits(tmp_path, monkeypatch):
    """Out of memory at batch 16 and 8 (after one update: the retry starts from the initial weights): the run ends
    with batch 4 and 4x the gradient accumulation, equal to a run started there."""
    data = toy_dataset(32, 0)
    original = EmotionTrainer._training_batch
    attempts = []

    def out_of_memory(self, batch, boundary):
        attempts.append(self.args.per_device_train_batch_size)
        if self.args.per_device_train_batch_size > 4 and self.state.global_step == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, batch, boundary)

    monkeypatch.setattr(EmotionTrainer, "_training_batch", out_of_memory)
    model = _model()
    trainer = EmotionTrainer(model, _args(tmp_path / "auto", per_device_train_batch_size=16,
                                          auto_find_batch_size=True, save_strategy="steps", save_steps=1), data)  # fmt: skip
    trainer.train()
    assert (trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps) == (4, 4)
    assert attempts[:3] == [16, 16, 8] and trainer.state.global_step == 2
    # the failed attempts' checkpoints are gone; the last attempt's update 1 (update 2 ends the epoch: no save)
    assert sorted(p.name for p in (tmp_path / "auto" / "checkpoints").iterdir()) == ["checkpoint-0000001"]
    direct = _model()
    EmotionTrainer(direct, _args(tmp_path / "direct", per_device_train_batch_size=4, gradient_accumulation_steps=4),
                   data).train()  # fmt: skip
    _assert_same(dict(model.named_parameters()), dict(direct.named_parameters()))

    def other_error(self, batch, boundary):
        attempts.append("other")
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr(EmotionTrainer, "_training_batch", other_error)
    attempts.clear()
    with pytest.raises(RuntimeError, match="a bug, not memory"):  # other errors are not retried
        EmotionTrainer(_model(), _args(tmp_path / "other", auto_find_batch_size=True), data).train()
    assert attempts == ["other"]


def test_tf32_and_torch_compile_reach_torch(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer_module, "set_tf32", lambda allow: calls.append(("tf32", allow)))
    monkeypatch.setattr(trainer_module, "compile_model", lambda model, options: calls.append(("compile", options)))
    args = _args(tmp_path, tf32=True, torch_compile=True, torch_compile_mode="reduce-overhead")
    model = _model()
    EmotionTrainer(model, args, toy_dataset(8, 0)).train()
    assert calls == [("tf32", True), ("compile", "reduce-overhead")]
    calls.clear()
    EmotionTrainer(_model(), _args(tmp_path / "plain"), toy_dataset(4, 0)).train()
    assert calls == [("tf32", None)]  # compile is opt-in; None leaves PyTorch's TF32 setting

    import argparse

    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    parsed = training_arguments_from_namespace(parser.parse_args(
        ["--tf32", "false", "--torch_compile", "--torch_compile_mode", "max-autotune", "--pad_to_multiple_of", "8",
         "--auto_find_batch_size", "--optimizer_implementation", "foreach", "--no_dataloader_pin_memory"]
    ))  # fmt: skip
    assert (parsed.tf32, parsed.torch_compile, parsed.torch_compile_mode, parsed.pad_to_multiple_of) == (
        False, True, "max-autotune", 8)  # fmt: skip
    assert parsed.auto_find_batch_size and parsed.optimizer_implementation == "foreach"
    assert not parsed.dataloader_pin_memory


@pytest.mark.skipif(
    not os.environ.get("AVEMOTION_SLOW_TESTS"),
    reason="torch.compile (inductor) takes a minute or more on 2 cores; set AVEMOTION_SLOW_TESTS=1",
)
def test_torch_compile_trains_like_eager(tmp_path):
    data = toy_dataset(8, 0)
    options = dict(pad_to_multiple_of=8, optimizer="sgd")  # sgd: parameters comparable too (see the bucket test)
    eager, expected = _train(tmp_path / "eager", data, **options)
    compiled, params = _train(tmp_path / "compiled", data, torch_compile=True, **options)
    _assert_same_losses(compiled.recorded, eager.recorded, atol=1e-4)
    _assert_same(params, expected, atol=1e-4)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state (with its mixed precision): start and leave a fresh one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_keeps_float32_weights_and_losses(tmp_path, fresh_accelerate_state):
    """bf16 autocast (CPU here: its speed says nothing about a GPU's): weights, gradients' updates and the losses
    stay float32; training runs and the losses are finite."""
    model = _model()
    trainer = RecordingTrainer(model, _args(tmp_path, mixed_precision="bf16"), toy_dataset(8, 0))
    trainer.train()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(v)) for record in trainer.recorded for v in record.values())
    assert trainer.state.log_history[-1]["train_loss"].keys() == {"visual", "acoustic", "fusion"}


def test_frames_are_read_from_arrow_as_the_numpy_formatter_gives_them():
    """Cached features (lists of float lists, None for a missing modality) of a numpy-format dataset, read in one
    piece per column: the same rows (arrays, dtypes, None, other columns) as `datasets`' formatter; a ragged row falls
    back to the formatter."""
    import datasets
    import numpy as np

    from avemotion.training.batches import RowIndexedDataset

    data = toy_dataset(10, 0, unpaired=0.4).add_column("id", [f"row{i}" for i in range(10)])
    data = data.with_format("numpy").shuffle(seed=0)
    indexed = RowIndexedDataset(data)
    assert indexed._frames is not None and sorted(indexed._frames[1]) == ["audio_features", "visual_features"]
    indices = [3, 0, 7, 9, 1]
    fast, expected = indexed.__getitems__(indices), data.__getitems__(indices)
    assert [i for i, _ in fast] == indices
    assert any(row["visual_features"] is None or row["audio_features"] is None for row in expected)
    for (_, row), want in zip(fast, expected):
        assert row.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, np.ndarray) and value.dtype != object:
                assert row[key].dtype == value.dtype and np.array_equal(row[key], value), key
            else:
                assert row[key] == value and type(row[key]) is type(value), key
    ragged = datasets.Dataset.from_dict(
        {"audio_features": [[[1.0, 2.0], [3.0]], [[1.0, 2.0]]], "label": [0, 1]}
    ).with_format("numpy")
    indexed = RowIndexedDataset(ragged)
    assert indexed._frame_rows([0, 1]) is None
    assert [type(row["audio_features"]) for _, row in indexed.__getitems__([0, 1])] == [np.ndarray, np.ndarray]
    assert RowIndexedDataset(ragged.with_format(None))._frames is None  # python lists: the formatter's


@pytest.mark.parametrize("dtype", ["float64", "float16", "float32"])
def test_frames_of_any_float_width_are_read_as_the_numpy_formatter_gives_them(dtype):
    """Frames stored as float64 or float16: the formatter gives float32 arrays (it casts floating values to float32),
    and so does the Arrow path, with the same values; integer and float scalar columns stay the formatter's."""
    import datasets
    import numpy as np

    from avemotion.training.batches import RowIndexedDataset

    rng = np.random.default_rng(0)
    frames = [None if i == 2 else rng.standard_normal((1 + i % 3, 4)).tolist() for i in range(6)]
    features = datasets.Features({"audio_features": datasets.List(datasets.List(datasets.Value(dtype))),
                                  "label": datasets.Value("int32"), "weight": datasets.Value("float64")})  # fmt: skip
    data = datasets.Dataset.from_dict(
        {"audio_features": frames, "label": list(range(6)), "weight": [0.5] * 6}, features=features
    ).with_format("numpy")
    indexed = RowIndexedDataset(data)
    assert indexed._frames is not None
    indices = [4, 2, 0, 5]
    for (_, row), want in zip(indexed.__getitems__(indices), data.__getitems__(indices)):
        assert row.keys() == want.keys()
        for key, value in want.items():
            if value is None:
                assert row[key] is None
            else:
                assert type(row[key]) is type(value) and row[key].dtype == value.dtype, (key, row[key], value)
                assert np.array_equal(row[key], value), key
        if want["audio_features"] is not None:
            assert row["audio_features"].dtype == np.float32 and row["audio_features"].flags.writeable


def test_a_checkpoint_of_another_optimizer_implementation_resumes_with_the_current_one(tmp_path):
    """A checkpoint written by a for-loop run resumed with the default (fused, device checks): the loaded groups are
    fused and the second epoch's losses equal those of resuming it with the for-loop optimizer (1e-6); a fused
    checkpoint resumed with for_loop runs the for-loop step (no group stays fused)."""
    data = toy_dataset(8, 0)
    _train(tmp_path / "run", data, optimizer_implementation="for_loop", save_strategy="epoch")
    resumed = {}
    for implementation in ("auto", "for_loop"):
        run = tmp_path / implementation
        shutil.copytree(tmp_path / "run", run)
        trainer, _ = _train(run, data, model=_model(), optimizer_implementation=implementation, num_train_epochs=2,
                            save_strategy="epoch", resume_from_checkpoint="last")  # fmt: skip
        groups = trainer.optimizer.optimizer.param_groups
        assert [bool(g["fused"]) for g in groups] == [implementation == "auto"] * len(groups)
        assert trainer._device_checks is (implementation == "auto") and trainer.state.global_step == 4
        resumed[implementation] = trainer.recorded
    assert len(resumed["auto"]) == 2
    _assert_same_losses(resumed["auto"], resumed["for_loop"])
    # and back: the fused run's checkpoint (epoch 2) resumed with for_loop
    trainer, _ = _train(tmp_path / "auto", data, model=_model(), optimizer_implementation="for_loop",
                        num_train_epochs=3, resume_from_checkpoint="last")  # fmt: skip
    assert not any(g["fused"] for g in trainer.optimizer.optimizer.param_groups) and not trainer._device_checks
    assert all(s["step"].device.type == "cpu" for s in trainer.optimizer.optimizer.state.values())


def test_a_previous_release_checkpoint_resumes_with_fused_adam(tmp_path):
    """A checkpoint of plain Adam (groups with fused/foreach None, or without the keys, as older releases saved): resumed with
    the default optimizer, it trains on with fused groups and device checks instead of failing at the first update
    (a fused step's `found_inf` given to a non-fused group)."""
    data = toy_dataset(8, 0)
    _train(tmp_path, data, optimizer_implementation="for_loop", save_strategy="epoch")
    (checkpoint,) = (tmp_path / "checkpoints").iterdir()
    saved = read_state(checkpoint, "optimizer")
    for index, group in enumerate(saved["param_groups"]):
        for key in ("fused", "foreach", "capturable", "differentiable"):
            if index % 2:  # one group with the keys None, the other without them
                group[key] = None
            else:
                group.pop(key, None)
    write_state(checkpoint, "optimizer", saved)
    trainer, params = _train(tmp_path, data, model=_model(), num_train_epochs=2, save_strategy="epoch",
                             resume_from_checkpoint="last")  # fmt: skip
    assert trainer.state.global_step == 4 and trainer._device_checks
    assert all(g["fused"] is True for g in trainer.optimizer.optimizer.param_groups)
    assert all(torch.isfinite(p).all() for p in params.values()) and len(trainer.recorded) == 2


def test_batches_are_placed_on_the_device_with_their_nested_tensors(tmp_path, monkeypatch):
    """A collator's nested dicts/lists/tuples of tensors go to the device too (as accelerate's placement does);
    other values are left as they are."""
    from accelerate import Accelerator

    trainer = EmotionTrainer(_model(), _args(tmp_path), toy_dataset(4, 0))
    batch = {"labels": torch.zeros(2), "extra": {"a": torch.ones(2, 3), "b": [torch.ones(1), "text"]},
             "pair": (torch.ones(1), 3), "name": "x"}  # fmt: skip
    monkeypatch.setattr(Accelerator, "device", property(lambda self: torch.device("meta")))
    placed = trainer._to_device(batch)
    assert placed["labels"].is_meta and placed["extra"]["a"].is_meta and placed["extra"]["b"][0].is_meta
    assert placed["extra"]["b"][1] == "text" and placed["pair"][0].is_meta and placed["pair"][1] == 3
    assert isinstance(placed["pair"], tuple) and placed["name"] == "x" and placed["extra"]["a"].shape == (2, 3)


def test_auto_find_batch_size_keeps_the_rows_per_update_of_an_odd_batch(tmp_path, monkeypatch):
    """Batch 5 out of memory (and 2 would fit): batch 1 with 5x accumulation, the same 5 rows per update (not 2 with
    a rounded 2x: 4 rows), equal to a run started there; the sizes tried divide the rows per update; several
    processes are refused."""
    data = toy_dataset(10, 0)
    original = EmotionTrainer._training_batch

    def out_of_memory(self, batch, boundary):
        if self.args.per_device_train_batch_size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, batch, boundary)

    monkeypatch.setattr(EmotionTrainer, "_training_batch", out_of_memory)
    model = _model()
    trainer = EmotionTrainer(model, _args(tmp_path / "auto", per_device_train_batch_size=5,
                                          auto_find_batch_size=True), data)  # fmt: skip
    trainer.train()
    assert (trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps) == (1, 5)
    assert trainer.state.global_step == 2
    monkeypatch.undo()
    direct = _model()
    EmotionTrainer(direct, _args(tmp_path / "direct", per_device_train_batch_size=1, gradient_accumulation_steps=5),
                   data).train()  # fmt: skip
    _assert_same(dict(model.named_parameters()), dict(direct.named_parameters()))
    choose = trainer_module.smaller_batch_size
    assert [choose(16, 16), choose(8, 16), choose(6, 6), choose(3, 6), choose(5, 5), choose(7, 7)] == [
        8,
        4,
        3,
        1,
        1,
        1,
    ]
    assert choose(12, 24) == 6 and choose(6, 12) == 3 and choose(1, 5) == 0

    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 2))
    with pytest.raises(ValueError, match="auto_find_batch_size needs a single process"):
        EmotionTrainer(_model(), _args(tmp_path / "multi", auto_find_batch_size=True), data)
