"""The package's shape, checked from its source: no import cycles, leaves that stay leaves,
a public API that type checkers see, and modules small enough to hold in one's head."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gnorm_kernels as gk

PACKAGE = Path(gk.__file__).parent
# The layer rule: what each part of the package may import (besides itself). Lowest first; a part
# never names a part above it, not even through an import string.
LEAF: set[str] = set()
LAYERS: dict[str, set[str]] = {
    "durable": LEAF, "extras": LEAF, "modes": LEAF, "schedules": LEAF, "progress": LEAF, "_aliases": LEAF, "_lazy": LEAF,
    "kernels": LEAF,  # may import its own submodules only
    "heads": {"kernels"},
    "data": {"extras"},
    "checkpoints": {"heads", "durable"},
    "parallel": {"kernels", "heads", "checkpoints"},
    "evaluation": {"heads", "data", "parallel", "modes", "progress"},
    "scoring": {"kernels", "heads", "data", "parallel", "modes", "extras", "progress"},
    "grain": {"heads", "data", "checkpoints", "evaluation", "modes", "schedules", "progress"},
    "models": {"heads", "data", "checkpoints", "evaluation", "grain", "schedules", "durable", "progress", "extras"},  # extras: GGUF
    "engine": {"heads", "data", "checkpoints", "parallel", "evaluation", "scoring", "durable", "progress"},
    "evidence": {"heads", "data", "parallel", "evaluation", "scoring", "engine", "extras", "durable"},
    "healing": {"data", "grain", "engine"},  # distils a pruned model with GRAIN's losses; resumes as the engine does
    "testing": {"heads"},
    "cli": {"*"},  # the top: may import anything
}
MAX_LINES = 400
# The only places that import by a computed name: the lazy public API, the old flat paths, the
# optional extras (third-party modules), and the kernels' lazy submodules.
DYNAMIC_IMPORTS = {"gnorm_kernels._lazy", "gnorm_kernels._aliases", "gnorm_kernels.extras", "gnorm_kernels.kernels._triton"}


def _part(module: str) -> str:
    """The layer a module belongs to: its subpackage, or the module itself at the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Package modules imported by one source file (top level and inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return {m for m in found if m.split(".")[0] == "gnorm_kernels"}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        # importing a submodule always runs its parent packages first: not an edge
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {m for m in _imports(path, name) if m in files and m != name and m not in ancestors}
    return graph


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    # the package root only re-exports (lazily); leave it out so re-exports are not cycles
    graph = {k: {m for m in v if m != "gnorm_kernels"} for k, v in graph.items() if k != "gnorm_kernels"}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(m) for m in _graph()} - {""}
    assert parts == set(LAYERS), f"parts without a layer rule: {sorted(parts - set(LAYERS))}; stale rules: {sorted(set(LAYERS) - parts)}"


@pytest.mark.parametrize("part", sorted(LAYERS))
def test_each_part_imports_only_the_layers_below_it(part):
    allowed = LAYERS[part]
    if "*" in allowed:
        return
    graph = _graph()
    for member in (m for m in graph if _part(m) == part):
        above = {m for m in graph[member] if _part(m) not in allowed | {part, "", "_lazy"}}  # _lazy: every face
        assert not above, f"{member} imports {sorted(above)}, which sit above it (its layer may import {sorted(allowed)})"


def test_the_layers_themselves_have_no_cycle():
    """The rule table is a DAG, so a subpackage's __init__ importing its modules can never cycle."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(LAYERS.get(node, set()) - {"*"}):
            assert state.get(nxt) != 1, "layer cycle: " + " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in LAYERS:
        if node not in state:
            visit(node, [node])


def test_no_import_by_string_outside_the_documented_places():
    """importlib and __import__ only where a name must be computed (see DYNAMIC_IMPORTS); nowhere
    a "module:function" string that would hide an edge from the layer rule."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        text = path.read_text()
        if name not in DYNAMIC_IMPORTS and ("import_module(" in text or "__import__(" in text):
            offenders.append(name)
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("gnorm_kernels.") \
                    and ":" in node.value and " " not in node.value:
                offenders.append(f"{name}: {node.value!r}")
    assert not offenders, f"imports by string: {offenders}"


def _top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


def test_no_public_name_is_defined_in_two_modules():
    """One value, one door: `Head`, `Batch`, `METRICS` ... are each defined once and imported
    elsewhere. (kernels/ keeps its PyTorch reference beside each dispatching function by design.)"""
    homes: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if path.name == "__init__.py" or name.startswith("gnorm_kernels.kernels"):
            continue
        for n in _top_level_names(path):
            homes.setdefault(n, []).append(name)
    twice = {n: sorted(m) for n, m in homes.items() if len(m) > 1}
    assert not twice, f"names defined in more than one module: {twice}"


def test_subpackages_export_what_their_modules_declare():
    """Each subpackage's __init__ is its public face: it re-exports exactly its modules' __all__."""
    import importlib

    for init in sorted(PACKAGE.glob("*/__init__.py")):
        package = _module_name(init)
        if package.endswith(("kernels", "grain")):
            continue
        face = importlib.import_module(package)
        for value in face.__all__:
            assert hasattr(face, value), f"{package}.__all__ names {value}, which it does not define"


def test_old_flat_paths_still_import_and_warn():
    import importlib
    import sys

    sys.modules.pop("gnorm_kernels.greedy", None)
    with pytest.warns(DeprecationWarning, match="gnorm_kernels.engine.driver"):
        old = importlib.import_module("gnorm_kernels.greedy")
    assert old.greedy_prune is gk.greedy_prune
    assert old.__spec__.name == "gnorm_kernels.engine.driver"  # the real module's identity is kept


def test_imports_are_read_from_source(tmp_path):
    """The graph is not vacuous: `from gnorm_kernels import b` counts as importing b."""
    (tmp_path / "a.py").write_text("from gnorm_kernels import b\n")
    assert _imports(tmp_path / "a.py", "gnorm_kernels.a") == {"gnorm_kernels", "gnorm_kernels.b"}


def test_every_export_resolves_from_the_module_that_defines_it():
    """The TYPE_CHECKING block of `__init__.py` is the one list of exports: each name there is
    resolved from that module at run time, and is defined there (no re-export hubs)."""
    assert gk.__all__ == sorted(gk._EXPORTS) and len(gk.__all__) >= 40
    for name, module in gk._EXPORTS.items():
        value = getattr(gk, name)
        home = getattr(value, "__module__", module)
        assert home == module or module == "gnorm_kernels.kernels" or module == "gnorm_kernels.grain", (name, home, module)


@pytest.mark.parametrize("name", gk.__all__)
def test_every_export_has_a_docstring(name):
    value = getattr(gk, name)
    if callable(value) or isinstance(value, type):
        assert (value.__doc__ or "").strip(), f"gnorm_kernels.{name} has no docstring"


def test_modules_stay_small():
    big = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by concern): {big}"


def test_the_code_is_lint_clean():
    """ruff, configured in pyproject.toml, finds nothing in the package, the tests or the benchmarks."""
    import subprocess
    import sys

    root = PACKAGE.parent
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "gnorm_kernels", "tests", "bench"],
                            cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_face_exports_a_name_its_own_submodule_has():
    """`gk.evaluate` must stay the function: once a submodule of the same name is imported, the
    import system would set the package attribute to the module and shadow the export."""
    import importlib
    import pkgutil

    packages = ["gnorm_kernels"] + [f"gnorm_kernels.{m.name}" for m in pkgutil.iter_modules(gk.__path__) if m.ispkg]
    for name in packages:
        package = importlib.import_module(name)
        submodules = {m.name for m in pkgutil.iter_modules(package.__path__)}
        clash = set(getattr(package, "__all__", ())) & submodules
        assert not clash, f"{name} exports {sorted(clash)}, which are also its submodules"
    import gnorm_kernels.evaluation  # noqa: F401  (a submodule import must not shadow the export)

    assert callable(gk.evaluate) and gk.evaluate.__module__ == "gnorm_kernels.evaluation"
