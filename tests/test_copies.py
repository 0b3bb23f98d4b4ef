"""`# Copied from avemotion.<module>.<name>` copies equal their source.

Code that must exist both in a model folder (whose remote code cannot import avemotion) and elsewhere in the package
is copied, with the comment on the line before the copied `def`, `class` or module-level assignment. Each copy must
equal its source, the comment and the indentation aside (as transformers' `utils/check_copies.py` checks its
`# Copied from transformers.` copies).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import re
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "avemotion"
COPIED_FROM = re.compile(r"^\s*# Copied from (\S+)\s*$")


def _copies() -> list[tuple[Path, int, str]]:
    """`(file, line of the comment, dotted source name)` of every `# Copied from` comment under src/avemotion."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            match = COPIED_FROM.match(line)
            if match:
                found.append((path, number, match[1]))
    return found


COPIES = _copies()


def _display(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent)) if path.is_relative_to(PACKAGE.parent) else str(path)


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [target.id for target in node.targets if isinstance(target, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _statement_source(lines: list[str], node: ast.stmt) -> str:
    """The statement's source (decorators included), dedented, with trailing spaces stripped."""
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    text = textwrap.dedent("\n".join(lines[first - 1 : node.end_lineno]))
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def _copy_source(path: Path, comment_line: int) -> tuple[str, str]:
    """`(name, source)` of the statement that starts on the line after the comment."""
    text = path.read_text()
    lines = text.splitlines()
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.stmt) and _defined_names(node):
            first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            if first == comment_line + 1:
                return _defined_names(node)[0], _statement_source(lines, node)
    raise AssertionError(
        f"{_display(path)}:{comment_line}: `# Copied from` must be on the line right before a def, class or assignment"
    )


def _resolve(dotted: str) -> tuple[object, str]:
    """`(module, attribute path)` for `avemotion.<module>.<name>[.<member>]`: the longest importable module prefix."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:split])
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name is None or not name.startswith(error.name):
                raise  # the module exists but fails to import: show why
            continue
        return module, ".".join(parts[split:])
    raise AssertionError(f"`# Copied from {dotted}`: no importable module in that name")


def _original_source(dotted: str) -> str:
    """The source of the object `dotted` names: `inspect.getsource` for functions and classes, the assigning statement
    (found with `ast` in the module's file) for constants."""
    module, attribute = _resolve(dotted)
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise AssertionError(f"`# Copied from {dotted}`: {module.__name__} has no {attribute!r}")
        target = getattr(target, part)
    if inspect.isfunction(target) or inspect.isclass(target) or inspect.ismethod(target):
        text = textwrap.dedent(inspect.getsource(target))
        return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())
    if "." in attribute:
        raise AssertionError(f"`# Copied from {dotted}`: only module-level constants can be copied")
    text = Path(inspect.getsourcefile(module)).read_text()
    for node in ast.parse(text).body:
        if attribute in _defined_names(node):
            return _statement_source(text.splitlines(), node)
    raise AssertionError(f"`# Copied from {dotted}`: no statement assigns {attribute!r} in {module.__name__}")


def test_the_package_has_copies():
    # the model folders' remote code carries copies of the shared helpers; a scan that finds none is broken
    sources = {source for _, _, source in COPIES}
    assert "avemotion.utils.masking.masked_mean" in sources, sorted(sources)
    assert "avemotion.utils.losses.concordance_loss" in sources, sorted(sources)


@pytest.mark.parametrize(
    ("path", "line", "source"),
    COPIES,
    ids=[f"{path.relative_to(PACKAGE).as_posix()}:{line}" for path, line, _ in COPIES],
)
def test_copy_equals_its_source(path: Path, line: int, source: str):
    assert source.startswith("avemotion."), f"{path}:{line}: copies name their source as `avemotion.<module>.<name>`"
    name, copy = _copy_source(path, line)
    original = _original_source(source)
    where = f"{_display(path)}:{line + 1} ({name})"
    if copy != original:
        diff = "\n".join(difflib.unified_diff(original.splitlines(), copy.splitlines(), source, where, lineterm=""))
        pytest.fail(f"{where} is not an exact copy of {source}; make them equal again:\n{diff}")


def test_a_changed_copy_is_reported(tmp_path):
    """The check itself: a copy that differs by one character is found, and the message names both places."""
    path, line, source = next(entry for entry in COPIES if entry[2] == "avemotion.utils.masking.masked_mean")
    changed = path.read_text().replace("clamp(min=1.0)", "clamp(min=2.0)", 1)
    fake = tmp_path / "fake.py"
    fake.write_text(changed)
    message = r"fake\.py:\d+ \(masked_mean\) is not an exact copy of avemotion\.utils\.masking\.masked_mean"
    with pytest.raises(pytest.fail.Exception, match=message) as failure:
        test_copy_equals_its_source(fake, line, source)
    assert "+    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=2.0)" in str(failure.value)
