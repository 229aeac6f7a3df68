"""The package's shape, checked from its source: no import cycles, leaves that stay leaves,
a public API that type checkers see, and modules small enough to hold in one's head."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gnorm_kernels as gk

PACKAGE = Path(gk.__file__).parent
# Modules that everything else builds on: they import nothing of the package above them.
LEAVES = {
    "gnorm_kernels.layout": set(),
    "gnorm_kernels.arch": {"gnorm_kernels.layout"},
    "gnorm_kernels.checkpoint": set(),
    "gnorm_kernels.surgery": set(),
    "gnorm_kernels.modes": set(),
    "gnorm_kernels.durable": set(),
    "gnorm_kernels.kernels": {"gnorm_kernels.kernels"},  # may import its own submodules only
}
MAX_LINES = 450


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


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_low_modules_import_nothing_above_them(leaf):
    graph = _graph()
    members = [m for m in graph if m == leaf or m.startswith(leaf + ".")]
    allowed = LEAVES[leaf]
    for member in members:
        above = {m for m in graph[member] if not any(m == a or m.startswith(a + ".") for a in allowed)}
        assert not above, f"{member} imports {sorted(above)}, which sit above it"


def test_imports_are_read_from_source(tmp_path):
    """The graph is not vacuous: `from gnorm_kernels import b` counts as importing b."""
    (tmp_path / "a.py").write_text("from gnorm_kernels import b\n")
    assert _imports(tmp_path / "a.py", "gnorm_kernels.a") == {"gnorm_kernels", "gnorm_kernels.b"}


def test_every_export_is_visible_to_type_checkers():
    """`__init__.py` names every export in its TYPE_CHECKING block, from the module that
    `__getattr__` resolves it from, so IDEs and `help()` see the API before first use."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    static: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    for alias in stmt.names:
                        static[alias.asname or alias.name] = stmt.module.removeprefix("gnorm_kernels.")
    assert static == gk._EXPORTS


@pytest.mark.parametrize("name", gk.__all__)
def test_every_export_has_a_docstring(name):
    value = getattr(gk, name)
    if callable(value) or isinstance(value, type):
        assert (value.__doc__ or "").strip(), f"gnorm_kernels.{name} has no docstring"


def test_modules_stay_small():
    big = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by concern): {big}"
