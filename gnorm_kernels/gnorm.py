"""The Greedy-Gnorm score: gradient norms of each head's query/key/value weights.

G_X(l, h) is the Frobenius norm of the objective's gradient with respect to head h's rows of
W_X in layer l, averaged over the calibration data; the score is G_Q * G_K * G_V. Three ways to
average (`AGGREGATIONS`): per batch (the authors' code), per example (the paper's formula) and
the norm of the gradient accumulated over every batch.

The objectives (`OBJECTIVES`) are "logits_norm" (the L2 norm of the output logits, needs no
labels; the Greedy-Gnorm default) and "loss" (the task cross-entropy, needs labels). Any callable
``objective(logits, batch) -> Tensor`` serves too: a scalar, or one value per example (summed).

This module also holds what every gradient-based scorer shares: the batch checks, the forward
pass to logits, the objectives and `scoring_mode` (eval mode through `gnorm_kernels.modes`, plus
the parameters' requires_grad flags).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import gnorm_kernels.kernels as kernels
from gnorm_kernels import distributed
from gnorm_kernels.arch import AttentionBlock, HeadLayout, head_layout
from gnorm_kernels.modes import model_mode

__all__ = [
    "AGGREGATIONS",
    "COMBINES",
    "OBJECTIVES",
    "Batch",
    "NonFiniteGradientError",
    "Objective",
    "gnorm_scores",
    "qkv_gradient_norms",
    "scoring_mode",
]

Batch = Mapping[str, torch.Tensor]
Objective = Callable[..., torch.Tensor]

AGGREGATIONS = ("per_batch", "per_example", "accumulated")
COMBINES = kernels.COMBINES
_PARTS = ("query", "key", "value")


class NonFiniteGradientError(FloatingPointError):
    """A NaN or infinite objective or gradient: the ranking it would give is meaningless."""


# --------------------------------------------------------------------------- objectives


def _logits_norm(logits: torch.Tensor, batch: Batch, per_example: bool) -> torch.Tensor:
    # Per batch: the norm of the whole [B, C] logits tensor, as the authors' code computes it.
    # Per example: each example's own logit norm; their sum has separable per-example gradients.
    logits = logits.float()
    return logits.norm(dim=-1) if per_example else logits.norm()


def _task_loss(logits: torch.Tensor, batch: Batch, per_example: bool) -> torch.Tensor:
    labels = batch["labels"].to(logits.device)
    reduction = "none" if per_example else "mean"
    if logits.shape[-1] == 1:  # regression head
        return F.mse_loss(logits.float().squeeze(-1), labels.float(), reduction=reduction)
    return F.cross_entropy(logits.float(), labels.long(), reduction=reduction)


OBJECTIVES: dict[str, Callable[[torch.Tensor, Batch, bool], torch.Tensor]] = {
    "logits_norm": _logits_norm,
    "loss": _task_loss,
}
_NEEDS_LABELS = {"loss"}


def objective_value(
    objective: str | Objective, logits: torch.Tensor, batch: Batch, index: int, per_example: bool
) -> torch.Tensor:
    """The objective of one batch: a scalar, or [B] per-example values when `per_example`."""
    if isinstance(objective, str):
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; expected one of {sorted(OBJECTIVES)} or a callable")
        if objective in _NEEDS_LABELS and "labels" not in batch:
            raise ValueError(
                f"objective {objective!r} needs labels, but calibration batch {index} has no 'labels' "
                f"(keys: {sorted(batch)}); use objective='logits_norm', which needs none"
            )
        value = OBJECTIVES[objective](logits, batch, per_example)
    else:
        value = objective(logits, batch)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"objective must return a tensor, got {type(value).__name__} for batch {index}")
        if not per_example and value.dim() == 1:
            value = value.sum()
    expected = (logits.shape[0],) if per_example else ()
    if tuple(value.shape) != expected:
        what = "one value per example" if per_example else "a scalar (or one value per example)"
        raise ValueError(
            f"objective must give {what}, shape {list(expected)}, got shape {list(value.shape)} for batch {index}"
        )
    if not torch.isfinite(value.detach()).all():
        raise NonFiniteGradientError(f"the objective is NaN or infinite on calibration batch {index}")
    return value


# --------------------------------------------------------------------------- shared by the scorers


def check_batches(batches: Sequence[Batch]) -> list[Batch]:
    """`batches` as a list, checked to be non-empty dicts of model inputs with 'input_ids'."""
    if batches is None or isinstance(batches, Mapping):
        raise TypeError("batches must be a list of dicts of model inputs (e.g. from Task.batches), not a single dict")
    batches = list(batches)
    if not batches:
        raise ValueError("the calibration set is empty: expected at least one batch of model inputs")
    for i, batch in enumerate(batches):
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise ValueError(f"calibration batch {i} must be a dict with at least 'input_ids', got {type(batch).__name__}")
        if batch["input_ids"].numel() == 0:
            raise ValueError(f"calibration batch {i} is empty")
    return batches


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


def model_inputs(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's model inputs (everything but 'labels') on `device`."""
    return {k: v.to(device) for k, v in batch.items() if k != "labels"}


def model_logits(model: nn.Module, batch: Batch, device: torch.device) -> torch.Tensor:
    """The model's output logits on one batch; a model without a task head is refused."""
    logits = getattr(model(**model_inputs(batch, device)), "logits", None)
    if logits is None:
        raise TypeError(
            f"{type(model).__name__} returned no logits: scoring needs a model with a task head "
            "(e.g. AutoModelForSequenceClassification)"
        )
    return logits


def progress_over(items: Sequence, progress: bool, desc: str):
    """`items`, behind a transient tqdm bar when `progress`."""
    return tqdm(items, desc=desc, leave=False) if progress else items


@contextmanager
def scoring_mode(
    model: nn.Module, trainable: Sequence[torch.nn.Parameter] = (), *, grad: bool = True
) -> Iterator[nn.Module]:
    """Eval mode (dropout off), only `trainable` parameters requiring grad, and gradients on
    (off with ``grad=False``); every module's mode and every parameter's flag restored on exit.

    Freezing everything else lets backward skip the weight gradients nobody reads.
    """
    keep = {id(p) for p in trainable}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with model_mode(model, training=False):
        try:
            for p, _ in flags:
                p.requires_grad_(id(p) in keep)
            with torch.enable_grad() if grad else torch.no_grad():
                yield model
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


# --------------------------------------------------------------------------- Gnorm


def qkv_gradient_norms(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    aggregation: Literal["per_batch", "per_example", "accumulated"] = "per_batch",
    objective: str | Objective = "logits_norm",
    include_bias: bool = False,
    backend: str = "auto",
    progress: bool = False,
) -> torch.Tensor:
    """G_Q, G_K, G_V for every head: float32 [num_layers, 3, num_heads], NaN for pruned heads.

    * "per_batch" (the authors' code): the mean over batches of the block norms of each batch's
      gradient of the batch objective.
    * "per_example" (the paper's formula): the mean over examples of the block norms of each
      example's own gradient, all from one backward pass per batch; the objective is summed over
      the examples of a batch so that the per-example gradients separate.
    * "accumulated": the block norms of the gradient summed over all batches.

    With `include_bias` a head's block also holds its rows of the bias. Under torch.distributed
    the batches are this rank's shard and the result is global (`gnorm_kernels.distributed`).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}")
    batches = check_batches(batches)
    layout = head_layout(model)
    grid = torch.full((layout.num_layers, 3, layout.num_heads), float("nan"))
    blocks = [b for b in layout.blocks if b.kept_heads]
    if not blocks:
        return grid
    if aggregation == "per_example":
        norms = _per_example_norms(model, layout, blocks, batches, objective, include_bias, backend, progress)
    else:
        norms = _batch_norms(model, layout, blocks, batches, objective, include_bias, backend, progress,
                             accumulate=aggregation == "accumulated")
    # [blocks, 3, H_max] -> the original grid, each block's heads at their original indices
    for j, block in enumerate(blocks):
        grid[block.index][:, list(block.kept_heads)] = norms[j, :, : len(block.kept_heads)]
    return grid


def gnorm_scores(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    aggregation: Literal["per_batch", "per_example", "accumulated"] = "per_batch",
    combine: Literal["product", "sum", "max"] = "product",
    objective: str | Objective = "logits_norm",
    include_bias: bool = False,
    backend: str = "auto",
    progress: bool = False,
) -> torch.Tensor:
    """Greedy-Gnorm head scores [num_layers, num_heads]: G_Q * G_K * G_V by default.

    See `qkv_gradient_norms` for what each aggregation computes. Low scores mark heads whose
    weights barely move the objective, the ones Greedy-Gnorm prunes first.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {list(COMBINES)}, got {combine!r}")
    norms = qkv_gradient_norms(
        model, batches, aggregation=aggregation, objective=objective,
        include_bias=include_bias, backend=backend, progress=progress,
    )
    return kernels.combine_qkv_norms(norms, combine)


def _raise_non_finite(bad: torch.Tensor, blocks: Sequence[AttentionBlock], index: int) -> None:
    """Name the first (layer, Q/K/V part) whose norms are flagged in `bad` [blocks, 3, ...]."""
    for j, block in enumerate(blocks):
        parts = bad[j].flatten(1).any(dim=1)
        if parts.any():
            raise NonFiniteGradientError(
                f"NaN or infinite {_PARTS[int(parts.nonzero()[0])]} gradient in layer {block.index} "
                f"on calibration batch {index}"
            )


# ---- per batch and accumulated: weight gradients, reduced by the kernels' buffer


def _batch_norms(
    model: nn.Module,
    layout: HeadLayout,
    blocks: list[AttentionBlock],
    batches: list[Batch],
    objective: str | Objective,
    include_bias: bool,
    backend: str,
    progress: bool,
    *,
    accumulate: bool,
) -> torch.Tensor:
    """[blocks, 3, H_max] mean per-batch block norms, or (`accumulate`) those of the summed gradient."""
    if include_bias:
        missing = [b.index for b in blocks if any(getattr(b, p).bias is None for p in _PARTS)]
        if missing:
            raise ValueError(f"include_bias=True, but layers {missing} have no query/key/value bias")
    weights = [(b.query.weight, b.key.weight, b.value.weight) for b in blocks]
    biases = [getattr(b, p).bias for b in blocks for p in _PARTS] if include_bias else []
    h_max = max(len(b.kept_heads) for b in blocks)
    device = model_device(model)
    total = torch.zeros(len(blocks), 3, h_max)
    buffer_type = kernels.QKVGradientBuffer
    if distributed.is_sharded(model):  # FSDP2: DTensor gradients, norms from per-rank partial sums
        from gnorm_kernels.fsdp import ShardedQKVGradients as buffer_type
        if include_bias:
            raise ValueError("include_bias=True is not supported on an FSDP-sharded model; score weights only")
    buffer = buffer_type(weights, layout.head_size, backend=backend)
    bias_grads = [b.grad for b in biases]

    def read(index: int) -> torch.Tensor:
        norms = buffer.norms().detach().float().cpu()[:, :, :h_max]
        if include_bias:
            norms = (norms.square() + _bias_norms(blocks, layout.head_size, h_max).square()).sqrt()
        bad = ~torch.isfinite(norms)
        for j, block in enumerate(blocks):  # only each block's own heads count
            bad[j, :, len(block.kept_heads):] = False
        _raise_non_finite(bad, blocks, index)
        return norms

    try:
        with scoring_mode(model, [w for triple in weights for w in triple] + biases), buffer:
            for i, batch in enumerate(progress_over(batches, progress, "gradient norms")):
                if not accumulate:
                    buffer.zero_()
                    for b in biases:
                        b.grad = None
                value = objective_value(objective, model_logits(model, batch, device), batch, i, per_example=False)
                value.backward()
                # accumulated: the norms of the running sum, checked after each batch to name the
                # first batch that brings a NaN or inf in; the last batch's norms are the result
                norms = read(i)
                total = norms if accumulate else total + norms
            if accumulate and distributed.data_parallel(model):
                # every rank's summed gradients: one collective over the flat buffer (and biases)
                distributed.all_reduce_(buffer.buffer, *[b.grad for b in biases])
                total = read(len(batches) - 1)
    finally:
        for b, grad in zip(biases, bias_grads):
            b.grad = grad
    return total if accumulate else distributed.mean_over_ranks(total, len(batches), model)


def _bias_norms(blocks: Sequence[AttentionBlock], head_size: int, h_max: int) -> torch.Tensor:
    out = torch.zeros(len(blocks), 3, h_max)
    for j, block in enumerate(blocks):
        for p, part in enumerate(_PARTS):
            grad = getattr(block, part).bias.grad
            if grad is not None:
                out[j, p, : len(block.kept_heads)] = grad.detach().float().view(-1, head_size).norm(dim=-1).cpu()
    return out


# ---- per example: captured inputs and output gradients, no weight gradients at all


@contextmanager
def _capture_qkv(blocks: Sequence[AttentionBlock]) -> Iterator[dict[tuple[int, int], list]]:
    """Record (input, output) of every query/key/value Linear call, for gradients w.r.t. the outputs.

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
            for p, part in enumerate(_PARTS):
                handles.append(getattr(block, part).register_forward_hook(hook_for((j, p))))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _per_example_norms(
    model: nn.Module,
    layout: HeadLayout,
    blocks: list[AttentionBlock],
    batches: list[Batch],
    objective: str | Objective,
    include_bias: bool,
    backend: str,
    progress: bool,
) -> torch.Tensor:
    """[blocks, 3, H_max] block norms of each example's own gradient, averaged over examples."""
    h_max = max(len(b.kept_heads) for b in blocks)
    device = model_device(model)
    total = torch.zeros(len(blocks), 3, h_max, dtype=torch.float64)
    examples = 0
    d = layout.head_size
    with scoring_mode(model, ()), _capture_qkv(blocks) as store:
        for i, batch in enumerate(progress_over(batches, progress, "per-example norms")):
            store.clear()
            values = objective_value(objective, model_logits(model, batch, device), batch, i, per_example=True)
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
            norms = torch.zeros(len(blocks), 3, h_max)
            for j, block in enumerate(blocks):
                n = len(block.kept_heads)
                shared = all(
                    len(store[(j, p)]) == len(store[(j, 0)])
                    and all(a[0].data_ptr() == b[0].data_ptr() for a, b in zip(store[(j, 0)], store[(j, p)]))
                    for p in (1, 2)
                )
                per = _per_example_block([by_key[(j, p)] for p in range(3)], shared, n, d, include_bias, backend)
                _raise_non_finite(~torch.isfinite(per)[None], [block], i)
                norms[j, :, :n] = per.sum(dim=1).cpu()
            total += norms.double()
            examples += int(values.shape[0])
    return distributed.mean_over_ranks(total, examples, model).float()


def _per_example_block(
    parts: list[tuple[torch.Tensor, torch.Tensor]],
    shared_input: bool,
    num_heads: int,
    head_size: int,
    include_bias: bool,
    backend: str,
) -> torch.Tensor:
    """[3, B, H] per-example block norms of one block's Q, K, V weight gradients ((x, grad_out) each)."""
    if shared_input:
        # the three projections read the same input: one call shares its Gram matrix
        per = kernels.per_example_qkv_head_norms(parts[0][0], [g for _, g in parts], num_heads, backend=backend)
    else:
        per = torch.stack([kernels.per_example_head_norms(x, g, num_heads, backend=backend) for x, g in parts])
    per = per.detach().float()
    if include_bias:
        bias = torch.stack([g.sum(dim=1).float().view(g.shape[0], num_heads, head_size).norm(dim=-1) for _, g in parts])
        per = (per.square() + bias.square()).sqrt()
    return per
