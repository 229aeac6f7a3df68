"""Per-example Gnorm norms: each calibration example's own Q/K/V weight-gradient block norms,
from the activations and output gradients captured at the projections (no per-example weight
gradient is ever formed), averaged over examples. `gnorm_kernels.scoring.gnorm` calls it for
``aggregation="per_example"``; the other aggregations read accumulated ``.grad`` instead."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

import gnorm_kernels.kernels as kernels
from gnorm_kernels.data.batches import Batch, model_device
from gnorm_kernels.heads.layout import AttentionBlock, HeadLayout
from gnorm_kernels.heads.units import PruningUnit
from gnorm_kernels.parallel import distributed
from gnorm_kernels.scoring.objectives import (
    NonFiniteGradientError,
    Objective,
    model_logits,
    objective_value,
    progress_over,
    scoring_mode,
)

__all__ = ["Sweep", "Norms", "QKV_PARTS", "per_example_qkv_norms", "check_finite_norms", "with_bias_norms"]

Norms = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # one block's Q, K, V norms per kept head
QKV_PARTS = ("query", "key", "value")


@dataclass(frozen=True)
class Sweep:
    """How one scoring sweep runs: its objective, whether bias rows count, the unit, train mode
    (dropout) or eval mode, whether the model is causal, the kernel backend, a progress bar."""

    objective: str | Objective
    include_bias: bool
    unit: PruningUnit
    dropout: bool
    causal: bool
    backend: str
    progress: bool


def check_finite_norms(norms: Sequence[Norms], blocks: Sequence[AttentionBlock], index: int) -> None:
    """Name the first (layer, Q/K/V part) with a NaN or infinite norm."""
    for block, parts in zip(blocks, norms):
        for part, values in zip(QKV_PARTS, parts):
            if not torch.isfinite(values).all():
                raise NonFiniteGradientError(
                    f"NaN or infinite {part} gradient in layer {block.index} on calibration batch {index}"
                )


def with_bias_norms(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return (weight.square() + bias.square()).sqrt()


# ---- per batch and accumulated: weight gradients, reduced by the kernels


@contextmanager
def _capture_qkv(blocks: Sequence[AttentionBlock]) -> Iterator[dict[tuple[int, int], list]]:
    """Record (input, output) of every query/key/value projection call, for gradients w.r.t. the
    outputs (a fused c_attn once, under part 0).

    With every parameter frozen, the first attention block's outputs are made leaves that require
    grad (nothing upstream of them needs a gradient); later outputs stay in the graph, so the
    gradient reaches earlier blocks through every path, the query/key/value projections included.
    """
    store: dict[tuple[int, int], list] = {}
    handles = []

    def hook_for(key: tuple[int, int]):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if not output.requires_grad:
                output = output.detach().requires_grad_()
            store.setdefault(key, []).append((args[0].detach(), output))
            return output

        return hook

    try:
        for j, block in enumerate(blocks):
            for p, part in enumerate(QKV_PARTS[:1] if block.fused_qkv else QKV_PARTS):
                handles.append(getattr(block, part).register_forward_hook(hook_for((j, p))))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def per_example_qkv_norms(
    model: nn.Module,
    layout: HeadLayout,
    blocks: list[AttentionBlock],
    batches: list[Batch],
    sweep: Sweep,
) -> list[torch.Tensor]:
    """Per block [3, units kept]: block norms of each example's own gradient, averaged over examples."""
    device = model_device(model)
    totals = [None] * len(blocks)
    examples = 0
    d = layout.head_size
    with scoring_mode(model, (), training=sweep.dropout), _capture_qkv(blocks) as store:
        for i, batch in enumerate(progress_over(batches, sweep.progress, "per-example norms")):
            store.clear()
            logits = model_logits(model, batch, device)
            values = objective_value(sweep.objective, logits, batch, i, per_example=True, causal=sweep.causal)
            keys = sorted(store)
            leaves = [leaf for key in keys for _, leaf in store[key]]
            grads = torch.autograd.grad(values.sum(), leaves, allow_unused=True)
            grads = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves)]
            by_key, at = {}, 0
            for key in keys:
                calls = store[key]
                # a block run at several depths (ALBERT): its weight gradient sums over the
                # depths, the same as one sequence holding all the depths' positions
                by_key[key] = (torch.cat([x for x, _ in calls], dim=1), torch.cat(grads[at : at + len(calls)], dim=1))
                at += len(calls)
            for j, block in enumerate(blocks):
                counts = (len(block.kept_heads), len(block.kept_kv_heads))
                if block.fused_qkv:  # one output [B, T, 3 * n * d]: Q, K, V are its column thirds
                    x, g = by_key[(j, 0)]
                    width = g.shape[-1] // 3
                    parts, shared = [(x, g[..., p * width : (p + 1) * width].contiguous()) for p in range(3)], True
                else:
                    parts = [by_key[(j, p)] for p in range(3)]
                    shared = all(
                        len(store[(j, p)]) == len(store[(j, 0)])
                        and all(a[0].data_ptr() == b[0].data_ptr() for a, b in zip(store[(j, 0)], store[(j, p)]))
                        for p in (1, 2)
                    )
                norms = _per_example_block(parts, shared, counts, d, sweep.include_bias, sweep.backend)
                check_finite_norms([norms], [block], i)
                summed = sweep.unit.qkv_norms(*norms, block).sum(dim=1).double()  # [3, units]
                totals[j] = summed if totals[j] is None else totals[j] + summed
            examples += int(values.shape[0])
    return [t.float() for t in distributed.mean_over_ranks(totals, examples, model)]


def _per_example_block(
    parts: list[tuple[torch.Tensor, torch.Tensor]],
    shared_input: bool,
    counts: tuple[int, int],
    head_size: int,
    include_bias: bool,
    backend: str,
) -> Norms:
    """Per-example block norms of one block's Q [B, heads], K and V [B, key/value heads] weight
    gradients, from (input, output gradient) per part; on the CPU."""
    n, kv = counts
    x = parts[0][0]
    if shared_input and n == kv:
        # the three projections read the same input: one call shares its Gram matrix
        q, k, v = kernels.per_example_qkv_head_norms(x, [g for _, g in parts], n, backend=backend)
    elif shared_input:  # grouped: K and V share a call, Q has more heads
        q = kernels.per_example_head_norms(x, parts[0][1], n, backend=backend)
        k, v = kernels.per_example_qkv_head_norms(x, [parts[1][1], parts[2][1]], kv, backend=backend)
    else:
        q, k, v = (kernels.per_example_head_norms(x_, g, c, backend=backend) for (x_, g), c in zip(parts, (n, kv, kv)))
    out = [p.detach().float() for p in (q, k, v)]
    if include_bias:
        for i, ((_, g), c) in enumerate(zip(parts, (n, kv, kv))):
            bias = g.sum(dim=1).float().view(g.shape[0], c, head_size).norm(dim=-1)
            out[i] = with_bias_norms(out[i], bias)
    return tuple(p.cpu() for p in out)
