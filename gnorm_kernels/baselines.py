"""The baselines Greedy-Gnorm is compared with: attention entropy, head-gate Taylor importance, random.

Each is called as ``scorer(model, batches, **options)`` like `gnorm_scores` and returns a float32
[num_layers, num_heads] grid on the CPU, NaN for heads already pruned. Under torch.distributed
the batches are this rank's shard and the grid is the global one (sums all-reduced).

* `attention_entropy`: the epsilon-rectified row entropy of each head's attention matrix (AE).
* `taylor_importance`: |d objective / d gate| of per-head gates (Michel et al., 2019).
* `random_scores`: a seeded random draw over the whole grid.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from gnorm_kernels import distributed
from gnorm_kernels.arch import AttentionBlock, head_layout
from gnorm_kernels.gnorm import (
    Batch,
    NonFiniteGradientError,
    Objective,
    check_batches,
    model_device,
    model_inputs,
    model_logits,
    objective_value,
    progress_over,
    scoring_mode,
)
from gnorm_kernels.masking import mask_heads

__all__ = ["ENTROPY_EPS", "attention_entropy", "random_scores", "taylor_importance"]

ENTROPY_EPS = 1e-7


# --------------------------------------------------------------------------- attention entropy


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


def attention_entropy(
    model: nn.Module, batches: Sequence[Batch], *, eps: float = ENTROPY_EPS, progress: bool = False
) -> torch.Tensor:
    """Mean attention entropy per head [num_layers, num_heads], NaN for pruned heads.

    Each attention row a gives -sum((a + eps) * log(a + eps)) (rectified so it is never NaN);
    rows are averaged over the non-padding query positions of an example, then over examples.
    A block shared across depths (ALBERT) averages its depths. Runs with eager attention.
    """
    batches = check_batches(batches)
    layout = head_layout(model)
    blocks = [b for b in layout.blocks if b.kept_heads]
    device = model_device(model)
    total = torch.zeros(layout.shape, dtype=torch.float64)
    examples = 0
    with scoring_mode(model, (), grad=False), _eager_attention(model), _capture_attention(blocks) as store:
        for batch in progress_over(batches, progress, "attention entropy"):
            store.clear()
            inputs = model_inputs(batch, device)
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
    out = distributed.mean_over_ranks(total, examples, model).float()
    out[~layout.kept_mask()] = float("nan")
    return out


# --------------------------------------------------------------------------- Taylor, random


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
    batches = check_batches(batches)
    layout = head_layout(model)
    device = model_device(model)
    total = torch.zeros(layout.shape, dtype=torch.float64)
    gates = torch.ones(layout.shape, device=device, requires_grad=True)
    with scoring_mode(model, ()), mask_heads(model, gates):
        for i, batch in enumerate(progress_over(batches, progress, "head-gate importance")):
            value = objective_value(objective, model_logits(model, batch, device), batch, i, per_example=False)
            (grad,) = torch.autograd.grad(value, gates)
            if not torch.isfinite(grad).all():
                raise NonFiniteGradientError(f"NaN or infinite head-gate gradient on calibration batch {i}")
            total += grad.abs().double().cpu()
    if distributed.data_parallel(model):
        (total,) = distributed.all_reduce_sums(total)
    out = total.float()
    out[~layout.kept_mask()] = float("nan")
    return out


def random_scores(model: nn.Module, batches: Sequence[Batch] | None = None, *, seed: int = 0) -> torch.Tensor:
    """A seeded random score per head [num_layers, num_heads], NaN for pruned heads.

    The draw covers the whole original grid, so the order it gives does not depend on which
    heads are already gone. `batches` is accepted for the common signature and not used.
    Under torch.distributed every rank must pass the same seed (checked): one grid everywhere.
    """
    distributed.check_same(int(seed), "random_scores seeds")
    layout = head_layout(model)
    gen = torch.Generator().manual_seed(int(seed))
    out = torch.rand(layout.shape, generator=gen)
    out[~layout.kept_mask()] = float("nan")
    return out
