"""Reading a whole pickled PyTorch module (`torch.save(model)`, zip format) as plain data, without running its code.

`torch.load` of such a file imports every class the file names (timm's, for HSEmotion's checkpoints) and rebuilds
the model by calling them: a crafted file runs arbitrary code, and a file written by another timm release does not
load at all. `load_pickled_module` reads the same file through `avemotion.utils.safe_pickle.RestrictedUnpickler`:

- a class named under `timm.` or `torch.nn.` (any release's module path, by exact class name) becomes a stand-in
  (`PickledObject`) that records the module and class names and the pickled state; nothing is imported or resolved;
- tensors are rebuilt by our own functions from the archive's storage records (persistent ids
  `('storage', <torch.XStorage>, key, location, numel)`), never through torch's rebuild functions: each stays inside
  its storage, has no stride 0 (an expanded view) and no more elements than its storage; all tensors together hold
  no more elements than the archive has storage bytes, so a small file cannot make the copies large;
- BUILD (`__setstate__`) runs only on stand-ins: on a tensor it would be `Tensor.set_()` (re-pointing it at any
  size of uninitialised memory), so it is refused there and on everything else; storages are not resizable;
- the archive's entries must be stored uncompressed, as `torch.save` writes them (no decompression bomb), each no
  larger than the file, `data.pkl` at most `MAX_DATA_PKL_BYTES`;
- every other global (`os.system`, `builtins.eval`, dotted names, ...) is refused before anything is called
  (`UnsafePickleError`), as is any other persistent id.

The result is a `ModuleRecord` tree: class names, plain attributes, parameters and buffers by their state-dict names.
"""

from __future__ import annotations

import builtins
import codecs
import collections
import io
import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from avemotion.utils.safe_pickle import BUILTIN_GLOBALS, PickleReadError, RestrictedUnpickler, UnsafePickleError

__all__ = ["ModuleRecord", "PickledObject", "load_pickled_module", "pickled_name"]

# Module prefixes whose classes are taken by name into stand-ins (never imported): timm's layers and blocks as any
# release spelled them (`timm.models.efficientnet_blocks`, `timm.models.layers.*`, `timm.layers.*`, ...), torch.nn's.
STAND_IN_PREFIXES = ("timm.", "torch.nn.")
# Functions some timm releases store as attributes (e.g. SqueezeExcite's `gate_fn`); stand-ins too, never resolved.
STAND_IN_GLOBALS = frozenset({("torch", "sigmoid"), ("torch", "tanh"), ("torch", "relu")})

# torch's typed storage classes as `torch.save` names them in storage records -> element dtype.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_MODULE_STATE_KEYS = ("_parameters", "_buffers", "_modules")
# The largest `data.pkl` read (HSEmotion's B2 pickle is ~100 KB: it holds structure, the tensors are separate entries).
MAX_DATA_PKL_BYTES = 64 * 2**20


class PickledObject:
    """Stand-in for an object of a class the file names: holds `pickled_module`/`pickled_name` (on its class), the
    arguments it was created with and its pickled `state`, as plain data. It has no behaviour of the real class."""

    pickled_module = ""
    pickled_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        if cls is PickledObject:
            raise TypeError("PickledObject itself is not a stand-in")
        instance = object.__new__(cls)
        instance.args, instance.kwargs, instance.state = args, kwargs, None
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls the class: record, do nothing
        pass

    def __setstate__(self, state: Any) -> None:  # BUILD: keep the state as data
        self.state = state

    def __repr__(self) -> str:
        return f"<pickled {self.pickled_module}.{self.pickled_name}>"


_STAND_INS: dict[tuple[str, str], type[PickledObject]] = {}


def _stand_in(module: str, name: str) -> type[PickledObject]:
    key = (module, name)
    if key not in _STAND_INS:
        _STAND_INS[key] = type(name, (PickledObject,), {"pickled_module": module, "pickled_name": name})
    return _STAND_INS[key]


def pickled_name(value: Any) -> str | None:
    """The class (or function) name a stand-in or stand-in class stands for; None for anything else."""
    if isinstance(value, type) and issubclass(value, PickledObject):
        return value.pickled_name
    if isinstance(value, PickledObject):
        return type(value).pickled_name
    return None


@dataclass(frozen=True)
class _StorageType:
    """What `torch.FloatStorage` & co. resolve to: only a dtype marker for storage records (not callable)."""

    name: str
    dtype: torch.dtype


@dataclass(frozen=True)
class _Storage:
    """One storage of the archive: a flat tensor of its elements, on memory that cannot be resized."""

    key: str
    data: torch.Tensor


def _check_ints(name: str, values: Any, length: int | None = None) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not all(type(v) is int and v >= 0 for v in values):
        raise ValueError(f"{name} must be a tuple of non-negative ints, got {values!r}")
    if length is not None and len(values) != length:
        raise ValueError(f"{name} has {len(values)} entries, expected {length}")
    return tuple(values)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_ignored: Any) -> torch.Tensor:
    """`torch._utils._rebuild_tensor(_v2)`: a strided view of one storage, bounds-checked. Hooks and metadata (the
    trailing arguments) are ignored: nothing from the file is attached to the tensor."""
    if not isinstance(storage, _Storage):
        raise ValueError(f"a tensor must be built on a storage record, got {type(storage).__name__}")
    (offset,) = _check_ints("storage_offset", (storage_offset,))
    size = _check_ints("size", size)
    stride = _check_ints("stride", stride, len(size))
    numel = storage.data.numel()
    what = f"tensor of size {size}, stride {stride} on storage {storage.key}"
    if any(s == 0 and n > 1 for n, s in zip(size, stride)):
        raise ValueError(f"{what} repeats elements (stride 0); expected a stride > 0 on every dimension of size > 1")
    count = math.prod(size)
    if count > numel:
        raise ValueError(f"{what} has {count} elements, more than the {numel} of its storage")
    if count > 0:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= numel:
            raise ValueError(f"tensor of size {size} at offset {offset} runs past its storage of {numel} elements")
    elif offset > numel:
        raise ValueError(f"storage offset {offset} is past its storage of {numel} elements")
    return storage.data.as_strided(size, stride, offset)


def _rebuild_parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    """`torch._utils._rebuild_parameter(_with_state)`: the plain tensor (no Parameter, hooks or state)."""
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"a parameter must hold a tensor, got {type(data).__name__}")
    return data


def _plain_data_only(constructor: Any) -> Any:
    """`constructor` called on plain data only: `bytes(2**34)` would zero-fill 16 GB from a few bytes of pickle, and
    `list(tensor)` iterates a tensor of shape (2**40, 0). A pickle from `torch.save` never does either."""

    def construct(*args: Any, **kwargs: Any) -> Any:
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, (torch.Tensor, _Storage, PickledObject)) or (
                constructor in (bytes, bytearray) and isinstance(arg, int)
            ):
                raise ValueError(f"{constructor.__name__}() of a {type(arg).__name__}: expected plain data")
        return constructor(*args, **kwargs)

    return construct


def _builtin_globals() -> dict[tuple[str, str], Any]:
    """`BUILTIN_GLOBALS` (plain containers), resolved from the three modules it names, callable on plain data only."""
    modules = {"builtins": builtins, "collections": collections, "_codecs": codecs}
    return {(module, name): _plain_data_only(getattr(modules[module], name)) for module, name in BUILTIN_GLOBALS}


_TORCH_GLOBALS: dict[tuple[str, str], Any] = {
    **_builtin_globals(),
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


def _is_stand_in(module: str, name: str) -> bool:
    if (module, name) in STAND_IN_GLOBALS:
        return True
    return module.startswith(STAND_IN_PREFIXES) and all(part.isidentifier() for part in module.split("."))


class _ModuleUnpickler(RestrictedUnpickler):
    """The restricted unpickler plus stand-ins for timm/torch.nn classes and the archive's storage records."""

    def __init__(self, file: io.BufferedIOBase, archive: zipfile.ZipFile, prefix: str, name: str):
        super().__init__(file, _TORCH_GLOBALS, name=name)
        self._archive, self._prefix = archive, prefix
        self._storages: dict[str, _Storage] = {}

    dispatch = dict(RestrictedUnpickler.dispatch)

    def load_build(self) -> None:
        instance = self.stack[-2]
        if not isinstance(instance, PickledObject):
            # `Tensor.__setstate__` is `set_()`: a file could re-point a tensor at any size of uninitialised memory
            kind = pickled_name(instance) or type(instance).__name__
            raise UnsafePickleError(
                f"{self.file_name}: refusing to set the state of a {kind} (pickle BUILD); only stand-ins of "
                "timm/torch.nn objects take a state; the file was not loaded",
                self.file_name,
            )
        RestrictedUnpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module: str, name: str) -> Any:
        if "." not in name and name.isidentifier() and _is_stand_in(module, name):
            return _stand_in(module, name)
        return super().find_class(module, name)  # the allow-list; refuses dotted names and everything else

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafePickleError(
                f"{self.file_name}: refusing a persistent id that is not a storage record ({pid!r:.80}); "
                "the file was not loaded",
                self.file_name,
            )
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"{self.file_name}: storage record with type {storage_type!r:.80}", self.file_name)
        if not (isinstance(key, str) and key.isalnum() and type(numel) is int and numel >= 0):
            raise PickleReadError(f"{self.file_name}: malformed storage record {pid!r:.120}")
        if key not in self._storages:
            try:
                info = self._archive.getinfo(f"{self._prefix}data/{key}")
            except KeyError as error:
                raise PickleReadError(f"{self.file_name}: storage {key} is missing from the archive") from error
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            if info.file_size != numel * itemsize:  # checked before anything is decompressed
                raise PickleReadError(
                    f"{self.file_name}: storage {key} holds {info.file_size} bytes, its record says {numel} x {itemsize}"
                )
            raw = bytearray(self._archive.read(info) or bytes(itemsize))  # an empty storage: a 0-element view
            # on a bytearray, torch's storage is not resizable: nothing can grow it past what the file holds
            data = torch.frombuffer(raw, dtype=storage_type.dtype)[:numel]
            self._storages[key] = _Storage(key, data)
        return self._storages[key]


@dataclass
class ModuleRecord:
    """One pickled `nn.Module` as data: its class names, plain attributes, tensors and sub-modules, in order."""

    class_module: str
    class_name: str
    attributes: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, torch.Tensor] = field(default_factory=dict)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    children: dict[str, ModuleRecord | None] = field(default_factory=dict)

    @property
    def qualified_name(self) -> str:
        return f"{self.class_module}.{self.class_name}"

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Tensors by their `state_dict` names (persistent buffers only), depth first as `nn.Module` orders them."""
        tensors = {prefix + name: tensor for name, tensor in self.parameters.items()}
        tensors.update({prefix + name: tensor for name, tensor in self.buffers.items()})
        for name, child in self.children.items():
            if child is not None:
                tensors.update(child.state_dict(f"{prefix}{name}."))
        return tensors

    def named_modules(self, prefix: str = "") -> list[tuple[str, ModuleRecord]]:
        found = [(prefix, self)]
        for name, child in self.children.items():
            if child is not None:
                found.extend(child.named_modules(f"{prefix}.{name}" if prefix else name))
        return found


class _ElementBudget:
    """How many tensor elements may still be copied out of the archive: at most its storage bytes in all. A pickle
    can name one storage (or one tensor) many times; each name is a copy."""

    def __init__(self, limit: int):
        self.limit = self.left = limit

    def take(self, tensor: torch.Tensor, what: str) -> None:
        if tensor.numel() > self.left:
            raise ValueError(
                f"{what} ({tuple(tensor.shape)}) brings the tensors past {self.limit} elements, the archive's "
                "storage bytes; expected tensors that do not re-use storage many times over"
            )
        self.left -= tensor.numel()


def _tensor_dict(value: Any, where: str, what: str, budget: _ElementBudget) -> dict[str, torch.Tensor]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {what} is a {type(value).__name__}, not a dict")
    tensors = {}
    for name, tensor in value.items():
        if tensor is None:
            continue
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{where}: {what}[{name!r:.40}] is a {type(tensor).__name__}, not a tensor")
        budget.take(tensor, f"{where}: {what}[{name!r:.40}]")  # before the copy is allocated
        tensors[name] = tensor.contiguous().clone()
    return tensors


def _to_record(value: Any, where: str, budget: _ElementBudget, depth: int = 0) -> ModuleRecord:
    if depth > 64:
        raise ValueError(f"{where}: modules nested more than 64 deep")
    if not isinstance(value, PickledObject) or not isinstance(value.state, dict):
        kind = pickled_name(value) or type(value).__name__
        raise ValueError(f"{where} is a {kind}, not a pickled torch.nn.Module")
    state = value.state
    if not all(isinstance(state.get(key), dict) for key in _MODULE_STATE_KEYS):
        raise ValueError(
            f"{where} ({type(value).pickled_name}) has no nn.Module state (_parameters/_buffers/_modules)"
        )
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    buffers = _tensor_dict(state["_buffers"], where, "_buffers", budget)
    record = ModuleRecord(
        class_module=type(value).pickled_module,
        class_name=type(value).pickled_name,
        attributes={k: v for k, v in state.items() if isinstance(k, str) and not k.startswith("_")},
        parameters=_tensor_dict(state["_parameters"], where, "_parameters", budget),
        buffers={name: tensor for name, tensor in buffers.items() if name not in non_persistent},
    )
    for name, child in state["_modules"].items():
        if not isinstance(name, str):
            raise ValueError(f"{where}: sub-module name {name!r:.40} is not a string")
        record.children[name] = None if child is None else _to_record(child, f"{where}.{name}", budget, depth + 1)
    return record


def load_pickled_module(path: str | Path) -> ModuleRecord:
    """Read a `torch.save(module)` file (zip format) as a `ModuleRecord`, without importing or calling anything it
    names. Raises `UnsafePickleError` for a pickle that would run code, `PickleReadError` for an unreadable one and
    `ValueError` (naming the file) for one that holds no whole nn.Module."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: not a zip-format torch file (torch.save since PyTorch 1.6); the legacy format is not supported"
        )
    file_size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():  # before anything is read: sizes from the zip headers alone mean nothing
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(
                    f"{path}: archive entry {info.filename!r:.80} is compressed (zip method {info.compress_type}); "
                    "torch.save stores entries uncompressed"
                )
            if info.file_size != info.compress_size or info.file_size > file_size:
                raise ValueError(
                    f"{path}: archive entry {info.filename!r:.80} claims {info.file_size} bytes, more than it or the "
                    f"file ({file_size} bytes) holds"
                )
        pickles = [name for name in archive.namelist() if name.endswith("data.pkl") and name.count("/") <= 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the torch archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        if archive.getinfo(pickles[0]).file_size > MAX_DATA_PKL_BYTES:
            raise ValueError(
                f"{path}: {pickles[0]} holds {archive.getinfo(pickles[0]).file_size} bytes; expected at most "
                f"{MAX_DATA_PKL_BYTES} (the pickle holds the structure, tensors are stored beside it)"
            )
        storage_bytes = sum(
            info.file_size for info in archive.infolist() if info.filename.startswith(prefix + "data/")
        )
        if prefix + "byteorder" in archive.namelist():
            byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder != "little":
                raise ValueError(f"{path}: tensors stored {byteorder}-endian; only little-endian files are read")
        handle = io.BytesIO(archive.read(pickles[0]))
        try:
            root = _ModuleUnpickler(handle, archive, prefix, str(path)).load()
        except PickleReadError:
            raise
        except Exception as error:  # corrupt data, or an allowed callable given bad arguments
            raise PickleReadError(f"{path}: not a readable torch pickle ({type(error).__name__}: {error})") from error
    return _to_record(root, f"{path}: the pickled object", _ElementBudget(storage_bytes))
