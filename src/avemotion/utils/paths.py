"""Directories stay closed: a file name read from a directory's own files names a file of that directory.

A model, export or run directory may come from anyone, so the names its JSON files hold (ONNX graphs, weight shards)
are data to check, never paths to follow: `contained_file(directory, name, field, source)` accepts only a plain file
name (no folder, no `..`, not absolute, no drive or UNC form, no NUL) whose file, symlinks followed, is inside the
directory. Subfolders are refused: avemotion and transformers write plain names, and one rule is easier to trust.

The name is checked before the filesystem is touched, and a name that leaves the directory gets one message whether
the file outside exists or not (so an error never tells what exists outside).

A snapshot folder of the Hugging Face cache (`.../models--org--name/snapshots/<revision>`) holds symlinks into the
repository's own `blobs/` folder; those targets count as inside it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

OUTSIDE = "a file name must stay inside the directory"
RULE = "(a plain file name: no folder, no '..', no absolute path or drive, no symlink leading out of the directory)"
# huggingface_hub's cache: <cache>/<kind>s--<org>--<name>/snapshots/<revision>/<file> -> ../../blobs/<hash>
_HUB_REPO_FOLDER = re.compile(r"^(models|datasets|spaces)--.+")
_SHOWN_CHARACTERS = 200  # a crafted name may be huge: the message shows its start


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARACTERS else text[:_SHOWN_CHARACTERS] + "...'"


def _where(source: str | os.PathLike, field: str, name: object) -> str:
    return f"{source}: {field} = {_shown(name)}"


def check_file_name(name: object, field: str, source: str | os.PathLike) -> str:
    """`name` if it is a plain file name; else a `ValueError` naming `source` (the file it was read from) and
    `field` (where in it). Touches no file.

    A plain name is a non-empty string without NUL, `/`, `\\` or `:` (which also rules out absolute paths, Windows
    drives, UNC paths and NTFS streams), and is neither `.` nor `..`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"{_where(source, field, name)}: expected a file name (a non-empty string)")
    if "\x00" in name:
        raise ValueError(f"{_where(source, field, name)}: a file name must not contain a NUL character")
    if name in (".", "..") or any(character in name for character in "/\\:"):
        raise ValueError(f"{_where(source, field, name)}: {OUTSIDE} {RULE}")
    return name


def _allowed_roots(root: Path) -> list[Path]:
    """`root` (resolved), and the repository's `blobs/` when `root` is (inside) a Hugging Face cache snapshot."""
    roots = [root]
    for folder in (root, *root.parents):
        if folder.parent.name == "snapshots" and _HUB_REPO_FOLDER.match(folder.parent.parent.name):
            roots.append(folder.parent.parent / "blobs")
            break
    return roots


def contained_file(
    directory: str | os.PathLike, name: object, field: str, source: str | os.PathLike | None = None
) -> Path:
    """`directory / name`, after checking that `name` is a plain file name (`check_file_name`) and that the file,
    symlinks followed, is inside `directory`; else a `ValueError` naming `source` (default: the directory) and
    `field`, e.g. `DIR/onnx_config.json: graphs.heads.file = '../x.onnx': a file name must stay inside the directory`.

    The file need not exist (opening it is the caller's business, with its own error for a missing file); a name
    that leads out of the directory gets the same message whether its target exists or not.
    """
    source = directory if source is None else source
    check_file_name(name, field, source)
    path = Path(directory) / name
    try:
        root = Path(directory).resolve()
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: treated as leaving, so that nothing outside is described
        resolved = None
    if resolved is None or not any(resolved.is_relative_to(allowed) for allowed in _allowed_roots(root)):
        raise ValueError(f"{_where(source, field, name)}: {OUTSIDE} {RULE}")
    return path


__all__ = ["OUTSIDE", "check_file_name", "contained_file"]
