"""Differentiable per-head gates (what `head_mask` used to do before transformers 5).

`mask_heads(model, mask)` multiplies each head's context vector by its gate just before the
attention output projection, through a forward pre-hook on that projection. The gate sits after
the attention itself, so it works the same with eager and sdpa attention, and for ALBERT the one
shared block is gated at every depth. With ``mask.requires_grad_()`` a backward pass gives
d loss / d gate for every head (Michel et al.'s head importance).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.layout import AttentionBlock, HeadLayout

__all__ = ["mask_heads", "check_mask"]


def check_mask(mask: torch.Tensor, layout: HeadLayout, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Validate a head mask against a layout; returns it as a floating tensor (graph kept).

    `dtype`, the model's, is what the gates become inside the forward: a gate finite in the
    mask's own dtype but not in that one (1e39 in float64, for a float32 model) is refused too."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor of shape {layout.shape}, got {type(mask).__name__}")
    if tuple(mask.shape) != layout.shape:
        raise ValueError(
            f"mask must have shape [num_layers, num_heads] = {list(layout.shape)} "
            f"for this {layout.family} model, got {list(mask.shape)}"
        )
    if mask.dtype == torch.bool or not mask.is_floating_point():
        if mask.is_complex():
            raise TypeError(f"mask must be real (bool, integer or floating), got {mask.dtype}")
        return mask.float()
    if not torch.isfinite(mask.detach()).all():
        bad = (~torch.isfinite(mask.detach())).nonzero().tolist()[:5]
        raise ValueError(f"mask must hold finite gates (1 keep, 0 drop); it has NaN or inf at (layer, head) {bad}")
    if dtype is not None and dtype.is_floating_point and torch.finfo(dtype).max < torch.finfo(mask.dtype).max:
        overflow = ~torch.isfinite(mask.detach().to(dtype))
        if overflow.any():
            where = overflow.nonzero().tolist()[:5]
            raise ValueError(
                f"mask gates at (layer, head) {where} ({mask.detach()[overflow][:5].tolist()}) overflow the model's "
                f"{dtype} (largest {torch.finfo(dtype).max:.4g}): gates must be finite in the model's dtype (1 keep, 0 drop)"
            )
    return mask


def _gate_hook(mask: torch.Tensor, block: AttentionBlock):
    kept = torch.tensor(block.kept_heads, dtype=torch.long, device=mask.device)

    def hook(module: nn.Module, args: tuple) -> tuple | None:
        (context, *rest) = args
        if kept.numel() == 0:
            return None
        gate = mask[block.index].index_select(0, kept).to(device=context.device, dtype=context.dtype)
        shape = context.shape
        gated = context.view(*shape[:-1], kept.numel(), block.head_size) * gate[:, None]
        return (gated.view(shape), *rest)

    return hook


@contextmanager
def mask_heads(model: nn.Module, mask: torch.Tensor) -> Iterator[torch.Tensor]:
    """Gate the model's heads by `mask` ([num_layers, num_heads]; 1 keep, 0 drop) inside the block.

    Values other than 0/1 scale the head's context. Entries of physically pruned heads are
    ignored. Yields the (floating) mask in use; every hook is removed on exit, even on error.
    """
    layout = head_layout(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    gates = check_mask(mask, layout, dtype)
    handles = []
    try:
        for block in layout.blocks:
            handles.append(block.output.register_forward_pre_hook(_gate_hook(gates, block)))
        yield gates
    finally:
        for handle in handles:
            handle.remove()
