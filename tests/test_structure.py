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


# Import circles found in the package and not yet broken, each named by the modules of its strongly connected
# component (every entry must still be a circle: a broken one fails `test_no_import_circles` until removed here).
ALLOWED_CIRCLES: list[frozenset[str]] = []


def _module_name(module: str) -> str:
    """`avemotion.training.__init__` -> `avemotion.training` (the name a package is imported by)."""
    return module.removesuffix(".__init__")


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at module level or inside functions. `from package import name`
    imports `package` and, when it is a submodule, `package.name`. A module importing one of its own packages (its
    `__init__`, which runs first anyway) is left out: that is not a circle between modules."""
    known = {_module_name(module) for module, _, _ in MODULES}
    graph: dict[str, set[str]] = {}
    for module, path, tree in MODULES:
        name = _module_name(module)
        edges = graph.setdefault(name, set())
        for node in ast.walk(tree):
            targets = _imported(module, path, node)
            if isinstance(node, ast.ImportFrom):
                targets += [f"{target}.{alias.name}" for target in targets for alias in node.names]
            for target in targets:
                if target in known and target != name and not name.startswith(f"{target}."):
                    edges.add(target)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_no_import_circles():
    """No two modules of the package import each other, directly or through others (module-level or function-level
    imports): a circle means neither can be read, tested or moved without the other."""
    circles = _circles(_import_graph())
    new = [" <-> ".join(sorted(circle)) for circle in circles if circle not in ALLOWED_CIRCLES]
    stale = [" <-> ".join(sorted(circle)) for circle in ALLOWED_CIRCLES if circle not in circles]
    assert not new, "import circles:\n" + "\n".join(new)
    assert not stale, "ALLOWED_CIRCLES entries that are no longer circles (remove them):\n" + "\n".join(stale)


def test_circle_finder_finds_planted_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _circles(graph) == [frozenset({"a", "b", "c"})]
    assert "avemotion.training.checkpointing" in _import_graph()["avemotion.training.trainer"]


DECLARATION_METHODS = {"input_spec", "training_steps", "evaluation_branches"}
DECLARATION_FIELDS = {"modalities", "segments", "window_seconds", "inputs", "features", "extra_inputs", "rows"}
# modules that call a declaration method without reading it: the ONNX export records the plain dict in its metadata
# and the ONNX runtime model hands it on (both are read by `declaration.py` where they are used)
DECLARATION_PASSERS = {"avemotion.models.onnx_export", "avemotion.models.onnx_runtime"}


def _reads_a_declaration(node: ast.AST) -> str | None:
    """A call of a declaration method, or a `spec["modalities"]` / `spec.get("modalities")` style read."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in DECLARATION_METHODS:
        return f"calls .{node.func.attr}()"
    key, target = None, None
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        key, target = node.slice.value, node.value
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
        if isinstance(node.args[0], ast.Constant):
            key, target = node.args[0].value, node.func.value
    if key in DECLARATION_FIELDS and target is not None and "spec" in ast.unparse(target).lower():
        return f"reads {ast.unparse(target)}[{key!r}]"
    return None


def _declaration_reads(modules) -> list[str]:
    found = []
    for module, _, tree in modules:
        parts = module.split(".")
        if module == "avemotion.models.declaration" or module in DECLARATION_PASSERS:
            continue
        if parts[1] == "models" and len(parts) > 3 and parts[2] in MODEL_NAMES:
            continue  # a model's own folder defines (and may call) its declaration
        found += [f"{module}:{n.lineno} {hit}" for n in ast.walk(tree) if (hit := _reads_a_declaration(n))]
    return found


def test_only_the_declaration_module_reads_declarations():
    found = _declaration_reads(MODULES)
    assert not found, "read the model's declaration through avemotion.models.declaration:\n" + "\n".join(found)


def test_declaration_read_finder_finds_planted_reads():
    planted = ast.parse(
        "spec = model.input_spec()\nkeys = spec['modalities']\nrate = model_spec.get('window_seconds')\n"
        "result['modalities'] = []\n"
    )
    found = _declaration_reads([("avemotion.pipelines.planted", PACKAGE / "pipelines" / "planted.py", planted)])
    assert found == [
        "avemotion.pipelines.planted:1 calls .input_spec()",
        "avemotion.pipelines.planted:2 reads spec['modalities']",
        "avemotion.pipelines.planted:3 reads model_spec['window_seconds']",
    ]
