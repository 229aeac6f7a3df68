"""Pure-PyTorch reference of every kernel: always available, used on CPU and by the tests.

Inputs are assumed checked (see `gnorm_kernels.kernels`, which validates before dispatching here).
All results are float32; a head whose sum of squares is not finite (a NaN or inf in its block, or a
norm beyond float32's range) is NaN, the same rule as the kernels.
"""
from __future__ import annotations

from typing import Sequence

import torch

# Temporaries of the per-example forms are cut into chunks of at most this many float32 elements.
_CHUNK_ELEMENTS = 1 << 22


def finite_or_nan(sumsq: torch.Tensor) -> torch.Tensor:
    """sqrt of a sum of squares, NaN where the sum is not finite (clamped at 0 against round-off)."""
    return torch.where(torch.isfinite(sumsq), sumsq.clamp_min(0).sqrt(), torch.full_like(sumsq, float("nan")))


def head_block_norms(grad: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Frobenius norm of each head's [d, D] row block of grad [..., H*d, D] -> [..., H] float32."""
    *lead, rows, cols = grad.shape
    if num_heads == 0:
        return grad.new_zeros((*lead, 0), dtype=torch.float32)
    blocks = grad.reshape(*lead, num_heads, (rows // num_heads) * cols)
    norms = torch.linalg.vector_norm(blocks, dim=-1, dtype=torch.float32)
    return torch.where(torch.isfinite(norms), norms, torch.full_like(norms, float("nan")))


def qkv_head_norms(
    layers: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None],
    heads: Sequence[int],
    out: torch.Tensor,
) -> torch.Tensor:
    """Block norms of every layer's Q, K, V gradient into out [L, 3, H_max]; NaN past a layer's heads."""
    out.fill_(float("nan"))
    for l, (layer, h) in enumerate(zip(layers, heads)):
        if layer is None or h == 0:
            continue
        for p, g in enumerate(layer):
            out[l, p, :h] = head_block_norms(g, h)
    return out


def per_example_head_norms(
    x: torch.Tensor, grad_outs: Sequence[torch.Tensor], num_heads: int, form: str
) -> torch.Tensor:
    """Per-example, per-head norms of a Linear's weight gradient for each output gradient -> [P, B, H].

    x [B, T, D] is the Linear's input; each grad_outs[p] [B, T, H*d] is the gradient of its output.
    Example b's gradient is G_b = grad_out[b]^T x[b]; its head block h is rows h*d..(h+1)*d.
    form "direct" builds G_b a few examples at a time; form "gram" uses
    ||d_h^T x||^2 = sum_{t,s} <d_t, d_s> <x_t, x_s> and shares x's Gram matrix across heads and outputs."""
    B, T, D = x.shape
    P = len(grad_outs)
    H = num_heads
    out = torch.zeros((P, B, H), dtype=torch.float32, device=x.device)
    if B == 0 or H == 0 or T == 0:
        return out
    d = grad_outs[0].shape[-1] // H
    x32 = x.float()
    if form == "gram":
        kx = torch.bmm(x32, x32.transpose(1, 2))  # [B, T, T]
        per_chunk = max(1, _CHUNK_ELEMENTS // max(1, B * T * T))
        for p, g in enumerate(grad_outs):
            g32 = g.float().reshape(B, T, H, d)
            for h0 in range(0, H, per_chunk):
                gh = g32[:, :, h0 : h0 + per_chunk]
                kg = torch.einsum("bthc,bshc->bhts", gh, gh)  # [B, h, T, T]
                out[p, :, h0 : h0 + per_chunk] = torch.einsum("bhts,bts->bh", kg, kx)
    elif form == "direct":
        per_chunk = max(1, _CHUNK_ELEMENTS // max(1, H * d * D))
        for p, g in enumerate(grad_outs):
            g32 = g.float()
            for b0 in range(0, B, per_chunk):
                gb = torch.bmm(g32[b0 : b0 + per_chunk].transpose(1, 2), x32[b0 : b0 + per_chunk])  # [b, H*d, D]
                blocks = gb.reshape(gb.shape[0], H, d * D)
                out[p, b0 : b0 + per_chunk] = torch.linalg.vector_norm(blocks, dim=-1).square()
    else:
        raise ValueError(f"form must be 'gram' or 'direct', got {form!r}")
    return finite_or_nan(out)
