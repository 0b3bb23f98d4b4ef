"""The state a checkpoint holds besides the model, written and read by the trainer itself as JSON and safetensors:
the optimizer, the learning-rate scheduler, the fp16 loss scaler and each process's random number generators.

Why not accelerate's `save_state` / `load_state`: they pickle (`optimizer.bin`, `scheduler.bin`, `sampler.bin`,
`random_states_<i>.pkl`, `custom_checkpoint_<i>.pkl`, `scaler.pt`) and read registered objects back with
`weights_only=False`, so a planted checkpoint runs code on `--resume`; and a random state that cannot be read is
logged at INFO and skipped, so a resumed run silently differs from the uninterrupted one. Here nothing in a
checkpoint is unpickled (a pickle found in one is refused, naming it), every piece is checked against the live
object before anything is restored, and any piece that cannot be restored is a `CheckpointError` naming its file.
The sampler needs no file: its order is a function of the seed and the epoch (`set_epoch`), and the position in the
epoch is `trainer_state.json`'s `step_in_epoch`.

Each state is `<name>.json` (plain JSON: tensors as references into `<name>.safetensors`, tuples and dicts with
non-string keys tagged) and, when it holds tensors, `<name>.safetensors`.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avemotion.utils.json_files import read_json

from .files import atomic_write_text

OPTIMIZER_STATE = "optimizer"
SCHEDULER_STATE = "scheduler"
SCALER_STATE = "scaler"
RNG_STATE = "rng_state_{rank}"
# what accelerate's save_state (and so checkpoints of avemotion before this format) writes: all pickles
ACCELERATE_PICKLES = ("optimizer*.bin", "scheduler*.bin", "sampler*.bin", "dl_state_dict*.bin", "scaler.pt",
                      "random_states_*.pkl", "custom_checkpoint_*.pkl")  # fmt: skip
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")
# the first bytes of a pickle (protocol 2+) and of torch's zip archives (which hold one)
PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")

_TENSOR, _TUPLE, _ITEMS, _ARRAY = "__tensor__", "__tuple__", "__items__", "__ndarray__"
# the NumPy arrays a state may hold (NumPy's generator key: uint32), in NumPy's byte-order-explicit spelling
_ARRAY_DTYPES = {"<u4", "<i8", "<f8"}


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from: a file is missing, unreadable, or does not fit the run (named)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds a file that only unpickling could read (nothing of it was loaded). Never skipped: a run
    directory with a pickle in it was written by something else or tampered with."""


# ------------------------------------------------------------------------------------------ encoding


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` as plain JSON data; tensors are moved to `tensors` and referenced by key."""
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR: key}
    if isinstance(value, np.ndarray):
        return {_ARRAY: value.dtype.str, "values": value.tolist()}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(item, tensors) for item in value]}
    if isinstance(value, list):
        return [_encode(item, tensors) for item in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {_ITEMS: [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot write {type(value).__name__} into a checkpoint state")


def _decode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """The inverse of `_encode`: only JSON data, tensors of `tensors`, tuples and numeric NumPy arrays come out."""
    if isinstance(value, list):
        return [_decode(item, tensors, where) for item in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {_TENSOR}:
        if value[_TENSOR] not in tensors:
            raise CheckpointError(f"{where}: refers to tensor {value[_TENSOR]!r}, which its .safetensors lacks")
        return tensors[value[_TENSOR]]
    if set(value) == {_TUPLE} and isinstance(value[_TUPLE], list):
        return tuple(_decode(item, tensors, where) for item in value[_TUPLE])
    if set(value) == {_ITEMS} and isinstance(value[_ITEMS], list):
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in value[_ITEMS]):
            raise CheckpointError(f"{where}: malformed {_ITEMS} entry")
        items = [(_decode(k, tensors, where), _decode(v, tensors, where)) for k, v in value[_ITEMS]]
        if not all(isinstance(k, (str, int, float, bool, type(None), tuple)) for k, _ in items):
            raise CheckpointError(f"{where}: a dictionary key is not a plain value")
        return dict(items)
    if set(value) == {_ARRAY, "values"}:
        if value[_ARRAY] not in _ARRAY_DTYPES or not isinstance(value["values"], list):
            raise CheckpointError(f"{where}: array of dtype {value[_ARRAY]!r:.40} (only {sorted(_ARRAY_DTYPES)})")
        try:
            return np.asarray(value["values"], dtype=value[_ARRAY])
        except (TypeError, ValueError, OverflowError) as error:
            raise CheckpointError(f"{where}: not a numeric array ({error})") from error
    return {k: _decode(v, tensors, where) for k, v in value.items()}


def write_state(directory: Path, name: str, state: Any) -> None:
    """`<name>.json` (+ `<name>.safetensors` when `state` holds tensors) in `directory`, each written atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(state, tensors)
    if tensors:
        temporary = directory / f".{name}.safetensors.tmp"
        save_file(tensors, str(temporary))
        temporary.replace(directory / f"{name}.safetensors")
    # allow_nan: the Python reader takes NaN/Infinity (a diverged run's scale, an unset gaussian)
    atomic_write_text(directory / f"{name}.json", json.dumps({"format": 1, "state": encoded}) + "\n")


def read_state(directory: Path, name: str) -> Any:
    """The state `write_state` wrote; a `CheckpointError` naming the file when it is missing or not such a state."""
    path = directory / f"{name}.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the checkpoint is incomplete)")
    try:
        document = read_json(path)  # a ValueError naming the file: not JSON, nested too deep, not UTF-8
    except (OSError, ValueError) as error:
        raise CheckpointError(str(error)[:300]) from error
    if not isinstance(document, dict) or document.get("format") != 1 or "state" not in document:
        raise CheckpointError(f"{path}: not a checkpoint state (expected {{'format': 1, 'state': ...}})")
    tensors: dict[str, torch.Tensor] = {}
    tensor_file = directory / f"{name}.safetensors"
    if tensor_file.is_file():
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(tensor_file))
        except Exception as error:  # SafetensorError names no file
            raise CheckpointError(f"{tensor_file}: cannot be read ({type(error).__name__}: {error})") from error
    return _decode(document["state"], tensors, str(path))


# ------------------------------------------------------------------------------------------ checks


def refuse_pickles(directory: Path) -> None:
    """An `UnsafeCheckpointError` naming the first entry of `directory` (recursively) that is a pickle by its name or
    its first bytes, or a symlink (a checkpoint's files are its own). Nothing is unpickled to tell."""
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            raise UnsafeCheckpointError(f"{path}: a symlink, which no checkpoint of this trainer holds; refused")
        if not path.is_file():
            continue
        with open(path, "rb") as handle:
            head = handle.read(4)
        if path.suffix.lower() in PICKLE_SUFFIXES or head.startswith(PICKLE_MAGIC):
            legacy = any(path.match(pattern) for pattern in ACCELERATE_PICKLES)
            why = (
                "accelerate's pickled state (avemotion before 0.1.0 wrote checkpoints this way): resume a "
                "checkpoint of this release or start the run anew"
                if legacy
                else "a pickle, which no checkpoint of this trainer holds"
            )
            raise UnsafeCheckpointError(f"{path}: {why}; resuming never unpickles, so this checkpoint is refused")


def _check_like(loaded: Any, current: Any, where: str, path: str = "") -> None:
    """`loaded` has the structure and types of `current` (the live object's own state): same keys, lengths, types
    and tensor shapes; numbers may be int or float where the live value is a float."""
    label = f"{where}: {path or 'state'}"
    if isinstance(current, dict):
        if not isinstance(loaded, dict) or set(loaded) != set(current):
            keys = sorted(map(str, loaded)) if isinstance(loaded, dict) else type(loaded).__name__
            raise CheckpointError(f"{label}: expected the keys {sorted(map(str, current))}, got {keys}")
        for key in current:
            _check_like(loaded[key], current[key], where, f"{path}.{key}" if path else str(key))
    elif isinstance(current, (list, tuple)):
        if not isinstance(loaded, (list, tuple)) or len(loaded) != len(current):
            raise CheckpointError(f"{label}: expected {len(current)} entries, got {loaded!r:.80}")
        for index, (a, b) in enumerate(zip(loaded, current)):
            _check_like(a, b, where, f"{path}[{index}]")
    elif isinstance(current, torch.Tensor):
        if not isinstance(loaded, torch.Tensor) or loaded.shape != current.shape or loaded.dtype != current.dtype:
            got = (
                f"{tuple(loaded.shape)} {loaded.dtype}" if isinstance(loaded, torch.Tensor) else type(loaded).__name__
            )
            raise CheckpointError(f"{label}: expected a {tuple(current.shape)} {current.dtype} tensor, got {got}")
    elif isinstance(current, bool) or current is None or isinstance(current, str):
        if type(loaded) is not type(current):
            raise CheckpointError(f"{label}: expected {current!r}-like {type(current).__name__}, got {loaded!r:.80}")
    elif isinstance(current, (int, float)):
        numeric = isinstance(loaded, (int, float)) and not isinstance(loaded, bool)
        if not numeric or (isinstance(current, int) and not isinstance(loaded, int)):
            raise CheckpointError(f"{label}: expected a {type(current).__name__}, got {loaded!r:.80}")


def _finite_numbers(value: Any, where: str, path: str = "") -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise CheckpointError(f"{where}: {path or 'state'} = {value} (not finite)")
    if isinstance(value, dict):
        for key, item in value.items():
            _finite_numbers(item, where, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _finite_numbers(item, where, f"{path}[{index}]")


# ------------------------------------------------------------------------------------------ the pieces


def _optimizer_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return optimizer.state_dict()["param_groups"]


def check_optimizer_state(
    state: Any, optimizer: torch.optim.Optimizer, where: str, max_step: int | None = None
) -> None:
    """The saved optimizer state fits `optimizer`: a dict of `state` and `param_groups`, the same groups holding the
    same parameter indices, per parameter state tensors of that parameter's shape (scalar `step`s aside), each `step`
    count at most `max_step` (the updates the run can have made)."""
    if not isinstance(state, dict) or set(state) != {"state", "param_groups"}:
        raise CheckpointError(f"{where}: not an optimizer state (expected the keys 'state' and 'param_groups')")
    groups = state["param_groups"]
    current = _optimizer_groups(optimizer)
    if not isinstance(groups, list) or len(groups) != len(current) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(f"{where}: {len(current)} parameter groups expected (the run's optimizer)")
    shapes: dict[int, torch.Size] = {}
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    for index, (group, live) in enumerate(zip(groups, current)):
        if group.get("params") != live["params"]:
            raise CheckpointError(f"{where}: param_groups[{index}] holds other parameters than the run's optimizer")
        _finite_numbers({k: v for k, v in group.items() if k != "params"}, where, f"param_groups[{index}]")
        _check_hyperparameters(group, where, f"param_groups[{index}]")
    for position, parameter in zip((i for live in current for i in live["params"]), parameters):
        shapes[position] = parameter.shape
    if not isinstance(state["state"], dict):
        raise CheckpointError(f"{where}: state is not a dictionary")
    for position, entry in state["state"].items():
        if position not in shapes or not isinstance(entry, dict):
            raise CheckpointError(f"{where}: state of parameter {position!r:.40}, which the optimizer does not have")
        for key, value in entry.items():
            if key == "step" and max_step is not None and isinstance(value, (int, float, torch.Tensor)):
                count = float(value) if not isinstance(value, torch.Tensor) or value.numel() == 1 else math.inf
                if not 0 <= count <= max_step:
                    raise CheckpointError(f"{where}: state[{position}].step = {count:g}: expected 0 to {max_step}")
            if not isinstance(value, torch.Tensor):
                # only a `step` count may be a plain number (torch's older layout); SGD without momentum keeps None
                number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                if not ((key == "step" and number and value >= 0) or (key == "momentum_buffer" and value is None)):
                    raise CheckpointError(f"{where}: state[{position}].{key} = {value!r:.40}: expected a tensor")
            elif not value.dtype.is_floating_point:
                raise CheckpointError(
                    f"{where}: state[{position}].{key} is a {value.dtype} tensor, not floating point"
                )
            elif not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"{where}: state[{position}].{key} holds NaN or infinite values")
            elif value.dim() > 0 and value.shape != shapes[position]:
                raise CheckpointError(
                    f"{where}: state[{position}].{key} has shape {tuple(value.shape)}, the parameter "
                    f"{tuple(shapes[position])}"
                )


# the range of each optimizer hyper-parameter a checkpoint may set (a number outside is a tampered or broken file)
_HYPERPARAMETER_RANGES = {"lr": (0.0, 10.0), "weight_decay": (0.0, 10.0), "eps": (0.0, 1.0), "momentum": (0.0, 1.0),
                          "dampening": (0.0, 1.0), "initial_lr": (0.0, 10.0)}  # fmt: skip


def _check_hyperparameters(group: dict[str, Any], where: str, label: str) -> None:
    for key, (low, high) in _HYPERPARAMETER_RANGES.items():
        value = group.get(key, low)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
            raise CheckpointError(f"{where}: {label}.{key} = {value!r:.40}: expected a number from {low} to {high}")
    betas = group.get("betas", (0.0, 0.0))
    if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas
    ):  # fmt: skip
        raise CheckpointError(f"{where}: {label}.betas = {betas!r:.40}: expected two numbers in [0, 1)")


def check_like_live(state: Any, live_state: dict[str, Any], where: str) -> None:
    """A scheduler's or scaler's saved state has exactly the keys and types of the live object's `state_dict()`,
    finite numbers, and learning rates (`base_lrs`, `_last_lr`) in the optimizer's range."""
    _check_like(state, live_state, where)
    _finite_numbers(state, where)
    for key in ("base_lrs", "_last_lr"):
        for index, value in enumerate(state.get(key) or []):
            if not 0 <= value <= _HYPERPARAMETER_RANGES["lr"][1]:
                raise CheckpointError(f"{where}: {key}[{index}] = {value!r:.40}: not a learning rate (0 to 10)")
    for key in ("last_epoch", "_step_count", "scale", "_growth_tracker"):
        if isinstance(state.get(key), (int, float)) and state[key] < -1:
            raise CheckpointError(f"{where}: {key} = {state[key]!r:.40}: negative")


def rng_state() -> dict[str, Any]:
    """This process's random number generators: Python's, NumPy's, torch's CPU one and every CUDA device's."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Any, where: str) -> None:
    """Restore `rng_state()`'s output, checked first (a `CheckpointError` naming `where`; nothing is half-set)."""
    if not isinstance(state, dict) or not {"python", "numpy", "torch"} <= set(state):
        raise CheckpointError(f"{where}: not a random state (expected the keys 'python', 'numpy', 'torch')")
    _check_like(state["torch"], torch.get_rng_state(), where, "torch")
    probe = random.Random()
    generator = np.random.RandomState()
    try:  # on throwaway generators first: the process's own are set only when every piece is valid
        probe.setstate(state["python"])
        generator.set_state(state["numpy"])
    except (TypeError, ValueError, KeyError, OverflowError) as error:
        raise CheckpointError(f"{where}: not a valid random state ({type(error).__name__}: {error})") from error
    cuda = state.get("cuda")
    if cuda is not None:
        devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not isinstance(cuda, list) or len(cuda) != devices:
            raise CheckpointError(f"{where}: CUDA random states for {len(cuda) if isinstance(cuda, list) else '?'} "
                                  f"devices, this process has {devices}")  # fmt: skip
        for index, value in enumerate(cuda):
            _check_like(value, torch.cuda.get_rng_state(index), where, f"cuda[{index}]")
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def restore(
    directory: Path, name: str, check: Callable[[Any, str], None], apply: Callable[[Any], None]
) -> Callable[[], None]:
    """Read and check state `name` now; returns the function that applies it (so that a checkpoint is applied only
    when every piece has been read and checked)."""
    where = str(directory / f"{name}.json")
    state = read_state(directory, name)
    check(state, where)

    def apply_checked() -> None:
        try:
            apply(state)
        except CheckpointError:
            raise
        except Exception as error:  # what torch raises on a state it rejects: name the file
            raise CheckpointError(f"{where}: cannot be restored ({type(error).__name__}: {error})") from error

    return apply_checked


def _whole_number(state: dict[str, Any], key: str, high: int, where: str, optional: bool = False) -> None:
    value = state.get(key, None if optional else 0)
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise CheckpointError(f"{where}: {key} = {value!r:.40}: expected a whole number from 0 to {high} (this run)")


# the fields of `TrainerState` that `trainer_state.json` holds only once they are set
_SET_LATER = ("loss_sums", "epoch_nonfinite_skipped_batches", "best_report", "resumed_from")


@dataclass
class TrainerState:
    """What `EmotionTrainer` counts and keeps across a run, saved in each checkpoint as `trainer_state.json`
    (`to_dict`) and read back on resumption (`from_dict`, `update`), like `transformers.TrainerState`."""

    epoch: int = 0  # the epochs completed (during an epoch: its index)
    step_in_epoch: int = 0  # the batches of the current epoch done
    global_step: int = 0  # the updates made
    best_metric: float | None = None
    best_epoch: int | None = None
    evaluations_without_improvement: int = 0
    nonfinite_skipped_batches: int = 0
    consecutive_nonfinite_batches: int = 0
    log_history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    # set during the run, absent from trainer_state.json until then
    loss_sums: dict[str, list[float]] | None = None  # the epoch's running [sum, count] per training step
    epoch_nonfinite_skipped_batches: int | None = None
    best_report: dict[str, Any] | None = None  # the evaluation report of the best epoch
    resumed_from: list[dict[str, Any]] | None = None  # each resumption: the checkpoint, the ones skipped
    # keys of a trainer_state.json that this release does not know: written back as they were read
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The `trainer_state.json` object (the fields set; `extra`'s keys last)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**{k: v for k, v in values.items() if not (k in _SET_LATER and v is None)}, **self.extra}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainerState:
        """The state of a `trainer_state.json` object (checked first: `check_trainer_state`)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {key: value for key, value in values.items() if key not in known}
        return cls(**{key: value for key, value in values.items() if key in known}, extra=extra)

    def update(self, values: Mapping[str, Any]) -> None:
        """Set the fields `values` holds (a `trainer_state.json` object), keeping the others."""
        restored = self.from_dict({**self.to_dict(), **values})
        for name in (f.name for f in fields(self)):
            setattr(self, name, getattr(restored, name))


def check_trainer_state(state: Any, where: Path, epochs: int, batches_per_epoch: int, step_names: list[str]) -> None:
    """`trainer_state.json` fits this run: counters are whole numbers within what `epochs` epochs of
    `batches_per_epoch` batches can reach, the running loss sums are `[sum, count]` of the run's steps, the best
    metric is a finite number and the report and log are the dictionaries the trainer writes; a `CheckpointError`
    naming the file and field otherwise."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: not a trainer state (expected a JSON object)")
    batches = epochs * batches_per_epoch
    for key in ("epoch", "step_in_epoch", "global_step"):
        if key not in state:
            raise CheckpointError(f"{where}: {key} is missing")
    _whole_number(state, "epoch", epochs, str(where))
    _whole_number(state, "step_in_epoch", batches_per_epoch, str(where))
    for key in ("global_step", "nonfinite_skipped_batches", "consecutive_nonfinite_batches",
                "epoch_nonfinite_skipped_batches", "evaluations_without_improvement"):  # fmt: skip
        _whole_number(state, key, batches, str(where))
    _whole_number(state, "best_epoch", epochs, str(where), optional=True)
    best = state.get("best_metric")
    if best is not None and (not isinstance(best, (int, float)) or isinstance(best, bool) or not math.isfinite(best)):
        raise CheckpointError(f"{where}: best_metric = {best!r:.40}: expected a finite number or null")
    if state.get("best_report") is not None and not isinstance(state["best_report"], dict):
        raise CheckpointError(f"{where}: best_report: expected an object or null")
    log = state.get("log_history", [])
    if not isinstance(log, list) or not all(isinstance(record, dict) for record in log):
        raise CheckpointError(f"{where}: log_history: expected a list of objects (one per epoch)")
    for index, record in enumerate(log):
        _whole_number(record, "epoch", epochs, f"{where}: log_history[{index}]")
        for key in ("eval", "train_loss"):
            if key in record and not isinstance(record[key], dict):
                raise CheckpointError(f"{where}: log_history[{index}].{key}: expected an object")
    if not isinstance(state.get("resumed_from", []), list):
        raise CheckpointError(f"{where}: resumed_from: expected a list")
    sums = state.get("loss_sums")
    valid_sums = isinstance(sums, dict) and set(sums) == set(step_names) and all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
        for v in sums.values()
    )  # fmt: skip
    if state["step_in_epoch"] and not valid_sums:
        raise CheckpointError(f"{where}: loss_sums must hold finite [sum, count] for the steps {step_names}")
