"""The package's structure, read from its source: imports point one way, generic code names no model, functions
stay short. Each rule is the README's layout section, checked by parsing every module with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "avemotion"

# The layer of each top-level part of the package; nothing imports a higher layer.
LAYERS = {"utils": 0, "plotting": 0, "models": 1, "processing": 1, "metrics": 1, "hub_cards": 1, "data": 2}
LAYERS |= {"training": 3}
LAYERS |= {"pipelines": 3, "cli": 4, "__init__": 5}
MODEL_NAMES = {"vavl", "mlfusion", "hsemotion"}
GENERIC = ("training", "pipelines", "data")
MAX_FUNCTION_LINES = 80
SHORT_FUNCTION_PARTS = ("models", "training", "pipelines")


def _modules() -> list[tuple[str, Path, ast.Module]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found.append((".".join(parts), path, ast.parse(path.read_text(), str(path))))
    return found


MODULES = _modules()


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "avemotion":
        return None
    if len(parts) == 1:
        return LAYERS["__init__"]
    # a new part of the package must be given its layer here (and in the README's layout table)
    assert parts[1] in LAYERS, f"{module}: avemotion.{parts[1]} has no layer in tests/test_structure.py LAYERS"
    return LAYERS[parts[1]]


def _imported(module: str, path: Path, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            package = module.split(".")[: -node.level] if path.name != "__init__.py" else module.split(".")
            if path.name == "__init__.py" and node.level > 1:
                package = module.split(".")[: -(node.level - 1)]
            base = ".".join(package)
            return [f"{base}.{node.module}" if node.module else base]
        return [node.module] if node.module else []
    return []


def test_imports_point_one_way():
    upward = []
    for module, path, tree in MODULES:
        mine = _layer(module)
        for node in ast.walk(tree):
            for target in _imported(module, path, node):
                theirs = _layer(target)
                if target == "avemotion" and mine < LAYERS["cli"]:
                    upward.append(f"{module}:{node.lineno} imports the package root")
                elif theirs is not None and mine is not None and theirs > mine:
                    upward.append(f"{module} (layer {mine}):{node.lineno} imports {target} (layer {theirs})")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def _names_a_model(node: ast.AST) -> str | None:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
        if any(MODEL_NAMES & set(name.split(".")) for name in names):
            return f"imports {names}"
    if isinstance(node, ast.Attribute) and node.attr in MODEL_NAMES:
        return f"reaches into .{node.attr}"
    if isinstance(node, ast.Compare):
        if any(isinstance(c, ast.Constant) and c.value in MODEL_NAMES for c in [node.left, *node.comparators]):
            return "compares against a model type"
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
        if node.value.split(".")[0] in MODEL_NAMES:
            return f"names parameters {node.value!r}"
    return None


def test_generic_code_names_no_model():
    found = []
    for module, _, tree in MODULES:
        if module.split(".")[1] in GENERIC:
            found += [f"{module}:{n.lineno} {hit}" for n in ast.walk(tree) if (hit := _names_a_model(n))]
    assert not found, "model knowledge in generic code (declare it on the model instead):\n" + "\n".join(found)


def test_no_long_functions():
    long = []
    for module, _, tree in MODULES:
        if module.split(".")[1] not in SHORT_FUNCTION_PARTS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}:{node.lineno} has {length} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from avemotion.training.losses import x", ["avemotion.training.losses"]),
        ("from ...training import losses", ["avemotion.training"]),
        ("from ..conformer import Block", ["avemotion.models.conformer"]),
        ("from .conformer import Block", ["avemotion.models.vavl.conformer"]),
    ],
)
def test_import_resolution(source, expected):
    """The checker resolves relative imports from a module inside a package folder (so that it can fail)."""
    node = ast.parse(source).body[0]
    assert _imported("avemotion.models.vavl.modeling_vavl", Path("modeling_vavl.py"), node) == expected


def test_checker_finds_planted_problems():
    """Each rule reports a planted violation (a checker that finds nothing is no check)."""
    upward = ast.parse("from avemotion.training.trainer import Trainer").body[0]
    target = _imported("avemotion.models.x", Path("x.py"), upward)[0]
    assert _layer(target) > _layer("avemotion.models.x")
    assert _names_a_model(ast.parse("model.config.model_type == 'vavl'").body[0].value)
    assert _names_a_model(ast.parse("'vavl.visual_backbone.'").body[0].value)
    assert _names_a_model(ast.parse("model.vavl").body[0].value)


def test_a_new_part_of_the_package_needs_a_layer():
    with pytest.raises(AssertionError, match="has no layer"):
        _layer("avemotion.newpart.module")
