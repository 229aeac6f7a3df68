"""Settings and helpers shared by the Triton kernel files (block_norms, per_example_direct, per_example_gram).

Only the kernel files import this module, and only after `_triton.kernel_module` has fixed the mode
(GPU or interpreter): Triton decides a function's mode when it is decorated, which for the
`@triton.jit` helper here is when this module is first imported.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager

import torch
import triton
import triton.language as tl

# The mode the kernels were decorated in: True under Triton's CPU interpreter (TRITON_INTERPRET=1).
INTERPRETED = bool(triton.knobs.runtime.interpret)

# tl.dot precision for float32 inputs: "ieee" is exact float32; "tf32x3" is the faster tensor-core
# alternative (about float32 accuracy), worth measuring on a GPU (bench/kernels.py --sweep).
# The launchers read it at every call, so changing it here takes effect at the next launch.
FP32_DOT_PRECISION = "ieee"

FLT_MAX = tl.constexpr(3.4028234663852886e38)  # float32 max: a larger sum of squares is inf or NaN


@triton.jit
def norm_from_sumsq(sumsq, SQUARED: tl.constexpr):
    """A head's result from its float32 sum of squares: the norm (sqrt), or the sum itself when
    SQUARED; NaN when the sum is not finite (a NaN or inf in the block, or float32 overflow).

    The same rule as `torch_backend.norm_from_sumsq`. `sumsq - sumsq` is NaN for inf and NaN."""
    finite = tl.abs(sumsq) <= FLT_MAX
    if SQUARED:
        value = sumsq
    else:
        value = tl.sqrt(tl.maximum(sumsq, 0.0))  # clamped against round-off in signed sums (Gram form)
    return tl.where(finite, value, sumsq - sumsq)


def tile(n: int, low: int = 16, high: int = 64) -> int:
    """A power-of-two tile side for n, within [low, high] (tl.dot needs at least 16)."""
    return max(low, min(high, triton.next_power_of_2(max(n, 1))))


def on_device(device: torch.device) -> ContextManager:
    """The CUDA device context for a launch on `device` (a no-op on the CPU, i.e. the interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()
