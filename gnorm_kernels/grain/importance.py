"""Unit importance for GRAIN: first-order Taylor scores, their moving average, the structure
regulariser, and the global ranking that turns scores into masks.

Taylor importance of a unit is |Σ ∂L/∂w · w| over its weights, read from the ``.grad`` fields
after a backward pass. GRAIN's released code reads only part of each unit (``reads="official"``):
W_Q and b_Q for a query unit, the W_O column for a value unit and the W2 column for an FFN
neuron. ``reads="all"`` sums over every weight of the unit (W_K and b_K, W_V and b_V, W1 and b1
as well). Either way, Σ ∂L/∂w · w over a row of W_Q and b_Q equals ∂L/∂m for a gate m on that
query dimension, so the score is the gradient of the loss with respect to the unit's mask.
"""

from __future__ import annotations

import math

import torch

from gnorm_kernels.grain.units import UnitBlock, UnitLayout, Units

__all__ = [
    "unit_taylor_importance",
    "ImportanceEMA",
    "structure_regularize",
    "select_units",
    "READS",
]

READS = ("official", "all")


def _row_taylor(linear: torch.nn.Linear, with_bias: bool = True) -> torch.Tensor:
    """Σ_j ∂L/∂W[r, j] · W[r, j] (+ bias term) for every output row r."""
    w, g = linear.weight, linear.weight.grad
    if g is None:
        return torch.zeros(w.shape[0], device=w.device)
    out = (g * w).sum(1)
    if with_bias and linear.bias is not None and linear.bias.grad is not None:
        out = out + linear.bias.grad * linear.bias
    return out.detach().float()


def _col_taylor(linear: torch.nn.Linear) -> torch.Tensor:
    """Σ_i ∂L/∂W[i, c] · W[i, c] for every input column c."""
    w, g = linear.weight, linear.weight.grad
    if g is None:
        return torch.zeros(w.shape[1], device=w.device)
    return (g * w).sum(0).detach().float()


def _scatter_heads(block: UnitBlock, rows: torch.Tensor, num_heads: int, head_size: int) -> torch.Tensor:
    """Row scores of a (possibly head-pruned) projection -> [H, d] on the original grid."""
    grid = torch.zeros(num_heads, head_size)
    kept = list(block.kept_heads)
    if kept:
        grid[kept] = rows.cpu().view(len(kept), head_size)
    return grid


@torch.no_grad()
def unit_taylor_importance(layout: UnitLayout, *, reads: str = "official") -> Units:
    """|Σ ∂L/∂w · w| per GRAIN unit from the gradients currently stored on the model's weights.

    (Not `gnorm_kernels.scoring.registry.taylor_importance`, which scores whole heads through gates.)
    """
    if reads not in READS:
        raise ValueError(f"reads must be one of {list(READS)}, got {reads!r}")
    scores = Units.zeros(layout)
    H, d = layout.num_heads, layout.head_size
    for block in layout.blocks:
        att = block.attention
        q = _row_taylor(att.query)
        v = _col_taylor(att.output)
        f = _col_taylor(block.ffn_out)
        if reads == "all":
            q = q + _row_taylor(att.key)
            v = v + _row_taylor(att.value)
            f = f + _row_taylor(block.ffn_in)
        scores.query[block.index] = _scatter_heads(block, q, H, d)
        scores.value[block.index] = _scatter_heads(block, v, H, d)
        scores.ffn[block.index] = f.cpu()
    return scores.map(torch.abs)


class ImportanceEMA:
    """Exponential moving average of unit scores: s ← β·s + (1 − β)·score (β = 0.998 in GRAIN)."""

    def __init__(self, beta: float = 0.998) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta = beta
        self.value: Units | None = None

    def update(self, scores: Units) -> Units:
        if self.value is None:
            self.value = scores.map(lambda t: (1.0 - self.beta) * t.float())
        else:
            b = self.beta
            self.value = Units(
                b * self.value.query + (1 - b) * scores.query,
                b * self.value.value + (1 - b) * scores.value,
                b * self.value.ffn + (1 - b) * scores.ffn,
            )
        return self.value


def structure_regularize(scores: Units, masks: Units, alpha: float = 0.3) -> Units:
    """Scale each value unit's score by tanh(kept fraction of its head's value units / α).

    A head that has already lost most of its value units has its remaining ones ranked lower,
    so it empties first: the model ends with fewer, fuller heads, which run faster.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    kept_fraction = masks.value.float().mean(-1, keepdim=True)
    return Units(scores.query, scores.value * torch.tanh(kept_fraction / alpha), scores.ffn)


def _drop_orphan_queries(selected: Units) -> Units:
    """A head with no value units left loses its query units too."""
    orphan = ~selected.value.any(-1, keepdim=True)
    return Units(selected.query & ~orphan, selected.value, selected.ffn)


def select_units(scores: Units, masks: Units, density: float) -> Units:
    """Keep the best units among those still kept so that ``density`` of all units remain.

    One global ranking over query units, value units and FFN neurons (all 2·D weights, so a
    budget in weights is a budget in units). Masks only shrink: a unit already dropped stays
    dropped. Query units of heads left without value units are dropped and their budget goes to
    the next-best units.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    kept = masks.map(lambda t: t.bool()).flat()
    budget = int(math.floor(density * kept.numel() + 1e-9))
    if budget >= int(kept.sum()):
        return _drop_orphan_queries(masks.map(lambda t: t.bool()))
    flat_scores = scores.flat().float()
    candidates = kept.clone()
    nq = masks.query.numel()
    while True:
        ranked = torch.where(candidates, flat_scores, torch.full_like(flat_scores, -math.inf))
        order = torch.sort(ranked, descending=True, stable=True).indices
        chosen = torch.zeros_like(kept)
        n = min(budget, int(candidates.sum()))
        chosen[order[:n]] = True
        selected = masks.unflatten(chosen)
        pruned_queries = selected.query & selected.value.any(-1, keepdim=True).logical_not()
        if not pruned_queries.any():
            return _drop_orphan_queries(selected)
        # the query units of emptied heads are out of the running; refill the budget
        candidates[:nq] &= ~pruned_queries.reshape(-1)
