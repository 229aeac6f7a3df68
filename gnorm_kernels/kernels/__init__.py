"""Gradient block norms per attention head: public functions and backend dispatch.

Every function checks its inputs here (the same errors for every backend), then runs either a
Triton kernel (one file per kernel with its launcher: `block_norms.py`, `per_example_direct.py`,
`per_example_gram.py`) or the PyTorch backend (`torch_backend.py`, also the reference the kernels
are tested against):

- backend="auto": Triton for CUDA tensors when Triton is installed, PyTorch otherwise;
- backend="triton": the Triton kernels; on a machine without CUDA they run under Triton's CPU
  interpreter. That mode is process-wide: see `enable_interpreter()` and `triton_mode()` (in
  `_triton.py`, which also says how the mode is decided once, on the first kernel call);
- backend="torch": PyTorch.

Triton is optional (the `[triton]` extra): without it this package logs one line at import and
runs everything on PyTorch; backend="triton" then raises `TritonUnavailableError`.

Inputs may be float32, float16 or bfloat16; results are float32, accumulated in float32. A head
whose float32 sum of squares is not finite (a NaN or inf in its block, or a norm beyond ~1.8e19) is
NaN, never a silent number (`torch_backend.norm_from_sumsq`). `out=` takes a float32 tensor to write
the result into (the kernels write every element of it, so a test can fill it with a sentinel
first). The results are measurements, not differentiable: every function runs under torch.no_grad().
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import torch_backend
from ._checks import (
    check_backend,
    check_block_request,
    check_count,
    check_dense_qkv,
    check_same_device,
    check_same_dtype,
    check_tensor,
    head_size,
    parse_qkv_layers,
    prepare_out,
)
from ._combine import COMBINES, combine_qkv_norms
from ._triton import TritonUnavailableError, check_device, enable_interpreter, kernel_module, triton_mode, use_triton
from .buffer import QKVGradientBuffer

__all__ = [
    "head_block_norms",
    "qkv_head_norms",
    "qkv_head_scores",
    "combine_qkv_norms",
    "per_example_head_norms",
    "per_example_qkv_head_norms",
    "QKVGradientBuffer",
    "COMBINES",
    "enable_interpreter",
    "triton_mode",
    "TritonUnavailableError",
]

QKVGrads = torch.Tensor | Sequence[Sequence[torch.Tensor | None]]
HeadCounts = int | Sequence[int]


def _use_triton(backend: str, device: torch.device) -> bool:
    return use_triton(check_backend(backend), device)


def _triton(name: str, device: torch.device):
    module = kernel_module(name)
    check_device(device)
    return module


@torch.no_grad()
def head_block_norms(
    grad: torch.Tensor,
    num_heads: int,
    *,
    layout: str = "rows",
    squared: bool = False,
    row_offset: int = 0,
    total_rows: int | None = None,
    backend: str = "auto",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Frobenius norm of each head's block of a weight gradient -> [..., H] float32.

    layout="rows" (an nn.Linear weight, [out, in]): grad [..., H*d, D], head h's block is rows
    h*d..(h+1)*d. layout="columns" (a GPT-2 Conv1D weight, [in, out]): grad [..., D, H*d], head h's
    block is columns h*d..(h+1)*d; for the fused c_attn gradient [D, 3*H*d] pass its three column
    slices (strided views are read in place). Any leading dims, e.g. [L, 3, H*d, D].

    squared=True returns the sums of squares instead of their square roots. With it, grad may be a
    shard of rows (FSDP2 shards dim 0): grad holds global rows [row_offset, row_offset + R) of a
    weight of total_rows rows, and each head gets the partial sum over its rows present here (0 when
    none are), so that summing the shards' results (an all-reduce) and taking the square root gives
    the full norms (`torch_backend.norm_from_sumsq` does that last step with the NaN rule)."""
    request = check_block_request(grad, num_heads, layout, squared, row_offset, total_rows)
    out = prepare_out(out, (*grad.shape[:-2], request.num_heads), grad.device)
    if not _use_triton(backend, grad.device):
        return out.copy_(
            torch_backend.head_block_norms(
                grad, request.num_heads, layout=layout, squared=squared,
                row_offset=request.row_offset, total_rows=request.total_rows,
            )
        )
    module = _triton("block_norms", grad.device)
    if not request.columns and not request.sharded and grad.is_contiguous():
        return module.launch_contiguous(grad, request.num_heads, out, squared=squared)
    return module.launch_strided(
        grad, request.num_heads, out, columns=request.columns, squared=squared,
        row_offset=request.row_offset, total_rows=request.total_rows,
    )


@torch.no_grad()
def qkv_head_norms(
    grads: QKVGrads,
    num_heads: HeadCounts,
    *,
    num_kv_heads: HeadCounts | None = None,
    backend: str = "auto",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """G_Q, G_K, G_V block norms of every layer in one pass -> [L, 3, H_max] float32.

    grads: a [L, 3, H*d, D] tensor, or a sequence of L layers, each a (Q, K, V) triple of 2-D
    gradients [H_l*d, D] (H_l may differ per layer after physical pruning; a layer with H_l = 0 may
    give [0, D] tensors or Nones). num_heads: H, or the per-layer counts H_l. Entry [l, p, h] for
    h >= H_l is NaN; the first H_l entries are the layer's remaining heads in their stored order.

    num_kv_heads (grouped-query attention; an int or one per layer, None = num_heads): K and V are
    [H_kv_l*d, D], and their norms per KV head are [l, 1:, :H_kv_l], NaN after.
    On the Triton backend the whole model is one kernel launch (a table of block addresses)."""
    check_backend(backend)
    if isinstance(grads, torch.Tensor):
        h = check_dense_qkv(grads, num_heads, num_kv_heads)
        return head_block_norms(grads, h, backend=backend, out=out)
    layout = parse_qkv_layers(grads, num_heads, num_kv_heads)
    out = prepare_out(out, (len(layout.layers), 3, layout.max_heads), layout.device)
    if not _use_triton(backend, layout.device):
        return torch_backend.qkv_head_norms(layout.layers, layout.counts, out)
    module = _triton("block_norms", layout.device)
    table = module.qkv_table(layout.layers, layout.counts, layout.head_size * layout.width, layout.device)
    return module.launch_qkv_table(table, out)


@torch.no_grad()
def qkv_head_scores(
    grads: QKVGrads,
    num_heads: HeadCounts,
    *,
    num_kv_heads: HeadCounts | None = None,
    combine: str = "product",
    backend: str = "auto",
) -> torch.Tensor:
    """Per-head score combine(G_Q, G_K, G_V) of every layer -> [L, H_max] float32, NaN past H_l.

    combine: "product" (Greedy-Gnorm's G_Q*G_K*G_V), "sum" or "max". See qkv_head_norms for grads.
    With num_kv_heads (grouped-query attention), query head h of a layer is scored with its KV head
    g = h // (H_l / H_kv_l): G_Q(h) * G_K(g) * G_V(g)."""
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    norms = qkv_head_norms(grads, num_heads, num_kv_heads=num_kv_heads, backend=backend)
    if num_kv_heads is None:
        return combine_qkv_norms(norms, combine)
    return combine_qkv_norms(norms, combine, num_heads=num_heads, num_kv_heads=num_kv_heads)


def _choose_form(T: int, D: int, P: int, H: int, d: int, *, symmetric: bool = True) -> str:
    """The form with fewer multiply-adds: Gram ~ T^2 (D + P*H*d), halved when only the tiles on
    and above the diagonal are computed (the kernel; the reference computes whole T x T products),
    against direct ~ T*P*H*d*D."""
    gram = T * T * (D + P * H * d) // (2 if symmetric else 1)
    return "gram" if gram < T * P * H * d * D else "direct"


@torch.no_grad()
def per_example_qkv_head_norms(
    x: torch.Tensor,
    grad_outs: Sequence[torch.Tensor],
    num_heads: int,
    *,
    form: str = "auto",
    backend: str = "auto",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example head norms for several Linears that read the same input (e.g. Q, K, V).

    x: [B, T, D], the input; grad_outs: P output gradients, each [B, T, H*d]. Returns [P, B, H]
    float32: the Frobenius norm of each example's own gradient block per head, without
    materialising per-example gradients. form: "gram" (sum_{t,s} <g_t,g_s><x_t,x_s>; x's Gram matrix
    is shared by all P outputs), "direct" (tiles of g^T x squared on the fly) or "auto" (the one with
    fewer multiply-adds for this shape and backend). Zero rows of a grad_out (padding) do not change the result."""
    check_backend(backend)
    check_tensor(x, "x")
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, D], got shape {list(x.shape)}")
    if isinstance(grad_outs, torch.Tensor) or not isinstance(grad_outs, Sequence) or not grad_outs:
        raise TypeError("grad_outs must be a non-empty sequence of [B, T, H*d] tensors")
    named = [("x", x)]
    for p, g in enumerate(grad_outs):
        what = f"grad_outs[{p}]"
        check_tensor(g, what)
        if g.dim() != 3 or g.shape[:2] != x.shape[:2]:
            raise ValueError(f"{what} must be [B, T, H*d] with B, T of x {list(x.shape[:2])}; got {list(g.shape)}")
        if g.shape != grad_outs[0].shape:
            raise ValueError(
                f"all grad_outs must have one shape; grad_outs[0] is {list(grad_outs[0].shape)}, {what} {list(g.shape)}"
            )
        named.append((what, g))
    check_same_device(named)
    check_same_dtype(named)
    H = check_count(num_heads, "num_heads")
    d = head_size(grad_outs[0].shape[-1], H, f"grad_out's last dim ({grad_outs[0].shape[-1]})")
    B, T, D = x.shape
    P = len(grad_outs)
    if form not in ("auto", "gram", "direct"):
        raise ValueError(f"form must be 'auto', 'gram' or 'direct', got {form!r}")
    on_triton = _use_triton(backend, x.device)
    if form == "auto":
        form = _choose_form(T, D, P, H, d, symmetric=on_triton)
    out = prepare_out(out, (P, B, H), x.device)
    if out.numel() == 0:
        return out
    if T == 0 or d == 0 or D == 0:
        return out.zero_()
    if not on_triton:
        return out.copy_(torch_backend.per_example_head_norms(x, list(grad_outs), H, form))
    if form == "gram":
        return _triton("per_example_gram", x.device).launch(x, list(grad_outs), H, out)
    module = _triton("per_example_direct", x.device)
    for p, g in enumerate(grad_outs):
        module.launch(x, g, H, out[p])
    return out


@torch.no_grad()
def per_example_head_norms(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    num_heads: int,
    *,
    form: str = "auto",
    backend: str = "auto",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example, per-head gradient norms of a Linear: x [B, T, D], grad_out [B, T, H*d] -> [B, H].

    The Frobenius norm of each example's own weight gradient block per head (rows h*d..(h+1)*d of
    grad_out[b]^T x[b]), without materialising per-example gradients; see per_example_qkv_head_norms."""
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
        out = out.unsqueeze(0)
    if not isinstance(grad_out, torch.Tensor):
        raise TypeError(f"grad_out must be a torch.Tensor, got {type(grad_out).__name__}")
    return per_example_qkv_head_norms(x, [grad_out], num_heads, form=form, backend=backend, out=out)[0]
