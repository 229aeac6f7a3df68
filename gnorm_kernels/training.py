"""What the offline models' training runs share: where they are cached, a pinned thread count,
the learning-rate schedule, and the error for a run that learned nothing.

The tiny BERT (`gnorm_kernels.models`) and the tiny LM (`gnorm_kernels.tiny_lm`) are both trained
here on first use and cached under `cache_dir()`; each pins its thread count so that machines of
any size train the same model.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

__all__ = ["TrainingStuck", "cache_dir", "lr_factor", "torch_threads"]


class TrainingStuck(RuntimeError):
    """Raised when a training run stays at chance or ends below the recipe's accuracy floor."""


def cache_dir() -> Path:
    """`$GNORM_CACHE`, or ~/.cache/gnorm_kernels."""
    return Path(os.environ.get("GNORM_CACHE") or Path.home() / ".cache" / "gnorm_kernels")


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then linear decay to zero at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
