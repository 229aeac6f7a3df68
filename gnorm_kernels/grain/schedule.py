"""GRAIN's density schedule: distil first, prune on a cubic ramp, then distil the fixed structure.

With t the fraction of training done and s_f the final density:

    density(t) = 1                                         t < 0.2
               = s_f + (1 − s_f) · (1 − (t − 0.2) / 0.2)^3  0.2 ≤ t < 0.4
               = s_f                                       t ≥ 0.4
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DensitySchedule"]


@dataclass(frozen=True)
class DensitySchedule:
    """Target density at each optimiser step (steps are numbered 0 … total_steps − 1)."""

    final_density: float
    total_steps: int
    prune_start: float = 0.2  # fraction of training before any pruning
    prune_end: float = 0.4  # fraction of training at which the final density is reached

    def __post_init__(self) -> None:
        if not isinstance(self.final_density, (int, float)) or not 0.0 < self.final_density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {self.final_density!r}")
        if not isinstance(self.total_steps, int) or self.total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {self.total_steps!r}")
        if not 0.0 <= self.prune_start < self.prune_end <= 1.0:
            raise ValueError(
                f"expected 0 <= prune_start < prune_end <= 1, got prune_start={self.prune_start}, "
                f"prune_end={self.prune_end}"
            )
        if self.final_density < 1.0:
            if self.start_step < 1:
                raise ValueError(
                    f"{self.total_steps} steps leave no distillation-only phase before pruning starts "
                    f"at {self.prune_start:.0%} of training; use at least {math.ceil(1 / self.prune_start)} steps"
                    if self.prune_start > 0
                    else "prune_start=0 leaves no step to collect importance scores before pruning"
                )
            if self.end_step - self.start_step < 1:
                need = math.ceil(1 / (self.prune_end - self.prune_start))
                raise ValueError(
                    f"{self.total_steps} steps leave no step for the pruning ramp between "
                    f"{self.prune_start:.0%} and {self.prune_end:.0%} of training; use at least {need} steps"
                )

    @property
    def start_step(self) -> int:
        """First step at which units may be pruned."""
        return int(round(self.prune_start * self.total_steps))

    @property
    def end_step(self) -> int:
        """First step at which the density is final."""
        return int(round(self.prune_end * self.total_steps))

    def __call__(self, step: int) -> float:
        if step < self.start_step:
            return 1.0
        if step >= self.end_step:
            return float(self.final_density)
        progress = (step - self.start_step + 1) / (self.end_step - self.start_step)
        return float(self.final_density + (1.0 - self.final_density) * (1.0 - progress) ** 3)

    def pruning(self, step: int) -> bool:
        """Whether the masks may change after this step."""
        return self.final_density < 1.0 and self.start_step <= step < self.end_step
