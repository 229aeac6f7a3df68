"""The baselines Greedy-Gnorm is compared with: attention entropy, head-gate Taylor importance, random.

Each is called as ``scorer(model, batches, **options)`` like `gnorm_scores` and returns a float32
grid on the CPU, NaN for units already pruned: [num_layers, num_heads] for ``unit="head"``,
[num_layers, num_kv_heads] for ``unit="kv_group"`` (grouped-query models; `gnorm_kernels.heads.units`).
Under torch.distributed the batches are this rank's shard and the grid is the global one (sums
all-reduced).

* `attention_entropy`: the epsilon-rectified row entropy of each head's attention matrix (AE);
  for causal LMs over each position's prefix, normalised by its maximum.
* `taylor_importance`: |d objective / d gate| of per-head (per-group) gates (Michel et al., 2019).
* `random_scores`: a seeded random draw over the whole grid.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from gnorm_kernels.data.batches import Batch, model_device, model_inputs
from gnorm_kernels.heads.families import head_layout, is_causal_lm
from gnorm_kernels.heads.grouped_attention import GROUPED_IMPLEMENTATIONS
from gnorm_kernels.heads.layout import AttentionBlock, HeadLayout
from gnorm_kernels.heads.masking import mask_heads
from gnorm_kernels.heads.units import PruningUnit, unit_of
from gnorm_kernels.parallel import distributed
from gnorm_kernels.scoring.objectives import (
    NonFiniteGradientError,
    Objective,
    check_batches,
    model_logits,
    objective_value,
    progress_over,
    scoring_mode,
)

__all__ = ["ENTROPY_EPS", "attention_entropy", "random_scores", "taylor_importance"]

ENTROPY_EPS = 1e-7


# --------------------------------------------------------------------------- attention entropy


@contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
    """Switch to eager attention (which materialises the attention matrix) inside the block; a
    model with uneven key/value groups keeps its grouped variant ("gnorm_grouped_eager")."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    eager = GROUPED_IMPLEMENTATIONS["eager"] if previous in GROUPED_IMPLEMENTATIONS.values() else "eager"
    switch = previous not in (None, eager)
    if switch:
        model.set_attn_implementation(eager)
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(previous)


@contextmanager
def _capture_attention(blocks: Sequence[AttentionBlock]) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Record every attention module's weights [B, H_l, T, T], per layer and depth."""
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


def _row_entropy(a: torch.Tensor, eps: float, keys: torch.Tensor | None) -> torch.Tensor:
    """-sum((a + eps) log(a + eps)) over each attention row [B, H, T, T] -> [B, H, T]; only over
    the allowed `keys` [B, T, T] when given."""
    terms = -((a + eps) * torch.log(a + eps))
    if keys is not None:
        terms = terms * keys[:, None]
    return terms.sum(dim=-1)


def _entropy_rows(real: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(query rows that count [B, T], allowed keys [B, T, T] or None, row normaliser [B, T] or None).

    Encoders: every real position, all keys, no normaliser. Causal LMs: a position whose prefix
    holds more than one real token, the keys of that prefix, and log(prefix length)."""
    if not causal:
        return real, None, None
    prefix = real.cumsum(dim=-1)  # real tokens at or before each position
    tril = torch.ones(real.shape[-1], real.shape[-1], dtype=torch.bool, device=real.device).tril()
    keys = (tril[None] & real.bool()[:, None, :]).to(torch.float64)
    rows = real * (prefix > 1)
    return rows, keys, torch.log(prefix.clamp_min(2))


def attention_entropy(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    eps: float = ENTROPY_EPS,
    unit: str = "head",
    progress: bool = False,
) -> torch.Tensor:
    """Mean attention entropy per head [num_layers, num_heads] (per key/value group [num_layers,
    num_kv_heads] with ``unit="kv_group"``: the mean over the group's heads), NaN for pruned units.

    Each attention row a gives -sum((a + eps) * log(a + eps)) (rectified so it is never NaN);
    rows are averaged over the non-padding query positions of an example, then over examples.
    A block shared across depths (ALBERT) averages its depths. Runs with eager attention.

    Causal LMs: position t attends to its prefix only, so its entropy is at most log(n_t), n_t the
    real tokens up to t. A position whose prefix is a single token has entropy 0 whatever the head
    does: such positions are skipped. Each row is summed over its prefix and divided by log(n_t),
    its maximum, so that every position weighs alike; otherwise the long prefixes at the end of a
    sequence would dominate the mean and a head's entropy would mostly measure sequence length.
    Padding is ignored; an example with no position left (one real token) does not count.
    """
    batches = check_batches(batches)
    layout = head_layout(model)
    unit = unit_of(unit, layout)
    blocks = [b for b in layout.blocks if b.kept_heads]
    device = model_device(model)
    causal = layout.causal
    total = torch.zeros(layout.shape, dtype=torch.float64)
    examples = 0
    with scoring_mode(model, (), grad=False), _eager_attention(model), _capture_attention(blocks) as store:
        for batch in progress_over(batches, progress, "attention entropy"):
            store.clear()
            inputs = model_inputs(batch, device)
            model(**inputs)
            ids = inputs["input_ids"]
            real = inputs.get("attention_mask", torch.ones_like(ids)).to(torch.float64)
            rows, keys, norm = _entropy_rows(real, causal)
            counted = rows.sum(dim=-1) > 0  # [B]
            for block in blocks:
                per_depth = []
                for a in store.get(block.index, []):
                    ent = _row_entropy(a.to(torch.float64), eps, keys)  # [B, H_l, T]
                    if norm is not None:
                        ent = ent / norm[:, None, :]
                    per_depth.append((ent * rows[:, None, :]).sum(-1) / rows.sum(-1).clamp_min(1)[:, None])
                if not per_depth:
                    raise RuntimeError(f"layer {block.index}'s attention did not run")
                ent = torch.stack(per_depth).mean(dim=0)  # [B, H_l]
                total[block.index, list(block.kept_heads)] += ent[counted].sum(dim=0).cpu()
            examples += int(counted.sum())
    if distributed.data_parallel(model):  # every rank's sums and count of examples
        total, reduced = distributed.all_reduce_sums(total, torch.tensor(float(examples)))
        examples = int(reduced)
    if examples == 0:
        raise ValueError("no calibration example has a position with more than one token to attend to")
    out = (total / examples).float()
    out[~layout.kept_mask()] = float("nan")
    return unit.from_heads(out, layout, "mean")


# --------------------------------------------------------------------------- Taylor, random


def taylor_importance(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    objective: str | Objective = "loss",
    unit: str = "head",
    progress: bool = False,
) -> torch.Tensor:
    """Head-gate importance [num_layers, num_heads] (Michel et al., 2019), NaN for pruned heads.

    The sum over calibration batches of |d objective / d gate|, gates of 1 placed on every head's
    context (`mask_heads`); the default objective is the task loss (a causal LM's next-token
    loss). ``unit="kv_group"``: one gate per key/value group shared by its query heads, so a
    batch's group gradient is the sum of its heads' gate gradients; [num_layers, num_kv_heads].
    """
    batches = check_batches(batches)
    layout = head_layout(model)
    unit = unit_of(unit, layout)
    device = model_device(model)
    causal = is_causal_lm(model)
    total = torch.zeros(unit.shape(layout), dtype=torch.float64)
    gates = torch.ones(layout.shape, device=device, requires_grad=True)
    with scoring_mode(model, ()), mask_heads(model, gates):
        for i, batch in enumerate(progress_over(batches, progress, "head-gate importance")):
            logits = model_logits(model, batch, device)
            value = objective_value(objective, logits, batch, i, per_example=False, causal=causal)
            (grad,) = torch.autograd.grad(value, gates)
            if not torch.isfinite(grad).all():
                raise NonFiniteGradientError(f"NaN or infinite head-gate gradient on calibration batch {i}")
            grad = grad.double().cpu()
            total += unit.from_heads(grad, layout, "sum").abs()
    if distributed.data_parallel(model):
        (total,) = distributed.all_reduce_sums(total)
    return _pruned_nan(total.float(), layout, unit)


def random_scores(
    model: nn.Module, batches: Sequence[Batch] | None = None, *, seed: int = 0, unit: str = "head"
) -> torch.Tensor:
    """A seeded random score per unit ([num_layers, num_heads], or [num_layers, num_kv_heads] for
    ``unit="kv_group"``), NaN for pruned units.

    The draw covers the whole original grid, so the order it gives does not depend on which
    units are already gone. `batches` is accepted for the common signature and not used.
    Under torch.distributed every rank must pass the same seed (checked): one grid everywhere.
    """
    distributed.check_same(int(seed), "random_scores seeds")
    layout = head_layout(model)
    unit = unit_of(unit, layout)
    gen = torch.Generator().manual_seed(int(seed))
    return _pruned_nan(torch.rand(unit.shape(layout), generator=gen), layout, unit)


def _pruned_nan(grid: torch.Tensor, layout: HeadLayout, unit: PruningUnit) -> torch.Tensor:
    grid[~unit.kept_mask(layout)] = float("nan")
    return grid
