"""Files a training run writes and reads back: atomic writes, whole-directory swaps, readability checks of
checkpoint files, and loading `save_pretrained` weights.

Files are written to a temporary name in the same directory and renamed into place (`os.replace`), so that an
interrupted run leaves either the previous or the new version of a file, checkpoint or `best_model`, never a
truncated one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import torch


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `path` through a temporary file in the same directory and `os.replace` (never a truncated file)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:  # a failed write (disk full, unencodable text, interrupt) leaves no temporary file
        with contextlib.suppress(OSError):  # the write's own error is the one to report
            temporary.unlink()
        raise


def replace_directory(source: Path, target: Path) -> None:
    """Move the complete directory `source` to `target`, replacing it. A directory cannot be renamed over a
    non-empty one: the old one is renamed aside first (`recover_directory` puts it back if we stop in between)."""
    aside = target.with_name(f".{target.name}.old")
    if aside.exists():
        shutil.rmtree(aside)
    if target.exists():
        os.replace(target, aside)
    os.replace(source, target)
    shutil.rmtree(aside, ignore_errors=True)


def recover_directory(target: Path) -> None:
    """Undo a `replace_directory` interrupted between its two renames."""
    aside = target.with_name(f".{target.name}.old")
    if not target.exists() and aside.is_dir():
        os.replace(aside, target)


def file_problem(path: Path) -> str | None:
    """Why a checkpoint file cannot be read (truncated, not what its suffix says), or None. Cheap: safetensors
    headers (which must cover the file) and the end-of-archive record of torch's zip files; no tensor is loaded."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt"):
                pass
        elif path.suffix in (".bin", ".pkl", ".pt", ".pth") and not zipfile.is_zipfile(path):
            return f"{path}: truncated or not a torch archive"
        elif path.suffix == ".json":
            json.loads(path.read_text())
    except Exception as error:  # SafetensorError, JSONDecodeError, OSError, UnicodeDecodeError
        return f"{path}: {type(error).__name__}: {error}"
    return None


def load_weights(model: torch.nn.Module, directory: Path, allow_missing: str | None = None) -> None:
    """Load the `model*.safetensors` files of a `save_pretrained` directory into `model` (strict, except missing keys
    containing `allow_missing`); a `ValueError` naming the file when one cannot be read or does not match."""
    from safetensors.torch import load_file

    # model*.safetensors: save_pretrained's names (a checkpoint also holds optimizer/random-state tensors)
    files = sorted(directory.glob("model*.safetensors"))
    if not files:
        raise ValueError(f"{directory} holds no model*.safetensors weights")
    state_dict = {}
    for file in files:
        try:
            state_dict.update(load_file(file))
        except Exception as error:  # SafetensorError names no file
            raise ValueError(f"{file}: cannot be read ({type(error).__name__}: {error})") from error
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # a tensor of another shape: name the directory, not torch's module path
        reason = " ".join(str(error).split())[:300]
        raise ValueError(f"{directory}: weights do not match the model ({reason})") from error
    missing = [k for k in missing if not (allow_missing and allow_missing in k)]
    if missing or unexpected:
        raise ValueError(f"{directory}: weights do not match the model: missing {missing}, unexpected {unexpected}")
