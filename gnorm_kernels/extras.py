"""The optional parts of the package and what installs them.

``pip install gnorm-kernels`` gives the library and its PyTorch kernels; figures, widgets, GLUE
and the Triton kernels come with extras. `require` imports one of their modules or raises
`MissingExtra`, an ImportError that names the extra to install, so a lean install meets one clear
line instead of a traceback (the command line checks before any work). Standard library only.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtra", "require", "require_extra"]

# extra -> the top-level modules it provides (pyproject.toml's [project.optional-dependencies])
EXTRAS: dict[str, tuple[str, ...]] = {
    "plots": ("matplotlib", "seaborn"),
    "notebooks": ("ipywidgets", "matplotlib", "seaborn"),
    "glue": ("datasets",),
    "triton": ("triton",),
    "real": ("gguf", "accelerate"),
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""


def _install_line(extra: str) -> str:
    return f"pip install 'gnorm-kernels[{extra}]' (or 'gnorm-kernels[all]')"


def _findable(module: str) -> bool:
    if module in sys.modules:  # imported already, or blocked (None)
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install
        return False


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module` (e.g. "matplotlib.pyplot"), which `extra` installs and `what` needs."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; expected one of {sorted(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing = err.name or module.split(".")[0]
        raise MissingExtra(f"{what}: {missing} is not installed; {_install_line(extra)}") from err


def require_extra(extra: str, what: str) -> None:
    """Check, without importing them, that every module of `extra` can be found."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; expected one of {sorted(EXTRAS)}")
    missing = [m for m in EXTRAS[extra] if not _findable(m)]
    if missing:
        raise MissingExtra(f"{what}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed; "
                           f"{_install_line(extra)}")
