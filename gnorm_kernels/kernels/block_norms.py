"""Triton kernels: the Frobenius norm (or sum of squares) of every head's block of weight gradients.

A head's block of an nn.Linear gradient [H*d, D] is rows h*d..(h+1)*d: d*D elements that lie
contiguously in memory. `_block_sumsq_kernel` treats the whole model as a list of such blocks, all of
the same length K = d*D: either consecutive in one tensor (`launch_contiguous`: [..., H*d, D] seen as
[n_blocks, K]) or anywhere in memory, given by a table of block addresses (`launch_table`, and
`qkv_table` / `launch_qkv_table` for the Q/K/V gradients of a whole model, physically pruned or
not, or the segments of a `QKVGradientBuffer`), so that one launch covers every layer.

Program (blk, s) streams chunk s of block blk, squares and sums in float32 (half types are converted
right after the load) and writes either the final result (one chunk per block: the usual case, a
whole model has hundreds of blocks) or a partial sum that a tiny epilogue adds up (several chunks per
block, when there are fewer blocks than SMs, e.g. one layer's gradient).

`_strided_block_sumsq_kernel` covers the blocks that are not one contiguous run: a head's COLUMN
block of a GPT-2 Conv1D gradient [D, H*d] (input-major), any non-contiguous view (e.g. one third of
the fused c_attn gradient [D, 3*H*d]), and the rows of a shard (FSDP2 splits a gradient's rows
across ranks, so a head block may be cut by the shard's edges). Program (m, h) walks its head's
[rows, columns] tile by tile through the tensor's strides.

It is a memory-bound reduction: every gradient element is read once (bytes = n_blocks * K * itemsize,
e.g. 85 MB for BERT-base's float32 Q/K/V, 24 x 3 x 1024 x 1024 x 4 = 302 MB for BERT-large), and
only n_blocks float32 values are written. Its time floor is bytes / DRAM bandwidth (at an H200's
4.8 TB/s: about 18 us for BERT-base, 63 us for BERT-large); the benchmark (bench/kernels.py) reports
the achieved fraction of the device's copy bandwidth, measured in the same run.

A block with a NaN or inf, or whose float32 sum of squares overflows, gets NaN rather than inf
(`_common.norm_from_sumsq`), so that every broken head reads the same way downstream.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch
import triton
import triton.language as tl

from ._common import INTERPRETED, norm_from_sumsq, on_device
from .torch_backend import norm_from_sumsq as norm_from_sumsq_torch

BLOCK = 4096  # elements loaded per program per loop step (16 per thread with 8 warps)
NUM_WARPS = 8
_MIN_CHUNK = 8 * BLOCK  # a program streams at least this many elements before splitting pays


@triton.jit
def _block_sumsq_kernel(
    src_ptr,  # the gradient (contiguous mode) or any tensor of the gradients' dtype (table mode)
    table_ptr,  # int64 [n_blocks]: each block's address (table mode only)
    out_index_ptr,  # int64 [n_blocks]: where block blk's result goes in out (table mode only)
    out_ptr,  # float32: the results (one chunk per block) or partial sums [n_blocks, n_chunks]
    K,  # elements per block
    chunk,  # elements per program, a multiple of BLOCK
    n_chunks,
    USE_TABLE: tl.constexpr,
    ALIGNED: tl.constexpr,  # every table address is 16-byte aligned: lets loads be vectorised
    FINAL: tl.constexpr,  # n_chunks == 1: write the result directly
    SQUARED: tl.constexpr,  # the result is the sum of squares itself, not its square root
    BLOCK: tl.constexpr,
):
    blk = tl.program_id(0)
    s = tl.program_id(1)
    if USE_TABLE:
        base = tl.load(table_ptr + blk).to(tl.pointer_type(src_ptr.dtype.element_ty))
        if ALIGNED:
            base = tl.multiple_of(base, 16)
    else:
        base = src_ptr + blk.to(tl.int64) * K

    # Stream this program's chunk; the mask only bites on the block's last step.
    start = s * chunk
    stop = tl.minimum(start + chunk, K)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for k0 in range(start, stop, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        x = tl.load(base + offs, mask=offs < K, other=0.0).to(tl.float32)
        acc += x * x
    sumsq = tl.sum(acc, axis=0)

    if FINAL:
        result = norm_from_sumsq(sumsq, SQUARED)
        if USE_TABLE:
            tl.store(out_ptr + tl.load(out_index_ptr + blk), result)
        else:
            tl.store(out_ptr + blk, result)
    else:
        tl.store(out_ptr + blk.to(tl.int64) * n_chunks + s, sumsq)


@triton.jit
def _strided_block_sumsq_kernel(
    src_ptr,  # [M, R, C] through its strides: M matrices of R rows and C columns
    out_ptr,  # float32 [M, H], contiguous
    R,
    C,
    d,  # rows (layout "rows") or columns (layout "columns") per head
    row_offset,  # "rows": the global index of local row 0 (a shard's first row); else 0
    stride_m,
    stride_r,
    stride_c,
    COLUMNS: tl.constexpr,  # head h owns columns h*d..(h+1)*d (else global rows h*d..(h+1)*d)
    SQUARED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    m = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    # The head's tile range [r_lo, r_hi) x [c_lo, c_hi) in local coordinates. For a shard's rows it
    # is cut to the rows present here, and empty (sum 0) for a head with none of them.
    if COLUMNS:
        r_lo = 0
        r_hi = R
        c_lo = h * d
        c_hi = c_lo + d
    else:
        r_lo = tl.maximum(h * d - row_offset, 0)
        r_hi = tl.minimum((h + 1) * d - row_offset, R)
        c_lo = 0
        c_hi = C
    base = src_ptr + m * stride_m
    r_idx = tl.arange(0, BLOCK_R)
    c_idx = tl.arange(0, BLOCK_C)

    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for r0 in range(r_lo, r_hi, BLOCK_R):
        rows = r0 + r_idx
        for c0 in range(c_lo, c_hi, BLOCK_C):
            cols = c0 + c_idx
            x = tl.load(
                base + rows[:, None].to(tl.int64) * stride_r + cols[None, :].to(tl.int64) * stride_c,
                mask=(rows[:, None] < r_hi) & (cols[None, :] < c_hi),
                other=0.0,
            ).to(tl.float32)
            acc += x * x
    sumsq = tl.sum(tl.sum(acc, axis=1), axis=0)
    tl.store(out_ptr + m * tl.num_programs(1) + h, norm_from_sumsq(sumsq, SQUARED))


@lru_cache(maxsize=None)
def _sm_count(index: int | None) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _plan(n_blocks: int, K: int, device: torch.device, split: int | None) -> tuple[int, int]:
    """(chunk, n_chunks) per block. One chunk (one launch, no epilogue) unless there are fewer blocks
    than SMs, e.g. a single layer's gradient: then blocks are split to give about two programs per SM."""
    if split is None:
        split = 1
        if device.type == "cuda" and not INTERPRETED:
            sms = _sm_count(device.index)
            if n_blocks < sms:
                split = max(1, min(triton.cdiv(2 * sms, max(n_blocks, 1)), triton.cdiv(K, _MIN_CHUNK)))
    chunk = triton.cdiv(triton.cdiv(K, max(split, 1)), BLOCK) * BLOCK
    chunk = max(chunk, BLOCK)
    return chunk, triton.cdiv(K, chunk)


def _launch(src, table, out_index, out_flat, n_blocks: int, K: int, aligned: bool, squared: bool, split) -> None:
    chunk, n_chunks = _plan(n_blocks, K, src.device, split)
    final = n_chunks == 1
    target = out_flat if final else torch.full((n_blocks, n_chunks), float("nan"), device=src.device)
    use_table = table is not None
    with on_device(src.device):
        _block_sumsq_kernel[(n_blocks, n_chunks)](
            src,
            table if use_table else src,
            out_index if use_table else src,
            target,
            K,
            chunk,
            n_chunks,
            USE_TABLE=use_table,
            ALIGNED=aligned,
            FINAL=final,
            SQUARED=squared,
            BLOCK=BLOCK,
            num_warps=NUM_WARPS,
        )
    if not final:  # the epilogue: add the partial sums of each block
        results = norm_from_sumsq_torch(target.sum(dim=1), squared)
        if use_table:
            out_flat[out_index] = results
        else:
            out_flat.copy_(results)


def launch_contiguous(
    grad: torch.Tensor, num_heads: int, out: torch.Tensor, *, squared: bool = False, split: int | None = None
) -> torch.Tensor:
    """Row-block results of a contiguous grad [..., H*d, D] into out [..., H] (float32, contiguous). One launch."""
    *lead, rows, cols = grad.shape
    n_blocks = out.numel()
    K = (rows // num_heads) * cols if num_heads else 0
    if n_blocks == 0:
        return out
    if K == 0:
        return out.zero_()
    _launch(grad, None, None, out.view(-1), n_blocks, K, aligned=False, squared=squared, split=split)
    return out


def launch_strided(
    grad: torch.Tensor,
    num_heads: int,
    out: torch.Tensor,
    *,
    columns: bool,
    squared: bool,
    row_offset: int = 0,
    total_rows: int | None = None,
) -> torch.Tensor:
    """Head-block results of grad [..., R, C] with any strides into out [..., H]. One launch.

    columns: head h owns columns h*d..(h+1)*d, d = C / H. Otherwise grad holds rows
    [row_offset, row_offset + R) of a gradient of total_rows rows, head h owning its global rows
    h*d..(h+1)*d, d = total_rows / H (see torch_backend.head_block_norms)."""
    *lead, R, C = grad.shape
    if out.numel() == 0:
        return out
    src = grad.reshape(math.prod(lead), R, C)  # a view whenever the leading dims allow it
    d = C // num_heads if columns else (R if total_rows is None else total_rows) // num_heads
    # A tile of up to BLOCK elements, at most 256 wide: whole rows of a head's columns (d = 64:
    # 64 x 64), or a few 256-wide pieces of rows (D = 768: three 16 x 256 tiles, no masked lanes).
    block_c = triton.next_power_of_2(max(1, min(d if columns else C, 256)))
    block_r = max(1, min(BLOCK // block_c, triton.next_power_of_2(max(1, R if columns else d))))
    with on_device(grad.device):
        _strided_block_sumsq_kernel[(src.shape[0], num_heads)](
            src,
            out,
            R,
            C,
            d,
            row_offset,
            *src.stride(),
            COLUMNS=columns,
            SQUARED=squared,
            BLOCK_R=block_r,
            BLOCK_C=block_c,
            num_warps=NUM_WARPS if block_r * block_c >= BLOCK else 4,
        )
    return out


def block_table(
    tensors: list[torch.Tensor], heads: list[int], out_slots: list[int], block_elems: int
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(addresses, out_index, aligned) on the CPU for the head blocks of 2-D contiguous gradients.

    tensors[i] holds heads[i] blocks of block_elems elements; its block h goes to slot out_slots[i] + h.
    aligned: every block starts on a 16-byte boundary, so the kernel may use vector loads."""
    itemsize = tensors[0].element_size() if tensors else 1
    addresses = []
    index = []
    for g, h, slot in zip(tensors, heads, out_slots):
        addresses.append(g.data_ptr() + torch.arange(h, dtype=torch.int64) * (block_elems * itemsize))
        index.append(slot + torch.arange(h, dtype=torch.int64))
    addresses_t = torch.cat(addresses) if addresses else torch.empty(0, dtype=torch.int64)
    aligned = bool((addresses_t % 16 == 0).all()) if addresses_t.numel() else True
    return addresses_t, torch.cat(index) if index else torch.empty(0, dtype=torch.int64), aligned


def launch_table(
    like: torch.Tensor,
    addresses: torch.Tensor,
    out_index: torch.Tensor,
    block_elems: int,
    out_flat: torch.Tensor,
    *,
    aligned: bool,
    squared: bool = False,
    split: int | None = None,
) -> torch.Tensor:
    """Results of the blocks at `addresses` (on the device) into out_flat[out_index]. One launch.

    `like` gives the dtype and device; the caller keeps the memory alive and guarantees that every
    block is block_elems contiguous elements of that dtype."""
    n_blocks = addresses.numel()
    if n_blocks == 0:
        return out_flat
    if block_elems == 0:
        out_flat[out_index] = 0.0
        return out_flat
    _launch(like, addresses, out_index, out_flat, n_blocks, block_elems, aligned=aligned, squared=squared, split=split)
    return out_flat


# --------------------------------------------------------------------------------------------
# The one-launch path for a whole model's Q/K/V gradients


@dataclass(frozen=True)
class QKVTable:
    """Where every head block of a model's Q/K/V gradients lies, and where its norm goes in [L, 3, H_max].

    Built once per set of gradients (a `QKVGradientBuffer` keeps its own for its lifetime)."""

    addresses: torch.Tensor  # int64 [n_blocks], on the device
    out_index: torch.Tensor  # int64 [n_blocks]: flat positions in out
    padding: torch.Tensor  # int64: flat positions of out past a part's head count (set to NaN)
    block_elems: int
    aligned: bool
    sources: tuple[torch.Tensor, ...]  # the tensors the addresses point into, kept alive


def qkv_table(
    layers: Sequence[Sequence[torch.Tensor] | None],
    counts: Sequence[Sequence[int]],
    block_elems: int,
    device: torch.device,
) -> QKVTable:
    """The table for layers[l] = (Q, K, V) 2-D gradients (or None) with counts[l] = (H_l, H_kv_l, H_kv_l)
    heads of block_elems elements each. A non-contiguous gradient is copied (the copy is kept in the table)."""
    h_max = max((h for c in counts for h in c), default=0)
    tensors, heads, slots = [], [], []
    for l, (layer, layer_counts) in enumerate(zip(layers, counts)):
        if layer is None:
            continue
        for p, (g, h) in enumerate(zip(layer, layer_counts)):
            if h:
                tensors.append(g.contiguous())
                heads.append(h)
                slots.append((l * 3 + p) * h_max)
    addresses, index, aligned = block_table(tensors, heads, slots, block_elems)
    part_counts = torch.tensor([h for c in counts for h in c], dtype=torch.int64)
    padding = (torch.arange(h_max)[None, :] >= part_counts[:, None]).reshape(-1).nonzero().reshape(-1)
    # one host-to-device copy for all three index tensors
    packed = torch.cat([addresses, index, padding]).to(device)
    n, k = addresses.numel(), index.numel()
    return QKVTable(packed[:n], packed[n : n + k], packed[n + k :], block_elems, aligned, tuple(tensors))


def launch_qkv_table(table: QKVTable, out: torch.Tensor, *, squared: bool = False) -> torch.Tensor:
    """Every Q/K/V head block's result into out [L, 3, H_max] (float32, contiguous), NaN past the
    parts' head counts. One launch of `_block_sumsq_kernel` in table mode."""
    flat = out.view(-1)
    flat[table.padding] = float("nan")
    if table.sources:
        launch_table(
            table.sources[0], table.addresses, table.out_index, table.block_elems, flat,
            aligned=table.aligned, squared=squared,
        )
    return out
