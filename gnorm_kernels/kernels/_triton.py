"""Lazy loading of the Triton kernel files, and the choice between GPU and interpreter.

Triton decides at `@triton.jit` time (when a kernel file is imported) whether a kernel is compiled
for the GPU or run by its CPU interpreter, reading the environment variable TRITON_INTERPRET.
So the kernel files are imported here, on first use, never at package import: if no CUDA device is
present and TRITON_INTERPRET is unset, it is set to "1" first (for the whole process), which makes
backend="triton" work on CPU tensors. Set TRITON_INTERPRET yourself before the first kernel call
to choose otherwise. Each kernel file records the mode it was decorated in (`INTERPRETED`).
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

_ENV = "TRITON_INTERPRET"


def use_triton(backend: str, device: torch.device) -> bool:
    """Whether a (checked) backend name means the Triton kernels for tensors on this device."""
    return backend == "triton" or (backend == "auto" and device.type == "cuda")


def kernel_module(name: str) -> ModuleType:
    """Import `gnorm_kernels.kernels.<name>`, a Triton kernel file, in the right mode."""
    if _ENV not in os.environ and not torch.cuda.is_available():
        os.environ[_ENV] = "1"
    try:
        if os.environ.get(_ENV, "0") not in ("", "0"):
            _interpret_language_helpers()
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError as err:
        raise RuntimeError(f"backend='triton' needs the triton package, which failed to import: {err}") from err


def _interpret_language_helpers() -> None:
    """Make triton.language's own `@jit` helpers (tl.zeros, tl.sum, ...) runnable by the interpreter.

    They are decorated when `triton.language` is first imported, and torch and transformers import
    it early, before TRITON_INTERPRET can be set here. Decorated for the GPU, they refuse to run
    inside an interpreted kernel ("Cannot call @triton.jit'd outside of the scope of a kernel").
    This re-wraps them as the interpreter's functions; it runs only in interpreter mode, where no
    GPU kernel of this process can need them.
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


def check_device(module: ModuleType, device: torch.device) -> None:
    """Refuse tensors the kernel cannot read in the mode it was built in."""
    if module.INTERPRETED and device.type != "cpu":
        raise ValueError(
            f"Triton's interpreter (TRITON_INTERPRET=1) runs these kernels on CPU tensors only; got {device}. "
            f"Use backend='torch', or unset TRITON_INTERPRET before the first kernel call on a GPU machine."
        )
    if not module.INTERPRETED and device.type != "cuda":
        raise ValueError(
            f"backend='triton' got {device} tensors, but the kernels were compiled for the GPU. "
            f"Move the tensors to CUDA, use backend='torch', or set TRITON_INTERPRET=1 before the first kernel call."
        )
