"""Facts read off one pruning run: how far a greedy order departs from the order a static
method would follow, and where the parameters are as heads go."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from gnorm_kernels.engine.trajectory import Trajectory

__all__ = ["order_against_static", "parameter_split"]


def order_against_static(trajectory: "Trajectory") -> dict[str, Any]:
    """How far a greedy run's order is from the order of its first score grid (the full model's
    scores, which a static method follows): `static_rank[n]`, the rank on the full model of the head
    greedy step n + 1 removed; `overlap[k - 1]`, the share of the first k heads both orders hold;
    `spearman`, the rank correlation of the two orders; `jumps`, (head, step, static rank) for the
    heads pruned furthest ahead of their static rank, largest first."""
    first = trajectory.scores_at(1)
    if first is None:
        raise ValueError(f"{trajectory.method!r} records no score grid at step 1: it needs a scored (greedy) run")
    order = trajectory.order
    sign = 1.0 if trajectory.prune_first == "lowest" else -1.0
    present = [(l, h) for l in range(first.shape[0]) for h in range(first.shape[1]) if math.isfinite(float(first[l, h]))]
    static = sorted(present, key=lambda lh: (sign * float(first[lh]), lh))
    rank = {head: r for r, head in enumerate(static)}
    static_rank = [rank[h] for h in order]
    overlap = [len(set(order[:k]) & set(static[:k])) / k for k in range(1, len(order) + 1)]
    steps = np.arange(len(order))
    spearman = float(np.corrcoef(steps, np.asarray(static_rank))[0, 1]) if len(order) > 1 else float("nan")
    jumps = sorted(((h, n + 1, r) for n, (h, r) in enumerate(zip(order, static_rank))), key=lambda x: x[1] - 1 - x[2])
    return {"static_rank": static_rank, "overlap": overlap, "spearman": spearman,
            "jumps": [j for j in jumps if j[2] > j[1] - 1]}


def parameter_split(model: Any, trajectory: "Trajectory", ratios: Sequence[float]) -> list[dict[str, Any]]:
    """For each ratio: {ratio, attention, rest}, the parameter counts in the attention blocks (Q, K,
    V, O) and elsewhere after pruning the run's heads up to that ratio (on a copy of `model`)."""
    import copy

    from gnorm_kernels.evaluation import parameter_count
    from gnorm_kernels.heads.families import head_layout
    from gnorm_kernels.heads.pruning import prune_heads

    rows = []
    for ratio in ratios:
        m = prune_heads(copy.deepcopy(model), trajectory.pruned_heads_at(ratio))
        attention = sum(p.numel() for b in head_layout(m).blocks for part in (b.query, b.key, b.value, b.output)
                        for p in part.parameters())
        rows.append({"ratio": float(ratio), "attention": attention, "rest": parameter_count(m) - attention})
    return rows
