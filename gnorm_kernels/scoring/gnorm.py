"""The Greedy-Gnorm score: gradient norms of each head's query/key/value weights.

G_X(l, u) is the Frobenius norm of the objective's gradient with respect to unit u's block of W_X
in layer l, averaged over the calibration data; the score is G_Q * G_K * G_V. A unit
(`gnorm_kernels.heads.units`) is a query head (``unit="head"``; under grouped-query attention its
K/V blocks are its group's) or a key/value group (``unit="kv_group"``: its K and V blocks, and as
G_Q the norm of all its query heads' stacked Q rows). Three ways to average (`AGGREGATIONS`): per
batch (the authors' code), per example (the paper's formula) and the norm of the gradient
accumulated over every batch.

Where the gradients come from: plain Linear projections share one `kernels.QKVGradientBuffer`
(one reduction for the whole model; grouped K/V weights have fewer rows than Q); GPT-2's fused
input-major c_attn (Conv1D [D, 3*H*d]) has its weight gradient read in three column blocks
(kernels ``layout="columns"``). The objectives (classifiers and causal LMs) and what every
gradient-based scorer shares are in `gnorm_kernels.scoring.objectives`.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

import gnorm_kernels.kernels as kernels
from gnorm_kernels.data.batches import Batch, model_device
from gnorm_kernels.heads.families import head_layout, is_causal_lm
from gnorm_kernels.heads.layout import AttentionBlock, HeadLayout
from gnorm_kernels.heads.units import unit_of
from gnorm_kernels.parallel import distributed
from gnorm_kernels.scoring.objectives import (
    Objective,
    check_batches,
    model_logits,
    objective_value,
    progress_over,
    scoring_mode,
)
from gnorm_kernels.scoring.per_example import QKV_PARTS, Norms, Sweep, check_finite_norms, per_example_qkv_norms, with_bias_norms

__all__ = ["AGGREGATIONS", "gnorm_scores", "qkv_gradient_norms"]

AGGREGATIONS = ("per_batch", "per_example", "accumulated")


def qkv_gradient_norms(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    aggregation: Literal["per_batch", "per_example", "accumulated"] = "per_batch",
    objective: str | Objective = "logits_norm",
    include_bias: bool = False,
    unit: Literal["head", "kv_group"] = "head",
    dropout: bool = False,
    backend: str = "auto",
    progress: bool = False,
) -> torch.Tensor:
    """G_Q, G_K, G_V for every unit: float32 [num_layers, 3, units], NaN for pruned units.

    * "per_batch" (the authors' code): the mean over batches of the block norms of each batch's
      gradient of the batch objective.
    * "per_example" (the paper's formula): the mean over examples of the block norms of each
      example's own gradient, all from one backward pass per batch; the objective is summed over
      the examples of a batch so that the per-example gradients separate.
    * "accumulated": the block norms of the gradient summed over all batches.

    unit="head": [L, 3, H]; under grouped-query attention the K and V entries of query head h are
    the norms of its key/value head's blocks. unit="kv_group" (grouped-query models only): [L, 3,
    H_kv]; the K and V entries are the key/value head's, and the Q entry is the Frobenius norm of
    the group's stacked Q rows, i.e. sqrt of the sum of its query heads' squared Q norms, taken on
    each batch's (example's) gradient before averaging. With `include_bias` a unit's block also holds
    its rows of the bias. `dropout=True` scores in train mode (dropout on, so the result is random);
    the default is eval mode, deterministic. Under torch.distributed the batches are this rank's
    shard and the result is global (`gnorm_kernels.parallel.distributed`; FSDP2: `gnorm_kernels.parallel.fsdp`).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}")
    if not isinstance(dropout, bool):
        raise TypeError(f"dropout must be True (train mode) or False (eval mode), got {dropout!r}")
    batches = check_batches(batches)
    layout = head_layout(model)
    unit = unit_of(unit, layout)
    rows, width = unit.shape(layout)
    grid = torch.full((rows, 3, width), float("nan"))
    blocks = [b for b in layout.blocks if b.kept_heads]
    if not blocks:
        return grid
    sweep = Sweep(objective, include_bias, unit, dropout, is_causal_lm(model), backend, progress)
    if aggregation == "per_example":
        norms = per_example_qkv_norms(model, layout, blocks, batches, sweep)
    else:
        norms = _batch_norms(model, layout, blocks, batches, sweep, accumulate=aggregation == "accumulated")
    # each block's units at their original indices on the grid
    for block, values in zip(blocks, norms):
        kept = unit.kept(block)
        grid[block.index][:, list(kept)] = values
    return grid


def gnorm_scores(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    aggregation: Literal["per_batch", "per_example", "accumulated"] = "per_batch",
    combine: Literal["product", "sum", "max"] = "product",
    objective: str | Objective = "logits_norm",
    include_bias: bool = False,
    unit: Literal["head", "kv_group"] = "head",
    dropout: bool = False,
    backend: str = "auto",
    progress: bool = False,
) -> torch.Tensor:
    """Greedy-Gnorm scores: [num_layers, num_heads] for ``unit="head"``, G_Q(h) * G_K(g) * G_V(g)
    with g the key/value head that h reads (g = h without grouping); [num_layers, num_kv_heads] for
    ``unit="kv_group"``, G_Q(group) * G_K(g) * G_V(g), G_Q(group) being the Frobenius norm of the
    group's stacked Q rows (sqrt of the sum of its heads' squared Q norms).

    See `qkv_gradient_norms` for the aggregations, `dropout` and the rest. Low scores mark units
    whose weights barely move the objective, the ones Greedy-Gnorm prunes first.
    """
    if combine not in kernels.COMBINES:
        raise ValueError(f"combine must be one of {list(kernels.COMBINES)}, got {combine!r}")
    norms = qkv_gradient_norms(
        model, batches, aggregation=aggregation, objective=objective, include_bias=include_bias,
        unit=unit, dropout=dropout, backend=backend, progress=progress,
    )
    return kernels.combine_qkv_norms(norms, combine)


class _QKVGradients:
    """The Q/K/V weight (and bias) gradients of some attention blocks, as block norms per kept
    query head (Q) and key/value head (K, V) after each backward.

    Linear blocks share one `kernels.QKVGradientBuffer`. GPT-2's fused c_attn keeps its own .grad,
    read in column blocks; so does (in rows) a grouped block whose query heads no longer split
    evenly over its key/value heads, which the buffer does not take. Inside the `with` block the
    gradients start empty; on exit every parameter's previous .grad comes back.
    """

    def __init__(self, blocks: Sequence[AttentionBlock], layout: HeadLayout, include_bias: bool, backend: str,
                 sharded: bool = False):
        self.blocks, self.head_size, self.backend = list(blocks), layout.head_size, backend
        self.counts = [(len(b.kept_heads), len(b.kept_kv_heads)) for b in blocks]
        self.buffered = [j for j, (b, (n, kv)) in enumerate(zip(blocks, self.counts)) if not b.fused_qkv and n % kv == 0]
        buffered = [blocks[j] for j in self.buffered]
        weights = [(b.query.weight, b.key.weight, b.value.weight) for b in buffered]
        self.buffer = None
        buffer_type = kernels.QKVGradientBuffer
        if sharded:  # FSDP2: DTensor gradients, norms from per-rank partial sums of squares
            from gnorm_kernels.parallel.fsdp import ShardedQKVGradients as buffer_type
            if include_bias or len(self.buffered) < len(blocks):
                raise ValueError("an FSDP-sharded model is scored on Linear Q/K/V weights with even groups only: "
                                 "include_bias, GPT-2's fused c_attn and uneven groups are not supported")
        if weights:
            kv = [self.counts[j][1] for j in self.buffered] if layout.grouped else None
            self.buffer = buffer_type(weights, self.head_size, num_kv_heads=kv, backend=backend)
        own = [b for j, b in enumerate(blocks) if j not in set(self.buffered)]
        self.own = list({id(w): w for b in own for w in _weights(b)}.values())
        self.include_bias = include_bias
        self.biases = []
        if include_bias:
            missing = [b.index for b in blocks if any(getattr(b, p).bias is None for p in QKV_PARTS)]
            if missing:
                raise ValueError(f"include_bias=True, but layers {missing} have no query/key/value bias")
            self.biases = list({id(p): p for b in blocks for p in _biases(b)}.values())
        self.parameters = [w for triple in weights for w in triple] + self.own + self.biases
        self._saved: list[torch.Tensor | None] = []

    def __enter__(self) -> "_QKVGradients":
        self._saved = [p.grad for p in self.own + self.biases]
        self.zero_(buffer=False)
        if self.buffer is not None:
            self.buffer.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.buffer is not None:
            self.buffer.__exit__(*exc)
        for p, grad in zip(self.own + self.biases, self._saved):
            p.grad = grad

    def zero_(self, buffer: bool = True) -> None:
        """Forget the gradients so far (before each batch, unless accumulating)."""
        if buffer and self.buffer is not None:
            self.buffer.zero_()
        for p in self.own + self.biases:
            p.grad = None

    def all_reduce_(self) -> None:
        """Sum every gradient over the ranks, in place, with one collective (data parallelism)."""
        for p in self.own + self.biases:
            p.grad = _grad(p)
        distributed.all_reduce_(*([self.buffer.buffer] if self.buffer is not None else []),
                                *(p.grad for p in self.own + self.biases))

    def norms(self) -> list[Norms]:
        """Per block: float32 CPU block norms of Q [kept heads], K and V [kept key/value heads]."""
        out: list = [None] * len(self.blocks)
        if self.buffer is not None:
            reduced = self.buffer.norms().detach().float().cpu()
            for row, j in enumerate(self.buffered):
                n, kv = self.counts[j]
                out[j] = (reduced[row, 0, :n], reduced[row, 1, :kv], reduced[row, 2, :kv])
        for j, block in enumerate(self.blocks):
            if out[j] is None:
                out[j] = self._own_norms(block, *self.counts[j])
            if self.include_bias:
                out[j] = tuple(with_bias_norms(w, b) for w, b in zip(out[j], self._bias_norms(block, *self.counts[j])))
        return out

    def _own_norms(self, block: AttentionBlock, n: int, kv: int) -> Norms:
        if block.fused_qkv:  # [D, 3 * n * d]: Q, K, V are column blocks
            grad, width = _grad(block.query.weight), n * self.head_size
            return tuple(
                kernels.head_block_norms(grad[:, p * width : (p + 1) * width], n, layout="columns",
                                         backend=self.backend).cpu()
                for p in range(3)
            )
        return tuple(
            kernels.head_block_norms(_grad(getattr(block, part).weight), count, backend=self.backend).cpu()
            for part, count in zip(QKV_PARTS, (n, kv, kv))
        )

    def _bias_norms(self, block: AttentionBlock, n: int, kv: int) -> Norms:
        d = self.head_size
        if block.fused_qkv:
            return tuple(_grad(block.query.bias).detach().float().view(3, n, d).norm(dim=-1).cpu())
        return tuple(
            _grad(getattr(block, part).bias).detach().float().view(count, d).norm(dim=-1).cpu()
            for part, count in zip(QKV_PARTS, (n, kv, kv))
        )


def _weights(block: AttentionBlock) -> tuple[torch.Tensor, ...]:
    return (block.query.weight,) if block.fused_qkv else tuple(getattr(block, p).weight for p in QKV_PARTS)


def _biases(block: AttentionBlock) -> tuple[torch.Tensor, ...]:
    return (block.query.bias,) if block.fused_qkv else tuple(getattr(block, p).bias for p in QKV_PARTS)


def _grad(param: torch.Tensor) -> torch.Tensor:
    """A parameter's gradient, zeros where backward never reached it."""
    return torch.zeros_like(param) if param.grad is None else param.grad


def _batch_norms(
    model: nn.Module,
    layout: HeadLayout,
    blocks: list[AttentionBlock],
    batches: list[Batch],
    sweep: Sweep,
    *,
    accumulate: bool,
) -> list[torch.Tensor]:
    """Per block [3, units kept]: mean per-batch block norms, or (`accumulate`) those of the summed gradient."""
    grads = _QKVGradients(blocks, layout, sweep.include_bias, sweep.backend, sharded=distributed.is_sharded(model))
    device = model_device(model)
    total: list[torch.Tensor] | None = None
    with scoring_mode(model, grads.parameters, training=sweep.dropout), grads:
        for i, batch in enumerate(progress_over(batches, sweep.progress, "gradient norms")):
            if not accumulate:
                grads.zero_()
            logits = model_logits(model, batch, device)
            objective_value(sweep.objective, logits, batch, i, per_example=False, causal=sweep.causal).backward()
            # accumulated: the norms of the running sum, checked after each batch to name the
            # first batch that brings a NaN or inf in; the last batch's norms are the result
            norms = grads.norms()
            check_finite_norms(norms, blocks, i)
            units = [sweep.unit.qkv_norms(*parts, block) for parts, block in zip(norms, blocks)]
            total = units if accumulate or total is None else [t + u for t, u in zip(total, units)]
        if accumulate and distributed.data_parallel(model):  # every rank's summed gradients
            grads.all_reduce_()
            norms = grads.norms()
            check_finite_norms(norms, blocks, len(batches) - 1)
            total = [sweep.unit.qkv_norms(*parts, block) for parts, block in zip(norms, blocks)]
    return total if accumulate else distributed.mean_over_ranks(total, len(batches), model)


# ---- per example: captured inputs and output gradients, no weight gradients at all
