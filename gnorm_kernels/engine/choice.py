"""What a pruning driver removes next: the budget in units, and the next units by score.

Uniform pruning (``uniform=True`` in the drivers) removes units in rounds: one unit from every
*cell* per round, where a cell is a layer (grid row), or for query heads under grouped-query
attention one key/value group of a layer. Every cell then holds as many units as every other, so
the pruned model has one head count per layer and equal groups: a standard config describes it.

Ties are broken by (layer, unit) so that every run, and every rank of a distributed run, makes
the same choice from the same scores; a non-finite score among the present units is an error
naming the step, never a silent choice.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from gnorm_kernels.engine.trajectory import check_ratio
from gnorm_kernels.heads.layout import Head, HeadLayout
from gnorm_kernels.heads.units import PruningUnit
from gnorm_kernels.scoring.objectives import NonFiniteGradientError

__all__ = ["UniformPlan", "budget", "check_count", "choose", "choose_uniform", "uniform_plan"]



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
    order = _order(scores, kept, prune_first, where)
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


def _order(scores: torch.Tensor, kept: torch.Tensor, prune_first: str, where: str) -> list[int]:
    """Flat grid indices, first to prune first (absent units last), ties by (layer, unit);
    a non-finite score of a present unit is an error naming the step."""
    bad = kept & ~torch.isfinite(scores)
    if bad.any():
        l, h = bad.nonzero()[0].tolist()
        raise NonFiniteGradientError(
            f"{where}: the score of present unit ({l}, {h}) is {scores[l, h].item()}: the model gives non-finite "
            "values (NaN or inf in its weights or inputs?), so nothing can be chosen"
        )
    key = scores.double() if prune_first == "lowest" else -scores.double()
    key = torch.where(kept, key, torch.full_like(key, math.inf))
    return torch.argsort(key.flatten(), stable=True).tolist()


@dataclass(frozen=True)
class UniformPlan:
    """A uniform run: `cells` (Long grid: the cell of every unit), `per_round` units removed per
    round (one per cell still present), `rounds` to run, `units` = their total."""

    cells: torch.Tensor
    per_round: int
    rounds: int
    units: int


def _cells(layout: HeadLayout, unit: PruningUnit) -> torch.Tensor:
    rows, width = unit.shape(layout)
    layer = torch.arange(rows)[:, None].expand(rows, width)
    if not unit.is_group and layout.grouped:  # a cell per (layer, key/value group)
        return layer * layout.kv_heads + layout.kv_group_of()[None, :]
    return layer.clone()


def uniform_plan(
    layout: HeadLayout, unit: PruningUnit, ratio: float | None, steps: int | None, per_step: int, min_heads: int
) -> UniformPlan:
    """The rounds of a uniform run. The model must start uniform (every cell holding as many units);
    `steps` counts rounds; a `ratio` of the present units that is not a whole number of rounds is
    rounded down, with a warning saying so; `min_heads` bounds the units a layer keeps."""
    if per_step != 1:
        raise ValueError(f"uniform pruning removes one unit per layer (or per key/value group) each step; "
                         f"heads_per_step must be 1, got {per_step}")
    kept = unit.kept_mask(layout)
    cells = _cells(layout, unit)
    sizes = torch.bincount(cells[kept], minlength=int(cells.max()) + 1)
    per_layer = [int((sizes[cells[l].unique()] > 0).sum()) for l in range(cells.shape[0])]  # cells present
    present_sizes = sizes[sizes > 0].tolist()
    if len(set(present_sizes)) > 1 or len(set(per_layer)) > 1:
        raise ValueError(
            f"uniform pruning needs a uniform model, but its layers hold {kept.sum(dim=1).tolist()} "
            f"{unit.words}" + (f" in key/value groups of {present_sizes}" if not unit.is_group and layout.grouped
                                     else "") + "; prune it with uniform=False"
        )
    size = present_sizes[0] if present_sizes else 0  # units per cell
    per_round = len(present_sizes)
    max_rounds = max(0, size - math.ceil(min_heads / per_layer[0])) if per_round else 0
    if ratio is not None and steps is not None:
        raise ValueError(f"give ratio= or steps=, not both (got ratio={ratio!r}, steps={steps!r})")
    if ratio is not None:
        present = int(kept.sum())
        exact = check_ratio(ratio) * present / max(1, per_round)
        rounds = math.floor(exact + 1e-9)
        if rounds > max_rounds:
            raise ValueError(f"ratio {ratio} means {rounds} rounds of {per_round} {unit.words}, but only "
                             f"{max_rounds} can be run with min_heads_per_layer={min_heads}")
        if abs(exact - rounds) > 1e-9:
            warnings.warn(
                f"ratio {ratio} of {present} {unit.words} is {exact:.2f} uniform rounds of {per_round}; "
                f"rounded down to {rounds} rounds ({rounds * per_round} {unit.words}, "
                f"ratio {rounds * per_round / present:.4f})", stacklevel=4)
    elif steps is not None:
        rounds = check_count(steps, "steps", 0)
        if rounds > max_rounds:
            raise ValueError(f"steps={steps} is more than this model allows: uniform pruning can run {max_rounds} "
                             f"rounds of {per_round} {unit.words} with min_heads_per_layer={min_heads}")
    else:
        rounds = max_rounds
    return UniformPlan(cells=cells, per_round=per_round, rounds=rounds, units=rounds * per_round)


def choose_uniform(
    scores: torch.Tensor, kept: torch.Tensor, cells: torch.Tensor, prune_first: str, where: str
) -> list[Head]:
    """One round: in every cell still holding units, its lowest (or highest) scored one, ties
    broken by (layer, unit); returned in (layer, unit) order."""
    width = scores.shape[1]
    flat_cells = cells.flatten().tolist()
    taken: set[int] = set()
    chosen: list[Head] = []
    for flat in _order(scores, kept, prune_first, where):
        l, h = divmod(flat, width)
        if kept[l, h] and flat_cells[flat] not in taken:
            taken.add(flat_cells[flat])
            chosen.append((l, h))
    return sorted(chosen)
