"""Triton kernel: the Frobenius norm of every head's row block of weight gradients.

A head's block of a gradient [H*d, D] is rows h*d..(h+1)*d: d*D elements that lie contiguously in
memory. The kernel treats the whole model as a list of such blocks, all of the same length K = d*D:
either consecutive in one tensor (`launch_contiguous`: [..., H*d, D] seen as [n_blocks, K]) or anywhere
in memory, given by a table of block addresses (`launch_table`: the Q/K/V gradients of a physically
pruned model, or the segments of a `QKVGradientBuffer`), so that one launch covers every layer.

Program (blk, s) streams chunk s of block blk, squares and sums in float32 (half types are converted
right after the load) and writes either the final norm (one chunk per block: the usual case, a whole
model has hundreds of blocks) or a partial sum that a tiny epilogue adds up (several chunks per
block, when there are fewer blocks than SMs, e.g. one layer's gradient).

It is a memory-bound reduction: every gradient element is read once (bytes = n_blocks * K * itemsize,
e.g. 85 MB for BERT-base's float32 Q/K/V, 24 x 3 x 1024 x 1024 x 4 = 302 MB for BERT-large), and
only n_blocks float32 values are written. Its time floor is bytes / DRAM bandwidth (at an H200's
4.8 TB/s: about 18 us for BERT-base, 63 us for BERT-large); the benchmark (bench/kernels.py) reports
the achieved fraction of the device's copy bandwidth, measured in the same run.

A block with a NaN or inf, or whose float32 sum of squares overflows, gets NaN rather than inf, so
that every broken head reads the same way downstream.
"""
from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache

import torch
import triton
import triton.language as tl

INTERPRETED = bool(triton.knobs.runtime.interpret)

BLOCK = 4096  # elements loaded per program per loop step (16 per thread with 8 warps)
NUM_WARPS = 8
_MIN_CHUNK = 8 * BLOCK  # a program streams at least this many elements before splitting pays
_FLT_MAX = tl.constexpr(3.4028234663852886e38)  # float32 max: a larger sum of squares is inf or NaN


@triton.jit
def _block_sumsq_kernel(
    src_ptr,  # the gradient (contiguous mode) or any tensor of the gradients' dtype (table mode)
    table_ptr,  # int64 [n_blocks]: each block's address (table mode only)
    out_index_ptr,  # int64 [n_blocks]: where block blk's norm goes in out (table mode only)
    out_ptr,  # float32: the norms (one chunk per block) or partial sums [n_blocks, n_chunks]
    K,  # elements per block
    chunk,  # elements per program, a multiple of BLOCK
    n_chunks,
    USE_TABLE: tl.constexpr,
    ALIGNED: tl.constexpr,  # every table address is 16-byte aligned: lets loads be vectorised
    FINAL: tl.constexpr,  # n_chunks == 1: write sqrt directly
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
        # sqrt, with NaN for a non-finite sum (s - s is NaN for inf and NaN).
        norm = tl.where(sumsq <= _FLT_MAX, tl.sqrt(sumsq), sumsq - sumsq)
        if USE_TABLE:
            tl.store(out_ptr + tl.load(out_index_ptr + blk), norm)
        else:
            tl.store(out_ptr + blk, norm)
    else:
        tl.store(out_ptr + blk.to(tl.int64) * n_chunks + s, sumsq)


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


def _launch(src, table, out_index, out_flat, n_blocks: int, K: int, aligned: bool, split: int | None) -> None:
    chunk, n_chunks = _plan(n_blocks, K, src.device, split)
    final = n_chunks == 1
    target = out_flat if final else torch.full((n_blocks, n_chunks), float("nan"), device=src.device)
    use_table = table is not None
    with torch.cuda.device(src.device) if src.device.type == "cuda" else nullcontext():
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
            BLOCK=BLOCK,
            num_warps=NUM_WARPS,
        )
    if not final:
        sumsq = target.sum(dim=1)
        norms = torch.where(torch.isfinite(sumsq), sumsq.sqrt(), torch.full_like(sumsq, float("nan")))
        if use_table:
            out_flat[out_index] = norms
        else:
            out_flat.copy_(norms)


def launch_contiguous(
    grad: torch.Tensor, num_heads: int, out: torch.Tensor, *, split: int | None = None
) -> torch.Tensor:
    """Block norms of grad [..., H*d, D] into out [..., H] (float32, contiguous). One launch.

    A non-contiguous grad is copied to a contiguous one first (correct; costs one extra pass)."""
    *lead, rows, cols = grad.shape
    n_blocks = out.numel()
    K = (rows // num_heads) * cols if num_heads else 0
    if n_blocks == 0:
        return out
    if K == 0:
        return out.zero_()
    src = grad.contiguous()
    _launch(src, None, None, out.view(-1), n_blocks, K, aligned=False, split=split)
    return out


def block_table(
    tensors: list[torch.Tensor], heads: list[int], out_slots: list[int], block_elems: int
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(addresses, out_index, aligned) on the CPU for the head blocks of 2-D contiguous gradients.

    tensors[i] holds heads[i] blocks of block_elems elements; its block h goes to slot out_slots[i] + h.
    aligned: every block starts on a 16-byte boundary, so the kernel may use vector loads."""
    itemsize = tensors[0].element_size()
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
    split: int | None = None,
) -> torch.Tensor:
    """Block norms of the blocks at `addresses` (on the device) into out_flat[out_index]. One launch.

    `like` gives the dtype and device and must keep the memory alive; the caller guarantees every block
    is block_elems contiguous elements of that dtype."""
    n_blocks = addresses.numel()
    if n_blocks == 0:
        return out_flat
    if block_elems == 0:
        out_flat[out_index] = 0.0
        return out_flat
    _launch(like, addresses, out_index, out_flat, n_blocks, block_elems, aligned=aligned, split=split)
    return out_flat
