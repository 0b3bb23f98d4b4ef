"""MTCNN's weights (`avemotion.processing.face_weights`): from a wheel or an installed distribution into the cache,
and back, safely.

Offline: no test calls pip. The wheels are fakes built here (random tensors of the right shapes, the pinned hashes
patched to theirs), so the tests run without facenet-pytorch's real wheel; the real files are checked when they are
on this machine.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from avemotion.cli import main
from avemotion.processing import face_weights
from avemotion.processing.face_weights import (
    MTCNN_MEMBERS,
    MTCNN_WEIGHT_SHAPES,
    MissingFaceDetectorWeightsError,
    check_mtcnn_weights,
    download_mtcnn_weights,
    load_mtcnn_weights,
    mtcnn_weights_path,
)

REAL_WHEEL = Path("/tmp/wh/facenet_pytorch-2.6.0-py3-none-any.whl")


def _random_networks(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """network -> its own state dict (keys without the prefix), random float32 tensors of MTCNN's shapes."""
    generator = torch.Generator().manual_seed(seed)
    networks: dict[str, dict[str, torch.Tensor]] = {name: {} for name in MTCNN_MEMBERS}
    for key, shape in MTCNN_WEIGHT_SHAPES.items():
        network, name = key.split(".", 1)
        networks[network][name] = torch.randn(shape, generator=generator)
    return networks


def _pt_bytes(state: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _pin(monkeypatch, members: dict[str, bytes]) -> None:
    """Make the pinned sha256 of each network's member the hash of `members[network]`."""
    pinned = {
        network: (member, hashlib.sha256(members[network]).hexdigest())
        for network, (member, _) in MTCNN_MEMBERS.items()
    }
    monkeypatch.setattr(face_weights, "MTCNN_MEMBERS", pinned)


def _write_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("facenet_pytorch/__init__.py", "raise SystemExit('never imported')\n")
        for network, data in members.items():
            archive.writestr(MTCNN_MEMBERS[network][0], data)
        archive.writestr("facenet_pytorch-2.6.0.dist-info/METADATA", "Name: facenet-pytorch\nVersion: 2.6.0\n")
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake facenet-pytorch wheel with random weights whose hashes are the pinned ones; an empty cache."""
    monkeypatch.setenv("AVEMOTION_CACHE", str(tmp_path / "cache"))
    networks = _random_networks()
    members = {network: _pt_bytes(state) for network, state in networks.items()}
    _pin(monkeypatch, members)
    wheel = _write_wheel(tmp_path / "facenet_pytorch-2.6.0-py3-none-any.whl", members)
    flat = {f"{network}.{key}": tensor for network, state in networks.items() for key, tensor in state.items()}
    return wheel, flat, members


def _no_distribution(monkeypatch) -> None:
    def distribution(name):
        raise face_weights.importlib_metadata.PackageNotFoundError(name)

    monkeypatch.setattr(face_weights.importlib_metadata, "distribution", distribution)


def test_the_pinned_shapes_are_the_mtcnn_networks():
    from avemotion.processing.mtcnn import MtcnnNetworks

    state = MtcnnNetworks().state_dict()
    assert {key: tuple(tensor.shape) for key, tensor in state.items()} == MTCNN_WEIGHT_SHAPES


def test_round_trip_from_a_wheel(fake, tmp_path):
    wheel, flat, _ = fake
    path = download_mtcnn_weights(wheel=wheel)
    assert path == mtcnn_weights_path() == tmp_path / "cache" / "face_detectors" / face_weights.WEIGHTS_FILE_NAME
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"source": face_weights.MTCNN_SOURCE, "license": "MIT", "format": "pt"}
    loaded = load_mtcnn_weights()
    assert list(loaded) == list(MTCNN_WEIGHT_SHAPES)
    assert all(torch.equal(loaded[key], flat[key]) for key in flat)
    assert all(torch.equal(load_mtcnn_weights(path)[key], flat[key]) for key in flat)
    # the returned tensors are copies: changing them leaves the next load alone
    loaded["pnet.conv1.bias"].zero_()
    assert torch.equal(load_mtcnn_weights()["pnet.conv1.bias"], flat["pnet.conv1.bias"])
    assert not list(path.parent.glob("*.tmp"))


def test_a_good_cache_file_is_kept_and_force_rewrites_it(fake, tmp_path, monkeypatch):
    wheel, _, _ = fake
    path = download_mtcnn_weights(wheel=wheel)
    stamp = path.stat().st_mtime_ns
    monkeypatch.setattr(face_weights, "read_wheel_weights", lambda wheel: pytest.fail("the wheel was read again"))
    assert download_mtcnn_weights() == path and path.stat().st_mtime_ns == stamp
    monkeypatch.undo()
    monkeypatch.setenv("AVEMOTION_CACHE", str(tmp_path / "cache"))
    path.write_bytes(b"damaged")
    _pin(monkeypatch, fake[2])
    with pytest.raises(ValueError, match="--force"):
        load_mtcnn_weights()
    assert download_mtcnn_weights(wheel=wheel) == path  # a damaged cache file is rewritten
    assert list(load_mtcnn_weights()) == list(MTCNN_WEIGHT_SHAPES)
    assert download_mtcnn_weights(wheel=wheel, force=True) == path


def test_without_a_wheel_pip_downloads_one(fake, monkeypatch):
    wheel, flat, _ = fake
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        folder = Path(command[command.index("-d") + 1])
        (folder / wheel.name).write_bytes(wheel.read_bytes())
        return face_weights.subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(face_weights.subprocess, "run", run)
    path = download_mtcnn_weights()
    assert calls and calls[0][:4] == [sys.executable, "-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", "facenet-pytorch==2.6.0"} <= set(calls[0])
    assert torch.equal(load_mtcnn_weights(path)["onet.dense6_3.bias"], flat["onet.dense6_3.bias"])


def test_a_failed_pip_download_says_what_to_do_offline(fake, monkeypatch):
    def run(command, **kwargs):
        return face_weights.subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(face_weights.subprocess, "run", run)
    with pytest.raises(OSError, match="No matching distribution.*--wheel PATH"):
        download_mtcnn_weights()
    assert not mtcnn_weights_path().exists()


def test_a_tampered_member_is_refused_naming_it(fake, tmp_path):
    _, _, members = fake
    tampered = dict(members, rnet=members["rnet"][:-1] + bytes([members["rnet"][-1] ^ 1]))
    wheel = _write_wheel(tmp_path / "tampered.whl", tampered)
    actual = hashlib.sha256(tampered["rnet"]).hexdigest()
    with pytest.raises(ValueError, match=f"facenet_pytorch/data/rnet.pt: sha256 {actual} does not match") as error:
        download_mtcnn_weights(wheel=wheel)
    assert face_weights.MTCNN_MEMBERS["rnet"][1] in str(error.value)
    assert not mtcnn_weights_path().exists()


class _Payload:
    """A pickle that, when loaded by an unrestricted unpickler, creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_member_that_runs_code_is_refused_and_nothing_runs(fake, tmp_path, monkeypatch):
    _, _, members = fake
    marker = tmp_path / "ran"
    payload = _pt_bytes({"conv1.weight": _Payload(marker)})
    crafted = dict(members, pnet=payload)
    _pin(monkeypatch, crafted)  # the hash matches: only weights_only stands between the pickle and os.system
    wheel = _write_wheel(tmp_path / "payload.whl", crafted)
    with pytest.raises(ValueError, match="facenet_pytorch/data/pnet.pt: not a plain PyTorch state dict"):
        download_mtcnn_weights(wheel=wheel)
    assert not marker.exists()
    # the same payload given as a weights file: read as safetensors only, so refused without unpickling
    pickled = tmp_path / "weights.safetensors"
    pickled.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match=f"{pickled}: not a safetensors file"):
        load_mtcnn_weights(pickled)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda state: state.pop("rnet.dense4.bias"), "missing MTCNN weight 'rnet.dense4.bias'"),
        (lambda state: state.update(extra=torch.zeros(1)), "unexpected MTCNN weight 'extra'"),
        (
            lambda state: state.update({"onet.dense5.weight": torch.zeros(256, 1151)}),
            "MTCNN weight 'onet.dense5.weight' has shape",
        ),
        (
            lambda state: state["pnet.prelu2.weight"].__setitem__(3, float("nan")),
            "MTCNN weight 'pnet.prelu2.weight' holds NaN",
        ),
        (
            lambda state: state.update({"pnet.conv1.bias": torch.zeros(10, dtype=torch.float64)}),
            "MTCNN weight 'pnet.conv1.bias' is torch.float64",
        ),
    ],
    ids=["missing", "unexpected", "shape", "nan", "float64"],
)
def test_bad_weights_are_refused_naming_the_key(fake, tmp_path, change, message):
    state = {key: tensor.clone() for key, tensor in fake[1].items()}
    change(state)
    with pytest.raises(ValueError, match=f"^where: {message}"):
        check_mtcnn_weights(state, "where")
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        load_mtcnn_weights(path)


def test_a_member_with_wrong_shapes_is_refused_naming_member_and_key(fake, tmp_path, monkeypatch):
    _, _, members = fake
    state = _random_networks()["onet"]
    state["conv4.weight"] = torch.zeros(128, 64, 3, 3)
    crafted = dict(members, onet=_pt_bytes(state))
    _pin(monkeypatch, crafted)
    with pytest.raises(ValueError, match="onet.pt: MTCNN weight 'conv4.weight' has shape"):
        download_mtcnn_weights(wheel=_write_wheel(tmp_path / "shapes.whl", crafted))


def test_missing_weights_say_the_one_command_that_installs_them(tmp_path, monkeypatch):
    monkeypatch.setenv("AVEMOTION_CACHE", str(tmp_path / "empty"))
    _no_distribution(monkeypatch)
    with pytest.raises(MissingFaceDetectorWeightsError) as error:
        load_mtcnn_weights()
    assert isinstance(error.value, OSError)
    message = str(error.value)
    assert "avemotion download-face-detector" in message and "$AVEMOTION_CACHE" in message
    assert str(mtcnn_weights_path()) in message
    with pytest.raises(FileNotFoundError, match="no-such.safetensors"):
        load_mtcnn_weights(tmp_path / "no-such.safetensors")


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AVEMOTION_CACHE", str(tmp_path / "a"))
    assert face_weights.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("AVEMOTION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert face_weights.default_cache_dir() == tmp_path / "xdg" / "avemotion"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mtcnn_weights_path() == tmp_path / "home" / ".cache" / "avemotion" / "face_detectors" / (
        "mtcnn-facenet-pytorch-2.6.0.safetensors"
    )
    assert mtcnn_weights_path(tmp_path / "c") == tmp_path / "c" / "face_detectors" / face_weights.WEIGHTS_FILE_NAME


def _install_fake_distribution(root: Path, members: dict[str, bytes]) -> None:
    info = root / "facenet_pytorch-2.6.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: facenet-pytorch\nVersion: 2.6.0\n")
    record = ["facenet_pytorch/__init__.py,,"]
    package = root / "facenet_pytorch"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text(f"open({str(root / 'imported')!r}, 'w').close()\n")
    for network, data in members.items():
        member = MTCNN_MEMBERS[network][0]
        (root / member).write_bytes(data)
        record.append(f"{member},,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


def test_an_installed_distribution_is_found_without_importing_it(fake, tmp_path, monkeypatch):
    _, flat, members = fake
    site = tmp_path / "site"
    _install_fake_distribution(site, members)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "facenet_pytorch", raising=False)
    loaded = load_mtcnn_weights()
    assert all(torch.equal(loaded[key], flat[key]) for key in flat)
    assert "facenet_pytorch" not in sys.modules and not (site / "imported").exists()
    # a data file that is not the pinned one is refused, naming it
    (site / MTCNN_MEMBERS["onet"][0]).write_bytes(members["onet"] + b"\0")
    with pytest.raises(ValueError, match="onet.pt: sha256 .* does not match"):
        load_mtcnn_weights()


def test_the_command_writes_the_file(fake, tmp_path, capsys):
    wheel, _, _ = fake
    cache = tmp_path / "cli-cache"
    assert main(["download-face-detector", "--wheel", str(wheel), "--cache_dir", str(cache)]) == 0
    path = mtcnn_weights_path(cache)
    assert path.is_file() and capsys.readouterr().out.strip() == str(path)
    assert list(load_mtcnn_weights(path)) == list(MTCNN_WEIGHT_SHAPES)
    assert main(["download-face-detector", "--cache-dir", str(cache)]) == 0  # found, nothing downloaded


def test_the_command_with_a_bad_wheel_exits_2(fake, tmp_path, capsys):
    cache = ["--cache_dir", str(tmp_path / "c")]
    assert main(["download-face-detector", "--wheel", str(tmp_path / "missing.whl"), *cache]) == 2
    assert "missing.whl: no such wheel file" in capsys.readouterr().err
    not_a_zip = tmp_path / "not-a-zip.whl"
    not_a_zip.write_bytes(b"not a zip")
    assert main(["download-face-detector", "--wheel", str(not_a_zip), *cache]) == 2
    assert "not a readable wheel" in capsys.readouterr().err
    other = tmp_path / "other.whl"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("something/else.py", "")
    assert main(["download-face-detector", "--wheel", str(other), *cache]) == 2
    assert "no facenet_pytorch/data/pnet.pt" in capsys.readouterr().err


@pytest.mark.skipif(not REAL_WHEEL.is_file(), reason="facenet-pytorch 2.6.0's wheel is not at /tmp/wh")
def test_the_real_wheel_matches_the_pinned_hashes_and_shapes(tmp_path):
    path = download_mtcnn_weights(wheel=REAL_WHEEL, cache_dir=tmp_path)
    assert {key: tuple(tensor.shape) for key, tensor in load_mtcnn_weights(path).items()} == MTCNN_WEIGHT_SHAPES


def test_the_cache_file_on_this_machine_has_exactly_the_mtcnn_weights():
    path = mtcnn_weights_path()
    if not path.is_file():
        pytest.skip(f"no MTCNN weights at {path} (run `avemotion download-face-detector`)")
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()["license"] == "MIT"
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    assert shapes == MTCNN_WEIGHT_SHAPES
    assert list(load_mtcnn_weights(path)) == list(MTCNN_WEIGHT_SHAPES)
