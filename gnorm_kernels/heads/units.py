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

from typing import Literal

import torch

from gnorm_kernels.heads.layout import AttentionBlock, HeadLayout

__all__ = [
    "UNITS",
    "Unit",
    "check_unit",
    "group_mean",
    "group_sum",
    "kept_unit_mask",
    "kv_positions",
    "unit_qkv_norms",
    "unit_shape",
]

UNITS = ("head", "kv_group")
Unit = Literal["head", "kv_group"]


def check_unit(unit: object, layout: HeadLayout | None = None) -> str:
    """`unit` checked to be one of `UNITS` (and, given a layout, to make sense for its model)."""
    if not isinstance(unit, str) or unit not in UNITS:
        raise ValueError(f"unit must be one of {list(UNITS)}, got {unit!r}")
    if unit == "kv_group" and layout is not None and not layout.grouped:
        raise ValueError(
            f"unit='kv_group' needs grouped-query attention (several query heads per key/value head), but this "
            f"{layout.family} model has one query head per key/value head, so a group is a single head: "
            "use unit='head'"
        )
    return unit


def unit_shape(layout: HeadLayout, unit: str) -> tuple[int, int]:
    """The score grid of `unit`: [L, H] for heads, [L, H_kv] for key/value groups."""
    return layout.shape if unit == "head" else layout.kv_shape


def kept_unit_mask(layout: HeadLayout, unit: str) -> torch.Tensor:
    """Bool grid of `unit_shape`: True where the unit is still (at least partly) present."""
    return layout.kept_mask() if unit == "head" else layout.kept_kv_mask()


def kv_positions(block: AttentionBlock, device: torch.device | str | None = None) -> torch.Tensor:
    """Long [kept query heads]: the row, among the block's kept key/value heads, that each kept
    query head reads (the identity without grouping). Groups may be uneven after head pruning."""
    kept = block.kept_heads
    if not block.num_kv_heads:
        return torch.arange(len(kept), device=device)
    kv = block.kept_kv_heads
    return torch.tensor([kv.index(block.kv_head_of(h)) for h in kept], dtype=torch.long, device=device)


def unit_qkv_norms(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: AttentionBlock, unit: str
) -> torch.Tensor:
    """One block's Q, K, V block norms as norms per unit -> [3, ..., units kept].

    q: [..., kept query heads]; k, v: [..., kept key/value heads] (in weight-row order). For
    "head", K and V are those of each query head's group; for "kv_group", Q is the Frobenius norm
    of the group's stacked Q rows: the square root of the sum of its query heads' squared norms.
    Call it on the norms of one gradient (a batch's, an example's) before averaging them.
    """
    if unit == "head":
        if not block.num_kv_heads:
            return torch.stack([q, k, v])
        pos = kv_positions(block, q.device)
        return torch.stack([q, k.index_select(-1, pos), v.index_select(-1, pos)])
    pos = kv_positions(block, q.device)
    squares = q.new_zeros(*q.shape[:-1], k.shape[-1]).index_add_(-1, pos, q.square())
    return torch.stack([squares.sqrt(), k, v])


def _groups(grid: torch.Tensor, layout: HeadLayout) -> torch.Tensor:
    """[..., L, H] -> [..., L, H_kv, H / H_kv]: each key/value head's query heads (original indices)."""
    return grid.unflatten(-1, (layout.kv_heads, layout.num_heads // layout.kv_heads))


def group_sum(grid: torch.Tensor, layout: HeadLayout) -> torch.Tensor:
    """[..., L, H] per query head -> [..., L, H_kv]: the sum over each group's query heads."""
    return _groups(grid, layout).sum(dim=-1)


def group_mean(grid: torch.Tensor, layout: HeadLayout) -> torch.Tensor:
    """[L, H] per query head -> [L, H_kv]: the mean over each group's heads still present (NaN for
    a group with none)."""
    kept = _groups(layout.kept_mask(), layout)
    values = torch.where(kept, _groups(grid, layout), torch.zeros((), dtype=grid.dtype))
    count = kept.sum(dim=-1)
    mean = values.sum(dim=-1) / count.clamp_min(1)
    return torch.where(count > 0, mean, torch.full_like(mean, float("nan")))

