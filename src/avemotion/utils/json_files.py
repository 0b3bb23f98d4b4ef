"""Reading a JSON document that a user may have been given, as data and with one kind of error.

`json.loads` raises `JSONDecodeError`, `RecursionError` (an array nested 100,000 deep), `UnicodeDecodeError`, and
returns whatever the file holds (`null`, a list) where a reader expects an object. `read_json_object` turns each of
those into a `ValueError` naming the file, so that a reader's error says which file is wrong and why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def parse_json(text: str, source: str) -> Any:
    """`json.loads(text)`, with a `ValueError` naming `source` for text that is not JSON or is nested too deep."""
    try:
        return json.loads(text)
    except RecursionError as error:  # a JSON array or object nested deeper than Python's recursion limit
        raise ValueError(f"{source}: not readable JSON (nested too deep)") from error
    except ValueError as error:  # JSONDecodeError
        raise ValueError(f"{source}: not readable JSON ({error})") from error


def read_json(path: str | Path) -> Any:
    """The JSON document in `path` (UTF-8), with a `ValueError` naming the file when it cannot be read as JSON."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not readable JSON (not UTF-8 text)") from error
    return parse_json(text, str(path))


def read_json_object(path: str | Path) -> dict[str, Any]:
    """`read_json(path)`, which must be a JSON object (a `ValueError` naming the file and what it holds otherwise)."""
    document = read_json(path)
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(document).__name__}")
    return document


__all__ = ["parse_json", "read_json", "read_json_object"]
