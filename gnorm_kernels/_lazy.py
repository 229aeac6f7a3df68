"""Lazy public faces: a package's ``TYPE_CHECKING`` block of imports is its one list of exports.

Type checkers, IDEs and ``help()`` read that block as ordinary imports; at run time `lazy_exports`
reads the same block from the package's source and resolves each name from its module on first
use. So importing one module of a subpackage never imports its siblings, ``import gnorm_kernels``
stays cheap, and no package's ``__init__`` can take part in an import cycle.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any, Callable

__all__ = ["lazy_exports"]


def _declared(init_file: str) -> dict[str, str]:
    """name -> module, from the imports inside ``if TYPE_CHECKING:`` of a package's __init__."""
    tree = ast.parse(Path(init_file).read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom) and stmt.module:
                    found.update({alias.asname or alias.name: stmt.module for alias in stmt.names})
    return found


def lazy_exports(package: str, init_file: str) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str], dict[str, str]]:
    """(``__getattr__``, ``__dir__``, ``__all__``, name -> module) for the package `package`."""
    exports = _declared(init_file)

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__, sorted(exports), exports
