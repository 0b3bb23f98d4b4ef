"""`avemotion.utils.safe_pickle`: crafted pickles are refused before any of their code runs; numpy data still loads."""

import copyreg
import io
import os
import pickle

import numpy as np
import pytest

from avemotion.utils.safe_pickle import (
    NUMPY_GLOBALS,
    PickleReadError,
    RestrictedUnpickler,
    UnsafePickleError,
    restricted_load,
)


def _text(value: str) -> bytes:
    data = value.encode()
    return pickle.BINUNICODE + len(data).to_bytes(4, "little") + data


def _global(module: str, name: str, stack: bool) -> bytes:
    """Push a global: protocol 4's STACK_GLOBAL, or the GLOBAL opcode of protocols 0-3."""
    if stack:
        return _text(module) + _text(name) + pickle.STACK_GLOBAL
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _call(*args) -> bytes:
    """Call the callable on the stack with string (or empty dict) arguments."""
    encoded = b"".join(pickle.EMPTY_DICT if arg == {} else _text(arg) for arg in args)
    return pickle.MARK + encoded + pickle.TUPLE + pickle.REDUCE


def _pickle(body: bytes) -> bytes:
    return pickle.PROTO + b"\x04" + body + pickle.STOP


def _write_marker(marker) -> str:
    return f"open({str(marker)!r}, 'w').write('code ran')"


def _assert_refused(data: bytes, marker, match: str):
    with pytest.raises(UnsafePickleError, match=match) as info:
        restricted_load(data, NUMPY_GLOBALS, name="crafted.pkl")
    assert str(info.value).startswith("crafted.pkl: refusing")
    assert isinstance(info.value, ValueError) and isinstance(info.value, pickle.UnpicklingError)
    assert not marker.exists(), "code from the pickle ran"


@pytest.mark.parametrize("stack", [True, False], ids=["STACK_GLOBAL", "GLOBAL"])
def test_dotted_name_through_numpy_dtypes_to_eval_is_refused(tmp_path, stack):
    marker = tmp_path / "marker"
    # numpy.dtypes.__builtins__.get("eval")(code): the route the old numpy-only unpickler let through
    data = _pickle(_global("numpy.dtypes", "__builtins__.get", stack) + _call("eval") + _call(_write_marker(marker)))
    _assert_refused(data, marker, r"refusing to load numpy\.dtypes\.__builtins__\.get \(a dotted")
    # the payload is real: plain pickle runs it (which is why it must never see user files)
    pickle.loads(data)
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize(
    "module, name, args",
    [
        ("numpy", "load", ("x.npy",)),
        ("numpy.testing", "runstring", ("CODE", {})),  # exec()s its argument
        ("numpy.testing._private.utils", "runstring", ("CODE", {})),
        ("numpy.f2py", "run_main", ("CODE",)),
        ("numpy.f2py", "os", ()),  # a module reached as an attribute
        ("numpy", "dtypes", ()),  # a whole module
        ("numpy.dtypes", "__builtins__", ()),
        ("numpy.dtypes", "Float32DType.__init__", ()),  # dotted name from an allowed class
    ],
)
def test_numpy_internals_not_on_the_list_are_refused(tmp_path, module, name, args):
    marker = tmp_path / "marker"
    args = tuple(_write_marker(marker) if arg == "CODE" else arg for arg in args)
    data = _pickle(_global(module, name, stack=True) + (_call(*args) if args else b""))
    _assert_refused(data, marker, f"refusing to load {module}.{name}")


class _OsSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_classic_os_system_reduce_is_refused(tmp_path, protocol):
    marker = tmp_path / "marker"
    data = pickle.dumps((np.zeros(3), _OsSystem(marker)), protocol=protocol)
    _assert_refused(data, marker, r"refusing to load (posix|nt)\.system")


@pytest.mark.parametrize(
    "body",
    [
        lambda code: _global("builtins", "eval", True) + _call(code),
        lambda code: _global("__builtin__", "eval", False) + _call(code),  # the protocol 0-2 spelling
        lambda code: _global("builtins", "exec", True) + _call(code),
        # getattr(numpy.dtypes, "__builtins__") without a dotted name
        lambda code: (
            _global("builtins", "getattr", True)
            + pickle.MARK
            + _global("numpy", "dtypes", True)
            + _text("__builtins__")
            + pickle.TUPLE
            + pickle.REDUCE
        ),
    ],
    ids=["builtins.eval", "__builtin__.eval", "builtins.exec", "builtins.getattr"],
)
def test_builtins_eval_and_getattr_are_refused(tmp_path, body):
    marker = tmp_path / "marker"
    _assert_refused(_pickle(body(_write_marker(marker))), marker, r"refusing to load (builtins|numpy)\.")


def test_persistent_ids_are_refused(tmp_path):
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage-0" if isinstance(obj, str) and obj == "external" else None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=4).dump(("external", np.ones(2)))
    with pytest.raises(UnsafePickleError, match=r"stats\.pkl: refusing a persistent id"):
        restricted_load(buffer.getvalue(), NUMPY_GLOBALS, name="stats.pkl")


def test_copyreg_extension_codes_go_through_the_allow_list(tmp_path):
    marker = tmp_path / "marker"
    code = 0x7FFF_F0A1
    copyreg.add_extension("os", "system", code)
    try:
        data = _pickle(pickle.EXT4 + code.to_bytes(4, "little") + _call(f"touch '{marker}'"))
        _assert_refused(data, marker, r"refusing to load os\.system")
    finally:
        copyreg.remove_extension("os", "system", code)


def test_allow_list_rejects_dotted_names_and_modules():
    with pytest.raises(ValueError, match="no dots"):
        RestrictedUnpickler(io.BytesIO(), {("numpy.dtypes", "__builtins__.get")})
    data = _pickle(_global("numpy", "dtypes", stack=True))
    with pytest.raises(UnsafePickleError, match=r"numpy\.dtypes \(a module\)"):
        restricted_load(data, {("numpy", "dtypes")}, name="m.pkl")


NUMPY_DATA = (
    np.float32(0.01),
    np.float64(0.2),
    np.int64(-3),
    np.bool_(True),
    np.linspace(-1, 1, 1408).astype(np.float32),
    np.arange(12, dtype=np.float64).reshape(3, 4).T,  # not C-contiguous
    np.zeros((0, 2), dtype=np.int16),
    np.array(["a", "bc"]),
    np.dtype("float32"),
    np.dtype("<i8"),
    [1.5, (2, "x"), {"k": np.ones(2, dtype=np.complex64)}, {3}, b"raw", bytearray(b"ba")],
)


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_numpy_pickles_written_by_numpy_2_load(tmp_path, protocol):
    path = tmp_path / "stats.pkl"
    path.write_bytes(pickle.dumps(NUMPY_DATA, protocol=protocol))
    loaded = restricted_load(path, NUMPY_GLOBALS)
    assert len(loaded) == len(NUMPY_DATA)
    for got, want in zip(loaded[:-1], NUMPY_DATA[:-1]):
        if isinstance(want, np.dtype):
            assert got == want
        else:
            assert type(got) is type(want) and got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    assert loaded[-1][:2] == [1.5, (2, "x")] and loaded[-1][3:] == [{3}, b"raw", bytearray(b"ba")]
    np.testing.assert_array_equal(loaded[-1][2]["k"], np.ones(2, dtype=np.complex64))
    # dtype classes are pickled by exact name too
    assert restricted_load(pickle.dumps(type(np.dtype("float32")), protocol=protocol), NUMPY_GLOBALS) is type(
        np.dtype("float32")
    )


def _forged_dtype_array(dtype_state_edit) -> bytes:
    """An array pickle that names only allowed globals but whose dtype's BUILD state is edited."""
    from numpy._core.multiarray import _reconstruct

    cls, args, state = np.dtype([("a", "O")]).__reduce__()
    state = dtype_state_edit(state)

    class ForgedDtype:
        def __reduce__(self):
            return cls, ("V8", False, True), state

    class ForgedArray:
        def __reduce__(self):
            return _reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), ForgedDtype(), False, b"A" * 8)

    return pickle.dumps(ForgedArray(), protocol=2)


@pytest.mark.parametrize(
    "edit",
    [
        lambda state: state[:-1] + (0,),  # object field, flags of a dtype without objects: bytes read as pointers
        lambda state: state[:-1] + (1,),
        lambda state: state,  # fields added to a plain void dtype
    ],
    ids=["fields-flags-0", "fields-flags-1", "fields-real-flags"],
)
def test_forged_dtype_states_are_refused_before_any_array_is_built(edit):
    """Only allowed globals, but `dtype.__setstate__` would give a void dtype object fields; the array built on it
    would read file bytes as object pointers (a segfault seen before the BUILD check)."""
    data = _forged_dtype_array(edit)
    assert b"numpy" in data and b"posix" not in data and b"builtins" not in data
    with pytest.raises(UnsafePickleError, match="refusing a dtype state that adds fields"):
        restricted_load(data, NUMPY_GLOBALS)


def test_dtype_states_that_change_flags_are_refused_and_byte_order_is_kept():
    cls, args, state = np.dtype("V8").__reduce__()

    class FlagEdit:
        def __reduce__(self):
            return cls, args, state[:-1] + (1,)

    with pytest.raises(UnsafePickleError, match="changes its flags"):
        restricted_load(pickle.dumps(FlagEdit(), protocol=2), NUMPY_GLOBALS)
    big_endian = np.arange(4, dtype=">f8")
    loaded = restricted_load(pickle.dumps(big_endian, protocol=2), NUMPY_GLOBALS)
    assert loaded.dtype == pickle.loads(pickle.dumps(big_endian, protocol=2)).dtype  # numpy's own choice of order
    np.testing.assert_array_equal(loaded, big_endian)


def test_numpy_1_module_names_load():
    """numpy 1.x writes `numpy.core.multiarray`; those exact pairs resolve to numpy 2's objects."""
    data = pickle.dumps(np.arange(3.0), protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in data
    np.testing.assert_array_equal(restricted_load(data, NUMPY_GLOBALS), np.arange(3.0))


def test_corrupt_or_missing_files_name_the_file(tmp_path):
    path = tmp_path / "stats.pkl"
    path.write_bytes(pickle.dumps(np.ones(10))[:-7])
    with pytest.raises(PickleReadError, match=f"{path}: not a readable pickle"):
        restricted_load(path, NUMPY_GLOBALS)
    with pytest.raises(PickleReadError, match="missing.pkl: cannot be opened"):
        restricted_load(tmp_path / "missing.pkl", NUMPY_GLOBALS)
    # an allowed callable with crafted arguments is a read error, not a crash
    data = _pickle(_global("numpy", "dtype", stack=True) + _call("no-such-type"))
    with pytest.raises(PickleReadError, match="bad.pkl: not a readable pickle"):
        restricted_load(data, NUMPY_GLOBALS, name="bad.pkl")


def test_bytes_of_a_size_is_refused_before_allocating(tmp_path):
    """`bytes(2**40)` would zero-fill a terabyte: a size is not data."""
    import pickle

    from avemotion.utils.safe_pickle import BUILTIN_GLOBALS, PickleReadError, restricted_load

    for kind in (b"bytes", b"bytearray"):
        payload = b"cbuiltins\n" + kind + b"\n(\x8a\x06\x00\x00\x00\x00\x00\x01tR."  # kind(2**40), LONG1
        path = tmp_path / "big.pkl"
        path.write_bytes(b"\x80\x02" + payload)
        with pytest.raises(PickleReadError, match=r"refusing .*\(1099511627776\): a size, not data"):
            restricted_load(path, BUILTIN_GLOBALS)
    data = {"raw": b"\x00\x01", "buffer": bytearray(b"ab")}
    for protocol in range(6):
        (tmp_path / "ok.pkl").write_bytes(pickle.dumps(data, protocol=protocol))
        assert restricted_load(tmp_path / "ok.pkl", BUILTIN_GLOBALS) == data
