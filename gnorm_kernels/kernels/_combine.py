"""Combining the G_Q, G_K, G_V block norms into one score per (query) head."""
from __future__ import annotations

from typing import Sequence

import torch

from ._checks import kv_heads_per_layer, per_layer_heads

COMBINES = ("product", "sum", "max")


def combine_qkv_norms(
    norms: torch.Tensor,
    combine: str = "product",
    *,
    num_heads: int | Sequence[int] | None = None,
    num_kv_heads: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """[L, 3, H] block norms -> [L, H] scores: G_Q*G_K*G_V (Greedy-Gnorm), their sum or their max.

    Grouped-query attention (num_kv_heads given, with num_heads: ints or one per layer): K and V
    have H_kv heads, in norms[:, 1:, :H_kv], and query head h is scored with its KV head
    g = h // (H / H_kv): G_Q(h) * G_K(g) * G_V(g). NaN entries (heads past a pruned layer's count)
    stay NaN under every combination."""
    if not isinstance(norms, torch.Tensor) or norms.dim() != 3 or norms.shape[1] != 3:
        shape = list(norms.shape) if isinstance(norms, torch.Tensor) else type(norms).__name__
        raise ValueError(f"norms must be a [L, 3, H] tensor, got {shape}")
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    if num_kv_heads is not None:
        norms = _kv_norms_per_query_head(norms, num_heads, num_kv_heads)
    if combine == "product":
        return norms.prod(dim=1)
    if combine == "sum":
        return norms.sum(dim=1)
    return norms.amax(dim=1)


def _kv_norms_per_query_head(
    norms: torch.Tensor, num_heads: int | Sequence[int] | None, num_kv_heads: int | Sequence[int]
) -> torch.Tensor:
    """[L, 3, H] with K and V norms per KV head -> the same with K and V norms per query head."""
    if num_heads is None:
        raise ValueError("num_kv_heads needs num_heads too: the group size is num_heads / num_kv_heads")
    L, _, h_max = norms.shape
    heads = per_layer_heads(num_heads, L)
    kv = kv_heads_per_layer(heads, num_kv_heads)
    for l, h in enumerate(heads):
        if h > h_max:
            raise ValueError(f"layer {l}: num_heads={h} but norms have only {h_max} head slots")
    group = torch.tensor([h // g if g else 1 for h, g in zip(heads, kv)], device=norms.device)
    kv_of_head = (torch.arange(h_max, device=norms.device)[None, :] // group[:, None]).clamp_max(max(h_max - 1, 0))
    kv_norms = norms[:, 1:].gather(2, kv_of_head[:, None, :].expand(L, 2, h_max))
    return torch.cat([norms[:, :1], kv_norms], dim=1)
