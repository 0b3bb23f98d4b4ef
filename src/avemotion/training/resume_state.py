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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not readable JSON ({type(error).__name__}: {error})") from error
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
    """An `UnsafeCheckpointError` naming the first file of `directory` (recursively) that is a pickle by its name or
    its first bytes. Nothing is unpickled to tell."""
    for path in sorted(directory.rglob("*")):
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


def check_optimizer_state(state: Any, optimizer: torch.optim.Optimizer, where: str) -> None:
    """The saved optimizer state fits `optimizer`: a dict of `state` and `param_groups`, the same groups holding the
    same parameter indices, per parameter state tensors of that parameter's shape (scalar `step`s aside)."""
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
        for key in ("lr", "weight_decay"):
            if not isinstance(group.get(key), (int, float)) or isinstance(group.get(key), bool):
                raise CheckpointError(f"{where}: param_groups[{index}].{key} = {group.get(key)!r:.80}: not a number")
        _finite_numbers({k: v for k, v in group.items() if k != "params"}, where, f"param_groups[{index}]")
    for position, parameter in zip((i for live in current for i in live["params"]), parameters):
        shapes[position] = parameter.shape
    if not isinstance(state["state"], dict):
        raise CheckpointError(f"{where}: state is not a dictionary")
    for position, entry in state["state"].items():
        if position not in shapes or not isinstance(entry, dict):
            raise CheckpointError(f"{where}: state of parameter {position!r:.40}, which the optimizer does not have")
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor):
                # SGD without momentum keeps None; plain numbers are scalar state (a `step` count)
                if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                    raise CheckpointError(f"{where}: state[{position}].{key} is not a tensor or a number")
            elif not value.dtype.is_floating_point:
                raise CheckpointError(
                    f"{where}: state[{position}].{key} is a {value.dtype} tensor, not floating point"
                )
            elif value.dim() > 0 and value.shape != shapes[position]:
                raise CheckpointError(
                    f"{where}: state[{position}].{key} has shape {tuple(value.shape)}, the parameter "
                    f"{tuple(shapes[position])}"
                )


def check_like_live(state: Any, live_state: dict[str, Any], where: str) -> None:
    """A scheduler's or scaler's saved state has exactly the keys and types of the live object's `state_dict()`."""
    _check_like(state, live_state, where)


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
