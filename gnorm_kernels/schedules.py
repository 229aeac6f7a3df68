"""Learning-rate schedules shared by every training loop of the package (the offline models,
GRAIN's distillation, healing)."""

from __future__ import annotations

__all__ = ["lr_factor"]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then linear decay to zero at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))
