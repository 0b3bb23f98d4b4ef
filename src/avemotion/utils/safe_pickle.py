"""Reading pickles from user files without running code from them.

`pickle` builds objects by calling whatever global a file names, so a crafted file runs arbitrary code. The
`RestrictedUnpickler` resolves only an explicit allow-list of exact `(module, name)` pairs:

- never a dotted name: pickle protocol 4 resolves `name="a.b"` by attribute access, so one innocent-looking module
  reaches everything it imports (`numpy.dtypes` + `__builtins__.get` is `eval`);
- never a whole module, and nothing looked up by prefix (`numpy.*` would include `numpy.load`, `numpy.f2py`, ...);
- no persistent ids (`persistent_load` is refused: this format never needs them).

Every failure is a `PickleReadError` (a `pickle.UnpicklingError` and a `ValueError`) whose message names the file;
a refused global or persistent id is its subclass `UnsafePickleError`, which names the refused global.

`NUMPY_GLOBALS` allows numpy arrays, scalars and dtypes as numpy 1.x and 2.x write them (protocols 0-5), plus the
plain containers of `BUILTIN_GLOBALS`:

    stats = restricted_load("train_norm_stat.pkl", NUMPY_GLOBALS)

PyTorch files (`.pt`/`.pth` state dicts) need no help from here: `torch.load(path, weights_only=True)` runs torch's
own restricted unpickler (`torch._weights_only_unpickler`), which looks each `module.name` up in an allow-list of
objects (no attribute walk, no `STACK_GLOBAL`) and accepts only storage persistent ids. Always pass
`weights_only=True` explicitly.

This module is a low-level utility: it imports nothing from the rest of avemotion.
"""

from __future__ import annotations

import importlib
import inspect
import io
import os
import pickle
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = [
    "BUILTIN_GLOBALS",
    "NUMPY_GLOBALS",
    "PickleReadError",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "restricted_load",
]

# Plain data types that pickle protocols 0-3 name as globals (protocol 4+ has opcodes for most of them).
# `_codecs.encode` is how protocols 0-2 write `bytes` (numpy array buffers): it only applies a registered codec.
BUILTIN_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("builtins", "bool"),
        ("builtins", "bytearray"),
        ("builtins", "bytes"),
        ("builtins", "complex"),
        ("builtins", "dict"),
        ("builtins", "float"),
        ("builtins", "frozenset"),
        ("builtins", "int"),
        ("builtins", "list"),
        ("builtins", "set"),
        ("builtins", "str"),
        ("builtins", "tuple"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
    }
)

# The dtype classes of numpy >= 1.25 (`numpy.dtypes`), by exact name: numpy 2 pickles a dtype through its class.
_NUMPY_DTYPE_CLASSES = (
    "BoolDType",
    "ByteDType",
    "BytesDType",
    "CLongDoubleDType",
    "Complex64DType",
    "Complex128DType",
    "DateTime64DType",
    "Float16DType",
    "Float32DType",
    "Float64DType",
    "Int8DType",
    "Int16DType",
    "Int32DType",
    "Int64DType",
    "IntDType",
    "LongDType",
    "LongDoubleDType",
    "LongLongDType",
    "ObjectDType",
    "ShortDType",
    "StrDType",
    "StringDType",
    "TimeDelta64DType",
    "UByteDType",
    "UInt8DType",
    "UInt16DType",
    "UInt32DType",
    "UInt64DType",
    "UIntDType",
    "ULongDType",
    "ULongLongDType",
    "UShortDType",
    "VoidDType",
)

# numpy arrays, scalars and dtypes: `numpy._core.*` is where numpy 2 writes them from, `numpy.core.*` numpy 1.x.
NUMPY_GLOBALS: frozenset[tuple[str, str]] = BUILTIN_GLOBALS | frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),  # protocol 5
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        *(("numpy.dtypes", name) for name in _NUMPY_DTYPE_CLASSES),
    }
)

# Python 2 module names that protocols 0-2 may carry (the default `find_class` maps them; ours must too).
_PYTHON2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
# numpy 1.x module paths -> where numpy 2 keeps the same objects (avoids numpy 2's deprecated `numpy.core` shim).
_NUMPY_MOVED_MODULES = {
    "numpy.core.multiarray": "numpy._core.multiarray",
    "numpy.core.numeric": "numpy._core.numeric",
}
_UNRESOLVED = object()


class PickleReadError(pickle.UnpicklingError, ValueError):
    """A pickle file could not be read (corrupt, truncated, or refused); the message names the file."""


class UnsafePickleError(PickleReadError):
    """A pickle names a global (or a persistent id) that is not on the allow-list; nothing it names was called."""

    def __init__(self, message: str, file: str = "<pickle>", module: str | None = None, name: str | None = None):
        super().__init__(message)
        self.file, self.module, self.name = file, module, name


def _check_pair(pair: Any) -> tuple[str, str]:
    if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
        raise ValueError(f"allow-list entries must be (module, name) pairs of strings, got {pair!r}")
    module, name = pair
    if not module or not name.isidentifier():
        raise ValueError(f"allow-list entry {pair!r}: name must be one identifier (no dots), module non-empty")
    return module, name


def _import_global(module: str, name: str) -> Any:
    """`getattr(module, name)` with exactly one attribute step; numpy 1.x paths go to numpy 2's modules if present."""
    moved = _NUMPY_MOVED_MODULES.get(module)
    if moved is not None:
        try:
            return getattr(importlib.import_module(moved), name)
        except (ImportError, AttributeError):
            pass
    return getattr(importlib.import_module(module), name)


def _check_dtype_state(dtype: Any, state: Any) -> str | None:
    """Why a BUILD of a numpy dtype is unsafe, or None. `dtype.__setstate__` trusts its state: a file can give a plain
    void dtype object fields with the flags of a dtype without objects, and the array built on it then reads file
    bytes as object pointers (a crash, or worse). Only fieldless dtypes whose flags the state leaves unchanged pass."""
    if getattr(dtype, "fields", None) is not None or getattr(dtype, "subdtype", None) is not None:
        return "a structured or sub-array dtype"
    if not isinstance(state, tuple) or len(state) < 8:
        return "a malformed dtype state"
    if state[2:5] != (None, None, None):
        return "a dtype state that adds fields or a sub-array"
    if state[7] != dtype.flags:
        return f"a dtype state that changes its flags ({dtype.flags} -> {state[7]!r})"
    return None


def _sized_by_content(kind: type, file_name: str) -> Any:
    """`bytes`/`bytearray` for an unpickler: built from data only. `bytes(n)` with an integer would zero-fill n bytes
    (a few bytes of pickle asking for gigabytes); no pickle protocol writes that call."""

    def build(*args: Any) -> Any:
        if args and isinstance(args[0], int):
            raise PickleReadError(f"{file_name}: refusing {kind.__name__}({args[0]!r}): a size, not data")
        return kind(*args)

    return build


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that resolves only the exact `(module, name)` pairs of `allowed`.

    It is the pure-Python unpickler (slower than the C one, which is fine for statistics and checkpoints) because
    the C one cannot check a BUILD before it runs: numpy dtype states are checked first (`_check_dtype_state`).

    Args:
        file: a binary file object.
        allowed: `(module, name)` pairs (resolved by importing `module` and one `getattr`), or a mapping from such
            pairs to the objects to return. Names with dots and whole modules are refused even if listed.
        name: how error messages name the file.
        encoding, errors: as for `pickle.Unpickler` (Python 2 pickles of numpy arrays need `encoding="latin1"`).
    """

    def __init__(
        self,
        file: IO[bytes],
        allowed: Iterable[tuple[str, str]] | Mapping[tuple[str, str], Any],
        *,
        name: str = "<pickle>",
        encoding: str = "ASCII",
        errors: str = "strict",
    ):
        super().__init__(file, encoding=encoding, errors=errors)
        items = allowed.items() if isinstance(allowed, Mapping) else ((pair, _UNRESOLVED) for pair in allowed)
        self._allowed: dict[tuple[str, str], Any] = {_check_pair(pair): value for pair, value in items}
        self.file_name = name

    def _refuse(self, module: str, name: str, why: str) -> UnsafePickleError:
        return UnsafePickleError(
            f"{self.file_name}: refusing to load {module}.{name} ({why}); the file was not loaded",
            self.file_name,
            module,
            name,
        )

    def find_class(self, module: str, name: str) -> Any:
        module = _PYTHON2_MODULES.get(module, module)
        if "." in name or not name.isidentifier():
            # protocol 4 would resolve "a.b" attribute by attribute: the way from an allowed module to `eval`
            raise self._refuse(module, name, "a dotted or malformed name")
        key = (module, name)
        if key not in self._allowed:
            raise self._refuse(module, name, "not on the allow-list of plain data types")
        value = self._allowed[key]
        if value is _UNRESOLVED:
            try:
                value = _import_global(module, name)
            except (ImportError, AttributeError) as error:
                raise PickleReadError(f"{self.file_name}: {module}.{name} does not exist here ({error})") from error
            self._allowed[key] = value
        if inspect.ismodule(value):
            raise self._refuse(module, name, "a module")
        if value is bytes or value is bytearray:
            return _sized_by_content(value, self.file_name)
        return value

    dispatch = dict(pickle._Unpickler.dispatch)

    def load_build(self) -> None:
        state, instance = self.stack[-1], self.stack[-2]
        numpy = sys.modules.get("numpy")  # a numpy object can only exist here if numpy is imported
        if numpy is not None and isinstance(instance, numpy.dtype):
            why = _check_dtype_state(instance, state)
            if why is not None:
                raise UnsafePickleError(f"{self.file_name}: refusing {why}; the file was not loaded", self.file_name)
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self.file_name}: refusing a persistent id ({type(pid).__name__}); the file was not loaded",
            self.file_name,
        )


def restricted_load(
    file: str | os.PathLike | IO[bytes] | bytes,
    allowed: Iterable[tuple[str, str]] | Mapping[tuple[str, str], Any],
    *,
    name: str | None = None,
    encoding: str = "ASCII",
) -> Any:
    """Unpickle one object from a path, a binary file object or bytes, resolving only the globals in `allowed`.

    Raises `UnsafePickleError` for a refused global or persistent id (nothing the file names is called), and
    `PickleReadError` for any other failure (truncated, corrupt, wrong arguments); both name the file (`name`, else the
    path or the file object's name).
    """
    if isinstance(file, (str, os.PathLike)):
        path = Path(file)
        name = name or str(path)
        try:
            handle: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as error:
            raise PickleReadError(f"{name}: cannot be opened ({error.strerror or error})") from error
    elif isinstance(file, (bytes, bytearray, memoryview)):
        handle, name = io.BytesIO(bytes(file)), name or "<bytes>"
    else:
        handle, name = file, name or str(getattr(file, "name", "<pickle>"))
    try:
        return RestrictedUnpickler(handle, allowed, name=name, encoding=encoding).load()
    except PickleReadError:
        raise
    except Exception as error:  # truncated or corrupt data, or an allowed callable given bad arguments
        raise PickleReadError(f"{name}: not a readable pickle ({type(error).__name__}: {error})") from error
    finally:
        if handle is not file:
            handle.close()
