"""The PyTorch backend: every kernel in plain PyTorch, always available.

It runs for CPU tensors under backend="auto", for backend="torch", and wherever Triton is not
installed; and each function here is the reference its Triton kernel is held to (the tests compare
the two on random inputs). Inputs are assumed checked (`gnorm_kernels.kernels` validates them before
dispatching here). All results are float32, accumulated in float32; a head whose sum of squares is
not finite is NaN (`norm_from_sumsq`, the same rule as the kernels' `_common.norm_from_sumsq`).
"""
from __future__ import annotations

from typing import Sequence

import torch

# Temporaries of the per-example forms are cut into chunks of at most this many float32 elements.
_CHUNK_ELEMENTS = 1 << 22


def norm_from_sumsq(sumsq: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """The norm sqrt(sumsq), or sumsq itself when `squared`; NaN where sumsq is not finite.

    The one rule for every result of this package's kernels: a head with a NaN or inf in its block,
    or whose float32 sum of squares overflows, reads NaN, never a silent number. The square root is
    clamped at 0 against round-off (the Gram form sums signed terms). After all-reducing partial
    sums of squares across shards (`head_block_norms(..., squared=True)`), this gives the norms."""
    nan = torch.full_like(sumsq, float("nan"))
    value = sumsq if squared else sumsq.clamp_min(0).sqrt()
    return torch.where(torch.isfinite(sumsq), value, nan)


def head_block_norms(
    grad: torch.Tensor,
    num_heads: int,
    *,
    layout: str = "rows",
    squared: bool = False,
    row_offset: int = 0,
    total_rows: int | None = None,
) -> torch.Tensor:
    """Per-head norms (or sums of squares) of a weight gradient's head blocks -> [..., H] float32.

    layout="rows": grad [..., R, C] holds rows [row_offset, row_offset + R) of a [..., total_rows, C]
    gradient whose head h owns rows h*d..(h+1)*d (d = total_rows / H; an nn.Linear weight). Each head
    gets the sum over the rows it has here: 0 for a head with none, a partial sum for one cut by the
    shard's edges. layout="columns": grad [..., R, H*d] (a Conv1D weight, input-major), head h owns
    columns h*d..(h+1)*d, all R rows. The reference of block_norms.py's two kernels."""
    *lead, rows, cols = grad.shape
    if layout == "rows":
        per_unit = torch.linalg.vector_norm(grad, dim=-1, dtype=torch.float32).square()  # [..., R]
        total = rows if total_rows is None else total_rows
        first, units = row_offset, rows
    else:
        per_unit = torch.linalg.vector_norm(grad, dim=-2, dtype=torch.float32).square()  # [..., C]
        total, first, units = cols, 0, cols
    if num_heads == 0 or total == 0:
        return torch.zeros((*lead, num_heads), dtype=torch.float32, device=grad.device)
    if units != total:  # a shard: place its rows among the full count, zeros elsewhere
        full = per_unit.new_zeros((*lead, total))
        full[..., first : first + units] = per_unit
        per_unit = full
    sumsq = per_unit.reshape(*lead, num_heads, total // num_heads).sum(dim=-1)  # deterministic, unlike index_add
    return norm_from_sumsq(sumsq, squared)


def qkv_head_norms(
    layers: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None],
    counts: Sequence[tuple[int, int, int]],
    out: torch.Tensor,
) -> torch.Tensor:
    """Block norms of every layer's Q, K, V gradient into out [L, 3, H_max]; NaN past each part's heads.

    counts[l] = (H_l, H_kv_l, H_kv_l): the heads of layer l's Q, K and V (fewer K/V heads under
    grouped-query attention). The reference of the one-launch table path (`block_norms.qkv_table`)."""
    out.fill_(float("nan"))
    for l, (layer, layer_counts) in enumerate(zip(layers, counts)):
        if layer is None:
            continue
        for p, (g, h) in enumerate(zip(layer, layer_counts)):
            if h:
                out[l, p, :h] = head_block_norms(g, h)
    return out


def per_example_head_norms(
    x: torch.Tensor, grad_outs: Sequence[torch.Tensor], num_heads: int, form: str
) -> torch.Tensor:
    """Per-example, per-head norms of a Linear's weight gradient for each output gradient -> [P, B, H].

    x [B, T, D] is the Linear's input; each grad_outs[p] [B, T, H*d] is the gradient of its output.
    Example b's gradient is G_b = grad_out[b]^T x[b]; its head block h is rows h*d..(h+1)*d.
    form "direct" builds G_b a few examples at a time; form "gram" uses
    ||d_h^T x||^2 = sum_{t,s} <d_t, d_s> <x_t, x_s> and shares x's Gram matrix across heads and outputs.
    The reference of per_example_direct.py and per_example_gram.py."""
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
    return norm_from_sumsq(out)
