"""Triton kernels: per-example head norms of a Linear's weight gradient, Gram form.

With x_b [T, D] the input and g_b [T, H*d] the output gradient of example b, head h's block of the
example's weight gradient has
    ||g_bh^T x_b||_F^2 = sum_{t,s} <g_bt, g_bs>_h <x_bt, x_bs>,
the entrywise product of two T x T Gram matrices. The x Gram matrix is the same for every head
(and for Q, K and V, which read the same x), so it is computed once:

1. `_x_gram_kernel`, program (b, pair): one [BLOCK_T, BLOCK_T] tile of x_b x_b^T. Only tiles on or
   above the diagonal are computed (the matrix is symmetric); they go to a small workspace.
2. `_head_gram_kernel`, program (b, pair, h): the same tile of head h's gradient Gram matrix, times
   the stored x tile, summed (off-diagonal tiles count twice) into a partial sum per (b, h, pair).
3. A tiny epilogue adds the partial sums and takes the square root (NaN where not finite).

Cost: about B*T^2/2*(D + P*H*d) multiply-adds for P output gradients sharing x, against
B*T*P*H*d*D for the direct form: cheaper when T is short against D. Memory traffic is the inputs
plus B*T^2 floats of workspace; no per-example gradient exists at any point. Zero rows of g
(padding) contribute exact zeros. Half inputs and float32 are handled as in per_example_direct.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common
from ._common import INTERPRETED, on_device, tile
from .torch_backend import norm_from_sumsq

NUM_WARPS = 4


@triton.jit
def _gramtile(
    base, stride_t, stride_c, rows_a, rows_b, T, C,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """Tile (rows_a, rows_b) of M M^T for the [T, C] matrix M at base; rows past T count as zero."""
    acc = tl.zeros([BLOCK_T, BLOCK_T], dtype=tl.float32)
    c_idx = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + c_idx
        a = tl.load(
            base + rows_a[:, None] * stride_t + cols[None, :] * stride_c,
            mask=(rows_a[:, None] < T) & (cols[None, :] < C),
            other=0.0,
        )
        b_t = tl.load(  # loaded transposed: [BLOCK_C, BLOCK_T]
            base + rows_b[None, :] * stride_t + cols[:, None] * stride_c,
            mask=(rows_b[None, :] < T) & (cols[:, None] < C),
            other=0.0,
        )
        if UPCAST:
            a = a.to(tl.float32)
            b_t = b_t.to(tl.float32)
        acc = tl.dot(a, b_t, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _x_gram_kernel(
    x_ptr, pairs_ptr, kx_ptr, T, D, stride_xb, stride_xt, stride_xd, n_pairs,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1)
    ti = tl.load(pairs_ptr + 2 * p)
    si = tl.load(pairs_ptr + 2 * p + 1)
    idx = tl.arange(0, BLOCK_T)
    kx = _gramtile(
        x_ptr + b * stride_xb, stride_xt, stride_xd, ti * BLOCK_T + idx, si * BLOCK_T + idx, T, D,
        BLOCK_T, BLOCK_C, UPCAST, PRECISION,
    )
    tile = idx[:, None] * BLOCK_T + idx[None, :]
    tl.store(kx_ptr + (b * n_pairs + p) * (BLOCK_T * BLOCK_T) + tile, kx)


@triton.jit
def _head_gram_kernel(
    g_ptr, pairs_ptr, kx_ptr, part_ptr, T, H, d, stride_gb, stride_gt, stride_gc, n_pairs,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1)
    h = tl.program_id(2)
    ti = tl.load(pairs_ptr + 2 * p)
    si = tl.load(pairs_ptr + 2 * p + 1)
    idx = tl.arange(0, BLOCK_T)
    g_base = g_ptr + b * stride_gb + (h * d).to(tl.int64) * stride_gc
    kg = _gramtile(g_base, stride_gt, stride_gc, ti * BLOCK_T + idx, si * BLOCK_T + idx, T, d,
                    BLOCK_T, BLOCK_C, UPCAST, PRECISION)
    tile = idx[:, None] * BLOCK_T + idx[None, :]
    kx = tl.load(kx_ptr + (b * n_pairs + p) * (BLOCK_T * BLOCK_T) + tile)
    weight = tl.where(ti == si, 1.0, 2.0)  # an off-diagonal tile stands for its mirror image too
    part = tl.sum(tl.sum(kx * kg, axis=1), axis=0) * weight
    tl.store(part_ptr + (b * H + h) * n_pairs + p, part)


def launch(x: torch.Tensor, grad_outs: list[torch.Tensor], num_heads: int, out: torch.Tensor) -> torch.Tensor:
    """Per-example head norms of every grad_outs[p] (all sharing x) into out [P, B, H]. 1 + P launches."""
    B, T, D = x.shape
    H = num_heads
    P = len(grad_outs)
    d = grad_outs[0].shape[-1] // H
    block_t = tile(T)
    n_tiles = triton.cdiv(T, block_t)
    pairs = torch.tensor(
        [(i, j) for i in range(n_tiles) for j in range(i, n_tiles)], dtype=torch.int32, device=x.device
    )
    n_pairs = pairs.shape[0]
    upcast = INTERPRETED or x.dtype == torch.float32
    common = dict(BLOCK_T=block_t, UPCAST=upcast, PRECISION=_common.FP32_DOT_PRECISION, num_warps=NUM_WARPS)
    # Workspaces start as NaN, so a tile no program wrote shows up in the result.
    kx = torch.full((B, n_pairs, block_t, block_t), float("nan"), device=x.device)
    part = torch.full((P, B, H, n_pairs), float("nan"), device=x.device)
    with on_device(x.device):
        _x_gram_kernel[(B, n_pairs)](x, pairs, kx, T, D, *x.stride(), n_pairs, BLOCK_C=tile(D, high=32), **common)
        for p, g in enumerate(grad_outs):
            _head_gram_kernel[(B, n_pairs, H)](
                g, pairs, kx, part[p], T, H, d, *g.stride(), n_pairs, BLOCK_C=tile(d), **common
            )
    return out.copy_(norm_from_sumsq(part.sum(dim=-1)))
