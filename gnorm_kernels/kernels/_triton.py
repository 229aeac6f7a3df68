"""Whether Triton is here, which mode its kernels run in, and the lazy loading of the kernel files.

Triton is optional (the `[triton]` extra). Without it, importing `gnorm_kernels.kernels` logs one
line saying that everything runs on the PyTorch backend; backend="auto" then always means PyTorch,
and backend="triton" raises an error naming the extra to install. Whether Triton is installed is
looked up once, at import, without importing it.

Triton has two modes, and the choice is process-wide: compiled for the GPU, or run by its CPU
interpreter (on CPU tensors; for checking, far too slow for real sizes). Triton fixes a kernel's mode
when the kernel is decorated, reading the environment variable TRITON_INTERPRET, so the kernel files
are imported here on first use, never at package import, and the mode is decided once, then:

- TRITON_INTERPRET set (to anything but "" or "0"): the interpreter; set to "" or "0": the GPU;
- unset: the GPU when CUDA is available, otherwise the interpreter, switched on by
  `enable_interpreter()` (which sets TRITON_INTERPRET=1 for the whole process, and logs it once).

Call `enable_interpreter()` yourself, before the first kernel call, to choose the interpreter on a
machine with a GPU; `triton_mode()` says which mode is in force.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from types import ModuleType

import torch

_ENV = "TRITON_INTERPRET"
_logger = logging.getLogger("gnorm_kernels.kernels")


def _triton_installed() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses it
        return False


TRITON_INSTALLED = _triton_installed()
if not TRITON_INSTALLED:
    _logger.warning(
        "gnorm_kernels.kernels: triton is not installed, so every function runs on the PyTorch backend "
        "(pip install 'gnorm-kernels[triton]' for the Triton kernels)"
    )

_mode: str | None = None  # "gpu" or "interpreter", fixed by the first kernel load


class TritonUnavailableError(RuntimeError):
    """backend="triton" was asked for, but the triton package is not installed."""


def _require_triton() -> None:
    if not TRITON_INSTALLED:
        raise TritonUnavailableError(
            "backend='triton' needs the triton package, which is not installed: "
            "pip install 'gnorm-kernels[triton]' (or use backend='torch' / 'auto')"
        )


def use_triton(backend: str, device: torch.device) -> bool:
    """Whether a (checked) backend name means the Triton kernels for tensors on this device.

    "auto" means Triton for CUDA tensors when Triton is installed; "triton" always (and fails
    clearly without it, in `kernel_module`)."""
    return backend == "triton" or (backend == "auto" and device.type == "cuda" and TRITON_INSTALLED)


def enable_interpreter() -> None:
    """Run this process's Triton kernels under Triton's CPU interpreter (on CPU tensors).

    Process-wide and one-way: it sets TRITON_INTERPRET=1, which every Triton kernel decorated
    afterwards reads, this package's or not. Call it before the first kernel call; once the kernels
    are loaded for the GPU it raises. Without a CUDA device it is called automatically on the first
    Triton kernel call when TRITON_INTERPRET is unset."""
    global _mode
    _require_triton()
    if _mode == "gpu":
        raise RuntimeError(
            "the Triton kernels are already loaded for the GPU in this process; "
            "call enable_interpreter() (or set TRITON_INTERPRET=1) before the first kernel call"
        )
    os.environ[_ENV] = "1"
    if _mode is None:
        _interpret_language_helpers()
        _mode = "interpreter"


def triton_mode() -> str | None:
    """"gpu" or "interpreter" once the kernels are loaded (see the module docstring), else None."""
    return _mode


def _decide_mode() -> str:
    global _mode
    if _mode is None:
        value = os.environ.get(_ENV)
        if value is None and not torch.cuda.is_available():
            enable_interpreter()
            _logger.info("gnorm_kernels.kernels: no CUDA device, Triton kernels run under Triton's CPU interpreter")
        elif value not in (None, "", "0"):
            enable_interpreter()
        else:
            _mode = "gpu"
    return _mode


def kernel_module(name: str) -> ModuleType:
    """Import `gnorm_kernels.kernels.<name>`, a Triton kernel file, in the process's mode."""
    _require_triton()
    _decide_mode()
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError as err:
        raise RuntimeError(f"backend='triton' needs the triton package, which failed to import: {err}") from err


def _interpret_language_helpers() -> None:
    """Make triton.language's own `@jit` helpers (tl.zeros, tl.sum, ...) runnable by the interpreter.

    They are decorated when `triton.language` is first imported, and other libraries (transformers,
    for one, through torch) import it early, before TRITON_INTERPRET can be set here. Decorated
    for the GPU, they refuse to run inside an interpreted kernel ("Cannot call @triton.jit'd outside
    of the scope of a kernel"). This re-wraps them as the interpreter's functions; it runs only when
    the interpreter is switched on, where no GPU kernel of this process can need them.
    """
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    namespaces = [vars(tl), vars(tl.standard), vars(tl.core), vars(tl.math)]
    for namespace in namespaces:
        for attr, value in list(namespace.items()):
            if isinstance(value, JITFunction):
                namespace[attr] = InterpretedFunction(value.fn)
    for attr, value in list(vars(tl.core.tensor).items()):  # tensor methods such as x.sum()
        if isinstance(value, JITFunction):
            setattr(tl.core.tensor, attr, InterpretedFunction(value.fn))


def check_device(device: torch.device) -> None:
    """Refuse tensors the kernels cannot read in the process's mode (call after kernel_module)."""
    if _mode == "interpreter" and device.type != "cpu":
        raise ValueError(
            f"Triton's interpreter (TRITON_INTERPRET=1) runs these kernels on CPU tensors only; got {device}. "
            f"Use backend='torch', or unset TRITON_INTERPRET before the first kernel call on a GPU machine."
        )
    if _mode == "gpu" and device.type != "cuda":
        raise ValueError(
            f"backend='triton' got {device} tensors, but the kernels were compiled for the GPU. "
            f"Move the tensors to CUDA, use backend='torch', or set TRITON_INTERPRET=1 before the first kernel call."
        )
