"""Head importance scores: Greedy-Gnorm's gradient norms and the baselines, behind one signature.

Every scorer is called as ``scorer(model, batches, **options)`` and returns a float32 tensor on
the original ``[num_layers, num_heads]`` grid (on the CPU), NaN for heads already pruned. A
*method* is a scorer plus the end of the ranking pruned first plus static or greedy driving;
`METHODS` is the one table of them that the drivers, the command line and the notebooks read.

Scorers:

* `gnorm_scores`: G_Q * G_K * G_V, the Frobenius norms of the objective's gradient with respect to
  each head's rows of the query/key/value weights, averaged over the calibration data.
* `attention_entropy`: the epsilon-rectified row entropy of each head's attention matrix.
* `taylor_importance`: |d objective / d gate| of per-head gates (Michel et al., 2019).
* `random_scores`: a seeded random permutation of the grid.

The objectives (`OBJECTIVES`) are "logits_norm" (the L2 norm of the output logits, needs no
labels; the Greedy-Gnorm default) and "loss" (the task cross-entropy, needs labels). Any callable
``objective(logits, batch) -> Tensor`` serves too: a scalar, or one value per example (summed).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from gnorm_kernels.arch import AttentionBlock, HeadLayout, head_layout
from gnorm_kernels.masking import mask_heads

__all__ = [
    "AGGREGATIONS",
    "COMBINES",
    "METHODS",
    "OBJECTIVES",
    "SCORERS",
    "Method",
    "NonFiniteGradientError",
    "Scorer",
    "attention_entropy",
    "get_method",
    "get_scorer",
    "gnorm_scores",
    "qkv_gradient_norms",
    "random_scores",
    "scoring_mode",
    "taylor_importance",
]

Batch = Mapping[str, torch.Tensor]
Objective = Callable[..., torch.Tensor]

AGGREGATIONS = ("per_batch", "per_example", "accumulated")
COMBINES = ("product", "sum", "max")
ENTROPY_EPS = 1e-7
_PARTS = ("query", "key", "value")


class Scorer(Protocol):
    def __call__(self, model: nn.Module, batches: Sequence[Batch], **options: Any) -> torch.Tensor: ...


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


def _objective_value(
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


# --------------------------------------------------------------------------- helpers


def _check_batches(batches: Sequence[Batch]) -> list[Batch]:
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


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _inputs(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if k != "labels"}


def _logits(model: nn.Module, batch: Batch, device: torch.device) -> torch.Tensor:
    out = model(**_inputs(batch, device))
    logits = getattr(out, "logits", None)
    if logits is None:
        raise TypeError(
            f"{type(model).__name__} returned no logits: scoring needs a model with a task head "
            "(e.g. AutoModelForSequenceClassification)"
        )
    return logits


def _grid(layout: HeadLayout, *lead: int) -> torch.Tensor:
    return torch.full((*lead, *layout.shape) if lead else layout.shape, float("nan"))


@contextmanager
def scoring_mode(model: nn.Module, trainable: Sequence[torch.nn.Parameter] = ()) -> Iterator[nn.Module]:
    """Eval mode, gradients on, and only `trainable` parameters requiring grad; all restored on exit.

    Freezing everything else lets backward skip the weight gradients nobody reads.
    """
    keep = {id(p) for p in trainable}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in keep)
        model.eval()
        with torch.enable_grad():
            yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def _maybe_progress(items: Sequence, progress: bool, desc: str):
    return tqdm(items, desc=desc, leave=False) if progress else items


def _check_finite(norms: torch.Tensor, layout: HeadLayout, blocks: Sequence[AttentionBlock], index: int | str) -> None:
    bad = ~torch.isfinite(norms)
    for j, block in enumerate(blocks):
        h = len(block.kept_heads)
        if bad[j, :, :h].any():
            part = _PARTS[int(bad[j, :, :h].any(dim=1).nonzero()[0])]
            raise NonFiniteGradientError(
                f"NaN or infinite {part} gradient in layer {block.index} on calibration batch {index}"
            )


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

    With `include_bias` a head's block also holds its rows of the bias.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}")
    batches = _check_batches(batches)
    layout = head_layout(model)
    if aggregation == "per_example":
        return _per_example_norms(model, layout, batches, objective, include_bias, backend, progress)
    return _batch_norms(model, layout, batches, objective, include_bias, backend, progress,
                        accumulate=aggregation == "accumulated")


def _bias_norms(blocks: Sequence[AttentionBlock], head_size: int, h_max: int) -> torch.Tensor:
    out = torch.zeros(len(blocks), 3, h_max)
    for j, block in enumerate(blocks):
        for p, part in enumerate(_PARTS):
            grad = getattr(block, part).bias.grad
            if grad is not None:
                out[j, p, : len(block.kept_heads)] = grad.detach().float().view(-1, head_size).norm(dim=-1).cpu()
    return out


def _batch_norms(
    model: nn.Module,
    layout: HeadLayout,
    batches: list[Batch],
    objective: str | Objective,
    include_bias: bool,
    backend: str,
    progress: bool,
    *,
    accumulate: bool,
) -> torch.Tensor:
    from gnorm_kernels.kernels import QKVGradientBuffer

    grid = _grid(layout, 3).permute(1, 0, 2).contiguous()  # [L, 3, H]
    blocks = [b for b in layout.blocks if b.kept_heads]
    if not blocks:
        return grid
    if include_bias:
        missing = [b.index for b in blocks if any(getattr(b, p).bias is None for p in _PARTS)]
        if missing:
            raise ValueError(f"include_bias=True, but layers {missing} have no query/key/value bias")
    weights = [(b.query.weight, b.key.weight, b.value.weight) for b in blocks]
    biases = [getattr(b, p).bias for b in blocks for p in _PARTS] if include_bias else []
    h_max = max(len(b.kept_heads) for b in blocks)
    device = _device(model)
    total = torch.zeros(len(blocks), 3, h_max)
    buffer = QKVGradientBuffer(weights, layout.head_size, backend=backend)
    bias_grads = [b.grad for b in biases]
    try:
        with scoring_mode(model, [w for triple in weights for w in triple] + biases), buffer:
            for i, batch in enumerate(_maybe_progress(batches, progress, "gradient norms")):
                if not accumulate:
                    buffer.zero_()
                    for b in biases:
                        b.grad = None
                value = _objective_value(objective, _logits(model, batch, device), batch, i, per_example=False)
                value.backward()
                # accumulated: the norms of the running sum, checked after each batch to name the
                # first batch that brings a NaN or inf in; the last batch's norms are the result
                norms = _norms_of(buffer, blocks, layout.head_size, h_max, include_bias)
                _check_finite(norms, layout, blocks, i)
                total = norms if accumulate else total + norms
    finally:
        for b, grad in zip(biases, bias_grads):
            b.grad = grad
    if not accumulate:
        total /= len(batches)
    for j, block in enumerate(blocks):
        grid[block.index][:, list(block.kept_heads)] = total[j, :, : len(block.kept_heads)]
    return grid


def _norms_of(buffer, blocks, head_size: int, h_max: int, include_bias: bool) -> torch.Tensor:
    norms = buffer.norms().detach().float().cpu()[:, :, :h_max]
    if include_bias:
        norms = (norms.square() + _bias_norms(blocks, head_size, h_max).square()).sqrt()
    return norms


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
    batches: list[Batch],
    objective: str | Objective,
    include_bias: bool,
    backend: str,
    progress: bool,
) -> torch.Tensor:
    grid = _grid(layout, 3).permute(1, 0, 2).contiguous()
    blocks = [b for b in layout.blocks if b.kept_heads]
    if not blocks:
        return grid
    h_max = max(len(b.kept_heads) for b in blocks)
    device = _device(model)
    total = torch.zeros(len(blocks), 3, h_max, dtype=torch.float64)
    examples = 0
    d = layout.head_size
    with scoring_mode(model, ()), _capture_qkv(blocks) as store:
        for i, batch in enumerate(_maybe_progress(batches, progress, "per-example norms")):
            store.clear()
            values = _objective_value(objective, _logits(model, batch, device), batch, i, per_example=True)
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
                parts = [by_key[(j, p)] for p in range(3)]
                per = _per_example_block(parts, shared, n, d, include_bias, backend)
                if not torch.isfinite(per).all():
                    p = int((~torch.isfinite(per)).flatten(1).any(dim=1).nonzero()[0])
                    raise NonFiniteGradientError(
                        f"NaN or infinite {_PARTS[p]} gradient in layer {block.index} on calibration batch {i}"
                    )
                norms[j, :, :n] = per.sum(dim=1).cpu()
            total += norms.double()
            examples += int(values.shape[0])
    mean = (total / examples).float()
    for j, block in enumerate(blocks):
        grid[block.index][:, list(block.kept_heads)] = mean[j, :, : len(block.kept_heads)]
    return grid


def _per_example_block(
    parts: list[tuple[torch.Tensor, torch.Tensor]],
    shared_input: bool,
    num_heads: int,
    head_size: int,
    include_bias: bool,
    backend: str,
) -> torch.Tensor:
    """[3, B, H] per-example block norms of one block's Q, K, V weight gradients ((x, grad_out) each)."""
    from gnorm_kernels.kernels import per_example_head_norms, per_example_qkv_head_norms

    if shared_input:
        # the three projections read the same input: one call shares its Gram matrix
        per = per_example_qkv_head_norms(parts[0][0], [g for _, g in parts], num_heads, backend=backend)
    else:
        per = torch.stack([per_example_head_norms(x, g, num_heads, backend=backend) for x, g in parts])
    per = per.detach().float()
    if include_bias:
        bias = torch.stack([g.sum(dim=1).float().view(g.shape[0], num_heads, head_size).norm(dim=-1) for _, g in parts])
        per = (per.square() + bias.square()).sqrt()
    return per


def _combine(norms: torch.Tensor, combine: str) -> torch.Tensor:
    if combine == "product":
        return norms.prod(dim=1)
    if combine == "sum":
        return norms.sum(dim=1)
    if combine == "max":
        return norms.max(dim=1).values
    raise ValueError(f"combine must be one of {list(COMBINES)}, got {combine!r}")


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
    return _combine(norms, combine)


# --------------------------------------------------------------------------- baselines


@contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
    """Switch to eager attention (which materialises the attention matrix) inside the block."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    switch = previous not in (None, "eager")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(previous)


@contextmanager
def _capture_attention(blocks: Sequence[AttentionBlock]) -> Iterator[dict[int, list[torch.Tensor]]]:
    store: dict[int, list[torch.Tensor]] = {}
    handles = []

    def hook_for(index: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError(
                    f"layer {index}'s attention returned no attention weights; entropy needs eager attention"
                )
            store.setdefault(index, []).append(weights.detach())

        return hook

    try:
        for block in blocks:
            handles.append(block.attention.register_forward_hook(hook_for(block.index)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def attention_entropy(
    model: nn.Module, batches: Sequence[Batch], *, eps: float = ENTROPY_EPS, progress: bool = False
) -> torch.Tensor:
    """Mean attention entropy per head [num_layers, num_heads], NaN for pruned heads.

    Each attention row a gives -sum((a + eps) * log(a + eps)) (rectified so it is never NaN);
    rows are averaged over the non-padding query positions of an example, then over examples.
    A block shared across depths (ALBERT) averages its depths. Runs with eager attention.
    """
    batches = _check_batches(batches)
    layout = head_layout(model)
    blocks = [b for b in layout.blocks if b.kept_heads]
    device = _device(model)
    total = torch.zeros(layout.shape, dtype=torch.float64)
    examples = 0
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with _eager_attention(model), torch.no_grad(), _capture_attention(blocks) as store:
            for batch in _maybe_progress(batches, progress, "attention entropy"):
                store.clear()
                inputs = _inputs(batch, device)
                model(**inputs)
                ids = inputs["input_ids"]
                rows = inputs.get("attention_mask", torch.ones_like(ids)).to(torch.float64)
                for block in blocks:
                    per_depth = []
                    for a in store.get(block.index, []):
                        a = a.to(torch.float64)
                        ent = -((a + eps) * torch.log(a + eps)).sum(dim=-1)  # [B, H_l, T]
                        per_depth.append((ent * rows[:, None, :]).sum(-1) / rows.sum(-1).clamp_min(1)[:, None])
                    if not per_depth:
                        raise RuntimeError(f"layer {block.index}'s attention did not run")
                    ent = torch.stack(per_depth).mean(dim=0)  # [B, H_l]
                    total[block.index, list(block.kept_heads)] += ent.sum(dim=0).cpu()
                examples += int(ids.shape[0])
    finally:
        for m, mode in modes:
            m.training = mode
    out = (total / examples).float()
    out[~layout.kept_mask()] = float("nan")
    return out


def taylor_importance(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    objective: str | Objective = "loss",
    progress: bool = False,
) -> torch.Tensor:
    """Head-gate importance [num_layers, num_heads] (Michel et al., 2019), NaN for pruned heads.

    The sum over calibration batches of |d objective / d gate|, gates of 1 placed on every head's
    context (`mask_heads`); the default objective is the task loss.
    """
    batches = _check_batches(batches)
    layout = head_layout(model)
    device = _device(model)
    total = torch.zeros(layout.shape, dtype=torch.float64)
    gates = torch.ones(layout.shape, device=device, requires_grad=True)
    with scoring_mode(model, ()), mask_heads(model, gates):
        for i, batch in enumerate(_maybe_progress(batches, progress, "head-gate importance")):
            value = _objective_value(objective, _logits(model, batch, device), batch, i, per_example=False)
            (grad,) = torch.autograd.grad(value, gates)
            if not torch.isfinite(grad).all():
                raise NonFiniteGradientError(f"NaN or infinite head-gate gradient on calibration batch {i}")
            total += grad.abs().double().cpu()
    out = total.float()
    out[~layout.kept_mask()] = float("nan")
    return out


def random_scores(model: nn.Module, batches: Sequence[Batch] | None = None, *, seed: int = 0) -> torch.Tensor:
    """A seeded random score per head [num_layers, num_heads], NaN for pruned heads.

    The draw covers the whole original grid, so the order it gives does not depend on which
    heads are already gone. `batches` is accepted for the common signature and not used.
    """
    layout = head_layout(model)
    gen = torch.Generator().manual_seed(int(seed))
    out = torch.rand(layout.shape, generator=gen)
    out[~layout.kept_mask()] = float("nan")
    return out


SCORERS: dict[str, Scorer] = {
    "gnorm": gnorm_scores,
    "entropy": attention_entropy,
    "taylor": taylor_importance,
    "random": random_scores,
}


def get_scorer(name: str) -> Scorer:
    """The scorer registered under `name` (see `SCORERS`)."""
    try:
        return SCORERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown scorer {name!r}; expected one of {sorted(SCORERS)}") from None


# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """A pruning method: which scorer, which end of its ranking goes first, static or greedy."""

    name: str
    scorer: str
    prune_first: Literal["lowest", "highest"]
    greedy: bool
    description: str
    seeded: bool = False  # a chance baseline, run with several seeds
    scorer_options: Mapping[str, Any] = field(default_factory=dict)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("greedy-gnorm", "gnorm", "lowest", True,
               "Greedy-Gnorm: prune the lowest G_Q*G_K*G_V head, re-score the pruned model, repeat"),
        Method("static-gnorm", "gnorm", "lowest", False,
               "Gnorm scored once on the full model, pruned lowest first"),
        Method("inverse-gnorm", "gnorm", "highest", True,
               "sanity check: Greedy-Gnorm pruning the highest-scoring head first"),
        Method("entropy", "entropy", "highest", False,
               "attention entropy (AE), scored once, highest-entropy head pruned first"),
        Method("inverse-entropy", "entropy", "lowest", False,
               "attention entropy, scored once, lowest-entropy head pruned first"),
        Method("taylor", "taylor", "lowest", False,
               "head-gate Taylor importance (Michel et al. 2019), scored once, least important first"),
        Method("random", "random", "lowest", False,
               "a random order (several seeds: report the median and spread)", seeded=True),
    )
}


def get_method(name: str) -> Method:
    """The method registered under `name` (see `METHODS`)."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}") from None
