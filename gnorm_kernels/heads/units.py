"""What a head scorer ranks and a pruning driver removes: one query head, or one key/value group.

* ``unit="head"``: a query head (layer, original head index); grid ``[L, H]``. Under
  grouped-query attention its key/value blocks are those of the group it reads.
* ``unit="kv_group"``: a key/value head together with every query head that reads it
  (grouped-query attention: Llama, Qwen2, Mistral); grid ``[L, H_kv]``. Removing one keeps the
  groups uniform and shrinks the KV cache, the memory that limits long-context decoding.

Scorers return a grid on the unit's original indices, NaN for units already gone; the drivers
(`gnorm_kernels.engine.driver`) turn chosen units into a `prune_heads` or `prune_kv_groups` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from gnorm_kernels.heads.layout import AttentionBlock, HeadLayout

__all__ = ["UNITS", "UnitName", "PruningUnit", "HEAD", "KV_GROUP", "unit_of", "kv_positions"]

UNITS = ("head", "kv_group")
UnitName = Literal["head", "kv_group"]


@dataclass(frozen=True)
class PruningUnit:
    """What one pruning choice removes, and everything that differs between the two kinds: the
    score grid's shape, which units are still present, how per-head values become per-unit
    values, how Q/K/V block norms become a unit's norms, how the unit is pruned, and its words."""

    name: UnitName
    words: str  # in messages: "heads", "key/value groups"

    @property
    def is_group(self) -> bool:
        """True when one unit stands for several query heads (a key/value group)."""
        return self.name == "kv_group"

    def shape(self, layout: HeadLayout) -> tuple[int, int]:
        """The score grid: [L, H] for heads, [L, H_kv] for key/value groups."""
        return layout.kv_shape if self.is_group else layout.shape

    def kept_mask(self, layout: HeadLayout) -> torch.Tensor:
        """Bool grid of `shape`: True where the unit is still (at least partly) present."""
        return layout.kept_kv_mask() if self.is_group else layout.kept_mask()

    def kept(self, block: AttentionBlock) -> tuple[int, ...]:
        """The original indices of this block's units still present."""
        return block.kept_kv_heads if self.is_group else block.kept_heads

    def from_heads(self, grid: torch.Tensor, layout: HeadLayout, reduce: Literal["mean", "sum"]) -> torch.Tensor:
        """Per-query-head values [..., L, H] as per-unit values: for groups, the sum over each
        group's query heads, or the mean over those still present (NaN for a group with none)."""
        if not self.is_group:
            return grid
        groups = grid.unflatten(-1, (layout.kv_heads, layout.num_heads // layout.kv_heads))
        if reduce == "sum":
            return groups.sum(dim=-1)
        kept = layout.kept_mask().unflatten(-1, groups.shape[-2:])
        count = kept.sum(dim=-1)
        mean = torch.where(kept, groups, torch.zeros((), dtype=grid.dtype)).sum(dim=-1) / count.clamp_min(1)
        return torch.where(count > 0, mean, torch.full_like(mean, float("nan")))

    def qkv_norms(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: AttentionBlock) -> torch.Tensor:
        """One block's Q, K, V block norms as norms per unit -> [3, ..., units kept].

        q: [..., kept query heads]; k, v: [..., kept key/value heads] (in weight-row order). For
        heads, K and V are those of each query head's group; for groups, Q is the Frobenius norm
        of the group's stacked Q rows: the square root of the sum of its query heads' squared norms.
        Call it on the norms of one gradient (a batch's, an example's) before averaging them.
        """
        if not self.is_group:
            if not block.num_kv_heads:
                return torch.stack([q, k, v])
            pos = kv_positions(block, q.device)
            return torch.stack([q, k.index_select(-1, pos), v.index_select(-1, pos)])
        pos = kv_positions(block, q.device)
        squares = q.new_zeros(*q.shape[:-1], k.shape[-1]).index_add_(-1, pos, q.square())
        return torch.stack([squares.sqrt(), k, v])

    def prune(self, model: torch.nn.Module, units: dict[int, list[int]]) -> torch.nn.Module:
        """Remove `units` ({layer: [original unit index]}) from `model` for good."""
        from gnorm_kernels.heads.pruning import prune_heads, prune_kv_groups

        return (prune_kv_groups if self.is_group else prune_heads)(model, units)


HEAD = PruningUnit("head", "heads")
KV_GROUP = PruningUnit("kv_group", "key/value groups")


def unit_of(unit: object, layout: HeadLayout | None = None) -> PruningUnit:
    """The `PruningUnit` that `unit` ("head", "kv_group" or a unit) names, checked to make sense
    for the model of `layout` when one is given."""
    if isinstance(unit, PruningUnit):
        found = unit
    elif isinstance(unit, str) and unit in UNITS:
        found = HEAD if unit == "head" else KV_GROUP
    else:
        raise ValueError(f"unit must be one of {list(UNITS)}, got {unit!r}")
    if found.is_group and layout is not None and not layout.grouped:
        raise ValueError(
            f"unit='kv_group' needs grouped-query attention (several query heads per key/value head), but this "
            f"{layout.family} model has one query head per key/value head, so a group is a single head: "
            "use unit='head'"
        )
    return found


def kv_positions(block: AttentionBlock, device: torch.device | str | None = None) -> torch.Tensor:
    """Long [kept query heads]: the row, among the block's kept key/value heads, that each kept
    query head reads (the identity without grouping). Groups may be uneven after head pruning."""
    kept = block.kept_heads
    if not block.num_kv_heads:
        return torch.arange(len(kept), device=device)
    kv = block.kept_kv_heads
    return torch.tensor([kv.index(block.kv_head_of(h)) for h in kept], dtype=torch.long, device=device)
