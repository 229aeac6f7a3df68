"""Triton kernel: per-example head norms of a Linear's weight gradient, direct form.

For a Linear with input x [B, T, D] and output gradient g [B, T, H*d], example b's weight gradient
is G_b = g_b^T x_b [H*d, D], and head h's block is rows h*d..(h+1)*d. Program (b, h) builds that
[d, D] block one [BLOCK_C, BLOCK_D] tile at a time as a sum over T of tl.dot products, squares the
tile and adds it up, so no per-example gradient ever reaches memory.

Cost: B*T*H*d*D multiply-adds (the same as materialising the per-example gradients) but no
B*H*d*D gradient tensor: the bytes moved are B*T*(D + H*d) inputs, re-read per head from cache.
It wins over the Gram form (per_example_gram.py) for long sequences, T >~ D.

Half inputs: on the GPU tl.dot takes them as they are and accumulates in float32; under Triton's
interpreter (where bf16 arithmetic is wrong) every tile is converted to float32 right after its load.
float32 inputs use input_precision="ieee" (no TF32 truncation), for float32-exact results.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common
from ._common import INTERPRETED, norm_from_sumsq, on_device, tile

BLOCK_T = 32
BLOCK_D = 64
NUM_WARPS = 4


@triton.jit
def _direct_kernel(
    x_ptr,
    g_ptr,
    out_ptr,  # float32 [B, H], contiguous
    T,
    D,
    H,
    d,
    stride_xb,
    stride_xt,
    stride_xd,
    stride_gb,
    stride_gt,
    stride_gc,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    x_base = x_ptr + b * stride_xb
    g_base = g_ptr + b * stride_gb + (h * d).to(tl.int64) * stride_gc
    t_idx = tl.arange(0, BLOCK_T)
    c_idx = tl.arange(0, BLOCK_C)
    d_idx = tl.arange(0, BLOCK_D)

    sq = tl.zeros([BLOCK_C, BLOCK_D], dtype=tl.float32)
    for c0 in range(0, d, BLOCK_C):  # rows of the head's block
        cols_c = c0 + c_idx
        for j0 in range(0, D, BLOCK_D):  # columns of the block
            cols_d = j0 + d_idx
            tile = tl.zeros([BLOCK_C, BLOCK_D], dtype=tl.float32)
            for t0 in range(0, T, BLOCK_T):  # G_b tile = sum over t of g[t, c]^T x[t, j]
                rows = t0 + t_idx
                g_t = tl.load(  # g loaded transposed: [BLOCK_C, BLOCK_T]
                    g_base + cols_c[:, None] * stride_gc + rows[None, :] * stride_gt,
                    mask=(cols_c[:, None] < d) & (rows[None, :] < T),
                    other=0.0,
                )
                x_t = tl.load(
                    x_base + rows[:, None] * stride_xt + cols_d[None, :] * stride_xd,
                    mask=(rows[:, None] < T) & (cols_d[None, :] < D),
                    other=0.0,
                )
                if UPCAST:
                    g_t = g_t.to(tl.float32)
                    x_t = x_t.to(tl.float32)
                tile = tl.dot(g_t, x_t, tile, input_precision=PRECISION)
            sq += tile * tile

    sumsq = tl.sum(tl.sum(sq, axis=1), axis=0)
    tl.store(out_ptr + b * H + h, norm_from_sumsq(sumsq, False))  # NaN when not finite


def launch(x: torch.Tensor, grad_out: torch.Tensor, num_heads: int, out: torch.Tensor) -> torch.Tensor:
    """Per-example head norms into out [B, H] (float32, contiguous). One launch; any strides."""
    B, T, D = x.shape
    H = num_heads
    d = grad_out.shape[-1] // H
    upcast = INTERPRETED or x.dtype == torch.float32
    with on_device(x.device):
        _direct_kernel[(B, H)](
            x,
            grad_out,
            out,
            T,
            D,
            H,
            d,
            *x.stride(),
            *grad_out.stride(),
            BLOCK_T=BLOCK_T,
            BLOCK_C=tile(d),
            BLOCK_D=BLOCK_D,
            UPCAST=upcast,
            PRECISION=_common.FP32_DOT_PRECISION,
            num_warps=NUM_WARPS,
        )
    return out
