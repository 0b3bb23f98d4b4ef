"""MTCNN's trained weights: where they come from, how they get onto a machine, and how they are read safely.

The weights are the data files of the facenet-pytorch 2.6.0 wheel (MIT licence): `facenet_pytorch/data/pnet.pt`,
`rnet.pt` and `onet.pt`, three plain PyTorch state dicts. The package never imports `facenet_pytorch` and never
depends on it (its wheel pins torch<2.3 and pulls torchvision, which break this stack). Instead:

- `avemotion download-face-detector` (`download_mtcnn_weights`) gets the wheel (`pip download --no-deps`, or a wheel
  file given with `--wheel` for offline machines), reads the three members from the zip in memory (nothing is
  extracted, nothing imported), checks each against its pinned sha256, unpickles it with `torch.load(...,
  weights_only=True)` (tensors and containers only) and writes one safetensors file into the cache,
  `<cache>/face_detectors/mtcnn-facenet-pytorch-2.6.0.safetensors`.
- `load_mtcnn_weights()` reads that file (safetensors: no pickle), or, failing that, the data files of an installed
  facenet-pytorch distribution (found through `importlib.metadata`, again without importing it; hashes checked), or
  says how to install them (`MissingFaceDetectorWeightsError`).

Every state dict is checked (`check_mtcnn_weights`): exactly the keys and shapes of `MTCNN_WEIGHT_SHAPES`, float32,
finite; a bad one is a `ValueError` naming the file and the first bad key.

The cache folder is `$AVEMOTION_CACHE`, else `$XDG_CACHE_HOME/avemotion`, else `~/.cache/avemotion`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FACENET_PYTORCH_VERSION = "2.6.0"
FACENET_PYTORCH_REQUIREMENT = f"facenet-pytorch=={FACENET_PYTORCH_VERSION}"
# sha256 of the wheel on PyPI (informational: each member's own hash below is what is checked)
FACENET_PYTORCH_WHEEL_SHA256 = "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"
# network name -> (member of the wheel, its pinned sha256)
MTCNN_MEMBERS: dict[str, tuple[str, str]] = {
    "pnet": ("facenet_pytorch/data/pnet.pt", "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
    "rnet": ("facenet_pytorch/data/rnet.pt", "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
    "onet": ("facenet_pytorch/data/onet.pt", "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
}
MTCNN_SOURCE = (
    f"facenet-pytorch {FACENET_PYTORCH_VERSION} (https://github.com/timesler/facenet-pytorch), "
    "data files facenet_pytorch/data/pnet.pt, rnet.pt, onet.pt"
)
MTCNN_LICENSE = "MIT"
MTCNN_LICENSE_NOTICE = "MIT License, Copyright (c) 2019 Timothy Esler (facenet-pytorch)"
MTCNN_METADATA = {"source": MTCNN_SOURCE, "license": MTCNN_LICENSE, "format": "pt"}
WEIGHTS_FILE_NAME = f"mtcnn-facenet-pytorch-{FACENET_PYTORCH_VERSION}.safetensors"
DOWNLOAD_COMMAND = "avemotion download-face-detector"
# a member larger than this is not one of the three small state dicts (bounds what a crafted zip makes us read)
MAX_MEMBER_BYTES = 16 * 2**20

# flat state dict of `mtcnn.MtcnnNetworks`: "<network>.<layer>.<weight|bias>" -> shape (all float32)
MTCNN_WEIGHT_SHAPES: dict[str, tuple[int, ...]] = {
    "pnet.conv1.weight": (10, 3, 3, 3), "pnet.conv1.bias": (10,), "pnet.prelu1.weight": (10,),
    "pnet.conv2.weight": (16, 10, 3, 3), "pnet.conv2.bias": (16,), "pnet.prelu2.weight": (16,),
    "pnet.conv3.weight": (32, 16, 3, 3), "pnet.conv3.bias": (32,), "pnet.prelu3.weight": (32,),
    "pnet.conv4_1.weight": (2, 32, 1, 1), "pnet.conv4_1.bias": (2,),
    "pnet.conv4_2.weight": (4, 32, 1, 1), "pnet.conv4_2.bias": (4,),
    "rnet.conv1.weight": (28, 3, 3, 3), "rnet.conv1.bias": (28,), "rnet.prelu1.weight": (28,),
    "rnet.conv2.weight": (48, 28, 3, 3), "rnet.conv2.bias": (48,), "rnet.prelu2.weight": (48,),
    "rnet.conv3.weight": (64, 48, 2, 2), "rnet.conv3.bias": (64,), "rnet.prelu3.weight": (64,),
    "rnet.dense4.weight": (128, 576), "rnet.dense4.bias": (128,), "rnet.prelu4.weight": (128,),
    "rnet.dense5_1.weight": (2, 128), "rnet.dense5_1.bias": (2,),
    "rnet.dense5_2.weight": (4, 128), "rnet.dense5_2.bias": (4,),
    "onet.conv1.weight": (32, 3, 3, 3), "onet.conv1.bias": (32,), "onet.prelu1.weight": (32,),
    "onet.conv2.weight": (64, 32, 3, 3), "onet.conv2.bias": (64,), "onet.prelu2.weight": (64,),
    "onet.conv3.weight": (64, 64, 3, 3), "onet.conv3.bias": (64,), "onet.prelu3.weight": (64,),
    "onet.conv4.weight": (128, 64, 2, 2), "onet.conv4.bias": (128,), "onet.prelu4.weight": (128,),
    "onet.dense5.weight": (256, 1152), "onet.dense5.bias": (256,), "onet.prelu5.weight": (256,),
    "onet.dense6_1.weight": (2, 256), "onet.dense6_1.bias": (2,),
    "onet.dense6_2.weight": (4, 256), "onet.dense6_2.bias": (4,),
    "onet.dense6_3.weight": (10, 256), "onet.dense6_3.bias": (10,),
}  # fmt: skip


class MissingFaceDetectorWeightsError(OSError):
    """MTCNN's weights are not on this machine; the message gives the one command that installs them."""


# ------------------------------------------------------------------------------------------------------- locations


def default_cache_dir() -> Path:
    """avemotion's cache folder: `$AVEMOTION_CACHE`, else `$XDG_CACHE_HOME/avemotion`, else `~/.cache/avemotion`."""
    if os.environ.get("AVEMOTION_CACHE"):
        return Path(os.environ["AVEMOTION_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "avemotion"
    return Path.home() / ".cache" / "avemotion"


def mtcnn_weights_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """The MTCNN weights file in `cache_dir` (default: `default_cache_dir()`)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "face_detectors" / WEIGHTS_FILE_NAME


# ------------------------------------------------------------------------------------------------------- checks


def _check(weights: object, expected: Mapping[str, tuple[int, ...]], where: str) -> dict[str, torch.Tensor]:
    """`weights` with exactly `expected`'s keys and shapes, float32 and finite (in `expected`'s order)."""
    if not isinstance(weights, Mapping):
        raise ValueError(
            f"{where}: expected a state dict (a mapping of names to tensors), got {type(weights).__name__}"
        )
    missing = [key for key in expected if key not in weights]
    if missing:
        raise ValueError(f"{where}: missing MTCNN weight {missing[0]!r} ({len(missing)} missing)")
    unexpected = [key for key in weights if key not in expected]
    if unexpected:
        raise ValueError(
            f"{where}: unexpected MTCNN weight {str(unexpected[0])[:200]!r} ({len(unexpected)} unexpected)"
        )
    checked = {}
    for key, shape in expected.items():
        tensor = weights[key]
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{where}: MTCNN weight {key!r} is a {type(tensor).__name__}, expected a tensor")
        if tensor.dtype != torch.float32:
            raise ValueError(f"{where}: MTCNN weight {key!r} is {tensor.dtype}, expected torch.float32")
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{where}: MTCNN weight {key!r} has shape {tuple(tensor.shape)}, expected {shape}")
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{where}: MTCNN weight {key!r} holds NaN or infinite values")
        checked[key] = tensor
    return checked


def check_mtcnn_weights(weights: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """`weights` if it is MTCNN's flat state dict (exactly `MTCNN_WEIGHT_SHAPES`: keys, shapes, float32, finite);
    else a `ValueError` naming `where` (the file it came from) and the first bad key. No dtype is converted: a
    float16 or float64 file is not the file we wrote, so it is refused rather than guessed at."""
    return _check(weights, MTCNN_WEIGHT_SHAPES, where)


def _network_shapes(network: str) -> dict[str, tuple[int, ...]]:
    """The expected shapes of one network's own state dict (keys without the `pnet.` prefix)."""
    prefix = f"{network}."
    return {key[len(prefix) :]: shape for key, shape in MTCNN_WEIGHT_SHAPES.items() if key.startswith(prefix)}


def _read_member(data: bytes, network: str, where: str) -> dict[str, torch.Tensor]:
    """One network's `.pt` file (bytes whose sha256 has been checked) -> its weights, prefixed (`pnet.conv1.weight`).

    `weights_only=True`: torch's unpickler builds tensors and containers only and refuses any other global before
    it is resolved, so a file whose pickle names a callable runs nothing."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever the unpickler raises, the file is not a plain state dict
        raise ValueError(
            f"{where}: not a plain PyTorch state dict (torch.load weights_only refused it: {error})"
        ) from None
    state = _check(state, _network_shapes(network), where)
    return {f"{network}.{key}": tensor for key, tensor in state.items()}


def _check_sha256(data: bytes, expected: str, where: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ValueError(
            f"{where}: sha256 {actual} does not match the pinned {expected} of facenet-pytorch "
            f"{FACENET_PYTORCH_VERSION}'s file; not the expected weights"
        )


# ------------------------------------------------------------------------------------------------------- loading


def _file_key(path: Path) -> tuple[str, int, int]:
    """(resolved path, mtime, size): a cache key that changes when the file is rewritten."""
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=8)
def _read_safetensors(key: tuple[str, int, int]) -> dict[str, torch.Tensor]:
    path = key[0]
    try:
        weights = load_file(path, device="cpu")
    except Exception as error:  # noqa: BLE001 - SafetensorError, or a header that is not JSON
        raise ValueError(f"{path}: not a safetensors file of MTCNN weights ({error})") from None
    return check_mtcnn_weights(weights, path)


@functools.lru_cache(maxsize=4)
def _read_distribution(keys: tuple[tuple[str, str, int, int, str], ...]) -> dict[str, torch.Tensor]:
    """(network, resolved path, mtime, size, pinned sha256) of each data file -> the checked flat state dict."""
    weights = {}
    for network, path, _, _, expected in keys:
        data = Path(path).read_bytes()
        _check_sha256(data, expected, path)
        weights.update(_read_member(data, network, path))
    return check_mtcnn_weights(weights, "facenet-pytorch data files")


def _distribution_files() -> dict[str, Path] | None:
    """network -> data file of an installed facenet-pytorch distribution (located through its metadata, never
    imported), or None when none is installed or it lacks a file."""
    try:
        distribution = importlib_metadata.distribution("facenet-pytorch")
    except importlib_metadata.PackageNotFoundError:
        return None
    listed = {str(file).replace("\\", "/"): file for file in distribution.files or ()}
    found = {}
    for network, (member, _) in MTCNN_MEMBERS.items():
        path = Path(listed[member].locate() if member in listed else distribution.locate_file(member))
        if not path.is_file():
            return None
        found[network] = path
    return found


def _clone(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: tensor.clone() for key, tensor in weights.items()}


def load_mtcnn_weights(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """MTCNN's flat state dict (`MTCNN_WEIGHT_SHAPES`), checked.

    With `path`: that safetensors file (nothing else is read: no pickle from a path a user gave). Without: the cache
    file (`mtcnn_weights_path()`), else an installed facenet-pytorch distribution's data files (hash-checked, read
    with `weights_only=True`, the package not imported), else `MissingFaceDetectorWeightsError`.

    Files are read once per process (keyed on the resolved path, mtime and size, so a rewritten file is re-read):
    many processors and detectors cost one read. The tensors returned are fresh copies (2 MB), so a caller may
    modify them without touching the cached ones.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such MTCNN weights file (expected a safetensors file)")
        return _clone(_read_safetensors(_file_key(path)))
    cached = mtcnn_weights_path()
    if cached.is_file():
        try:
            return _clone(_read_safetensors(_file_key(cached)))
        except ValueError as error:
            raise ValueError(f"{error}; rewrite it with `{DOWNLOAD_COMMAND} --force`") from None
    files = _distribution_files()
    if files is not None:
        keys = tuple((network, *_file_key(file), MTCNN_MEMBERS[network][1]) for network, file in sorted(files.items()))
        return _clone(_read_distribution(keys))
    raise MissingFaceDetectorWeightsError(
        f"the MTCNN face-detector weights are not on this machine (looked for {cached} and for an installed "
        f"facenet-pytorch {FACENET_PYTORCH_VERSION}); install them with: {DOWNLOAD_COMMAND} "
        "(it downloads the facenet-pytorch wheel with pip and writes that file; set $AVEMOTION_CACHE to use another "
        f"cache folder; offline: download {FACENET_PYTORCH_REQUIREMENT}'s wheel elsewhere and pass --wheel PATH)"
    )


# ------------------------------------------------------------------------------------------------------- download


def _download_wheel(folder: Path) -> Path:
    """`pip download` facenet-pytorch's wheel (no dependencies, no sdist: nothing is built or run) into `folder`."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
    ]
    command += [FACENET_PYTORCH_REQUIREMENT, "-d", str(folder)]
    offline = (
        f"on a machine without the package index, download the wheel elsewhere (`pip download --no-deps "
        f"{FACENET_PYTORCH_REQUIREMENT}`) and pass it: {DOWNLOAD_COMMAND} --wheel PATH"
    )
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise OSError(f"could not run pip to download {FACENET_PYTORCH_REQUIREMENT} ({error}); {offline}") from None
    wheels = sorted(folder.glob("facenet_pytorch-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = " ".join((done.stderr or done.stdout or "").strip().splitlines()[-3:])
        raise OSError(f"pip could not download {FACENET_PYTORCH_REQUIREMENT} ({tail or 'no wheel'}); {offline}")
    return wheels[0]


def read_wheel_weights(wheel: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The three networks' weights from a facenet-pytorch wheel, read from the zip in memory: each member's sha256
    is checked before it is unpickled (`weights_only=True`), and nothing is extracted or imported."""
    wheel = Path(wheel)
    if not wheel.is_file():
        raise FileNotFoundError(f"{wheel}: no such wheel file (expected facenet-pytorch {FACENET_PYTORCH_VERSION}'s)")
    weights = {}
    try:
        with zipfile.ZipFile(wheel) as archive:
            for network, (member, expected) in MTCNN_MEMBERS.items():
                where = f"{wheel}: {member}"
                try:
                    info = archive.getinfo(member)
                except KeyError:
                    raise ValueError(f"{wheel}: no {member} (not a facenet-pytorch wheel)") from None
                if info.file_size > MAX_MEMBER_BYTES:
                    raise ValueError(f"{where}: {info.file_size} bytes, too large for MTCNN weights")
                data = archive.read(info)
                _check_sha256(data, expected, where)
                weights.update(_read_member(data, network, where))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise ValueError(f"{wheel}: not a readable wheel (zip) file ({error})") from None
    return check_mtcnn_weights(weights, str(wheel))


def _write_atomically(weights: dict[str, torch.Tensor], target: Path) -> None:
    """Write a safetensors file so that `target` is either absent, the old file or the complete new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file({key: tensor.contiguous() for key, tensor in weights.items()}, temporary, metadata=MTCNN_METADATA)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the weights are public data other users may read
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def download_mtcnn_weights(
    wheel: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None, force: bool = False
) -> Path:
    """Install MTCNN's weights into the cache and return the file.

    A cache file that exists and checks is kept (unless `force`). Otherwise the weights are read from `wheel` (a
    facenet-pytorch 2.6.0 wheel file) or from the wheel that `pip download --no-deps` fetches into a temporary
    folder, and written as safetensors (atomically: a crash leaves no half-written file).
    """
    target = mtcnn_weights_path(cache_dir)
    if target.is_file() and not force:
        try:
            _read_safetensors(_file_key(target))
            return target
        except ValueError:
            pass  # a damaged cache file is rewritten below
    if wheel is not None:
        weights = read_wheel_weights(wheel)
    else:
        with tempfile.TemporaryDirectory(prefix="avemotion-facenet-") as folder:
            weights = read_wheel_weights(_download_wheel(Path(folder)))
    _write_atomically(weights, target)
    return target


# ------------------------------------------------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `avemotion download-face-detector`."""
    parser.add_argument(
        "--wheel", default=None, help="a facenet-pytorch 2.6.0 wheel file to read (default: download it with pip)"
    )
    parser.add_argument(
        "--cache_dir", default=None, help="cache folder (default: $AVEMOTION_CACHE, else ~/.cache/avemotion)"
    )
    parser.add_argument("--force", action="store_true", help="rewrite the weights file even if it exists and checks")


def run(args: argparse.Namespace) -> int:
    """Write (or find) the weights file and print its path."""
    print(download_mtcnn_weights(wheel=args.wheel, cache_dir=args.cache_dir, force=args.force))
    return 0


__all__ = [
    "DOWNLOAD_COMMAND",
    "FACENET_PYTORCH_VERSION",
    "MTCNN_LICENSE",
    "MTCNN_MEMBERS",
    "MTCNN_SOURCE",
    "MTCNN_WEIGHT_SHAPES",
    "MissingFaceDetectorWeightsError",
    "check_mtcnn_weights",
    "default_cache_dir",
    "download_mtcnn_weights",
    "load_mtcnn_weights",
    "mtcnn_weights_path",
    "read_wheel_weights",
]
