"""Combining the G_Q, G_K, G_V block norms into one score per head."""
from __future__ import annotations

import torch

COMBINES = ("product", "sum", "max")


def combine_qkv_norms(norms: torch.Tensor, combine: str = "product") -> torch.Tensor:
    """[L, 3, H] block norms -> [L, H] scores: G_Q*G_K*G_V (Greedy-Gnorm), their sum or their max.

    NaN entries (heads past a pruned layer's count) stay NaN under every combination."""
    if not isinstance(norms, torch.Tensor) or norms.dim() != 3 or norms.shape[1] != 3:
        shape = list(norms.shape) if isinstance(norms, torch.Tensor) else type(norms).__name__
        raise ValueError(f"norms must be a [L, 3, H] tensor, got {shape}")
    if combine == "product":
        return norms.prod(dim=1)
    if combine == "sum":
        return norms.sum(dim=1)
    if combine == "max":
        return norms.amax(dim=1)
    raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
