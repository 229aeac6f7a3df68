"""What a pruning driver removes next: the budget in units, and the next units by score.

Ties are broken by (layer, unit) so that every run, and every rank of a distributed run, makes
the same choice from the same scores; a non-finite score among the present units is an error
naming the step, never a silent choice.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gnorm_kernels.engine.trajectory import check_ratio
from gnorm_kernels.heads.layout import Head, HeadLayout
from gnorm_kernels.heads.units import PruningUnit
from gnorm_kernels.scoring.objectives import NonFiniteGradientError

__all__ = ["check_count", "budget", "choose"]



def check_count(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def budget(
    layout: HeadLayout, unit: PruningUnit, ratio: float | None, steps: int | None, per_step: int, min_heads: int
) -> int:
    """Units to prune, checked against what `min_heads_per_layer` allows."""
    kept = [len(unit.kept(b)) for b in layout.blocks]
    present = sum(kept)
    prunable = sum(max(0, n - min_heads) for n in kept)
    if ratio is not None and steps is not None:
        raise ValueError(f"give ratio= or steps=, not both (got ratio={ratio!r}, steps={steps!r})")
    if ratio is not None:
        wanted = round(check_ratio(ratio) * present)
        what = f"ratio {ratio} means {wanted} of {present} {unit.words}"
    elif steps is not None:
        steps = check_count(steps, "steps", 0)
        max_steps = math.ceil(prunable / per_step)
        if steps > max_steps:
            raise ValueError(
                f"steps={steps} is more than this model allows: {prunable} prunable {unit.words} at "
                f"{per_step} per step make at most {max_steps} steps"
            )
        return min(steps * per_step, prunable)
    else:
        return prunable
    if wanted > prunable:
        raise ValueError(
            f"{what}, but only {prunable} can be pruned with min_heads_per_layer={min_heads}"
        )
    return wanted


def choose(
    scores: torch.Tensor, kept: torch.Tensor, k: int, prune_first: str, min_heads: int, where: str
) -> list[Head]:
    """The next `k` heads: lowest (or highest) scores first, ties broken by (layer, head)."""
    bad = kept & ~torch.isfinite(scores)
    if bad.any():
        l, h = bad.nonzero()[0].tolist()
        raise NonFiniteGradientError(
            f"{where}: the score of present unit ({l}, {h}) is {scores[l, h].item()}: the model gives non-finite "
            "values (NaN or inf in its weights or inputs?), so nothing can be chosen"
        )
    key = scores.double() if prune_first == "lowest" else -scores.double()
    key = torch.where(kept, key, torch.full_like(key, math.inf))
    order = torch.argsort(key.flatten(), stable=True).tolist()
    left = kept.sum(dim=1).tolist()
    chosen: list[Head] = []
    width = scores.shape[1]
    for flat in order:
        l, h = divmod(flat, width)
        if not kept[l, h] or left[l] <= min_heads:
            continue
        chosen.append((l, h))
        left[l] -= 1
        if len(chosen) == k:
            break
    return chosen
