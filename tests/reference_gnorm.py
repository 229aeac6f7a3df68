"""A paper-literal Greedy-Gnorm, kept deliberately plain to check the fast engine against.

It does what the method's description and the authors' code do, in the most direct way:

* every parameter requires grad (nothing frozen), in eval mode (`scoring_mode` with every
  parameter trainable; the model's modes and flags are restored afterwards);
* one full forward + backward sweep per layer and calibration batch (L sweeps per step), reading
  only that layer's query/key/value weight gradients after each sweep;
* pruned heads are switched off with `mask_heads` (a zero gate) instead of being removed, and
  excluded from the ranking explicitly (a masked head's gradient is zero, so it would score 0);
* block norms with plain PyTorch: rows h*d..(h+1)*d of each [H*d, D] weight gradient.

The objective is the Frobenius norm of the batch's logits; scores are averaged over batches and
combined as G_Q * G_K * G_V. Used by tests/test_greedy.py and bench/greedy_speed.py.

The decoder half (`reference_decoder_norms`, `reference_decoder_scores`,
`reference_decoder_greedy_order`, used by tests/test_decoder_scores.py) does the same for causal
LMs and both units: the logits' norm over the non-padding positions, GPT-2's fused c_attn read in
column blocks, a query head scored with its group's K/V, a key/value group with the norm of its
stacked Q rows taken on each batch's (or example's) gradient, every aggregation.
"""

from __future__ import annotations

import torch
from torch import nn

from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.masking import mask_heads
from gnorm_kernels.scoring.objectives import scoring_mode


def _logits_norm(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs).logits.float().norm()


def reference_gnorm_scores(
    model: nn.Module, batches: list[dict[str, torch.Tensor]], pruned: set[tuple[int, int]] = frozenset()
) -> torch.Tensor:
    """[L, H] Gnorm scores of `model` with the heads in `pruned` masked out (those scores NaN)."""
    layout = head_layout(model)
    L, H, d = layout.num_layers, layout.num_heads, layout.head_size
    mask = torch.ones(L, H)
    for l, h in pruned:
        mask[l, h] = 0.0
    norms = torch.zeros(L, 3, H, dtype=torch.float64)
    with scoring_mode(model, list(model.parameters())), mask_heads(model, mask):
        for block in layout.blocks:  # one sweep per layer, as the authors' code does
            for batch in batches:
                model.zero_grad(set_to_none=True)
                _logits_norm(model, batch).backward()
                for p, linear in enumerate((block.query, block.key, block.value)):
                    grad = linear.weight.grad  # [H*d, D]
                    for h in range(H):
                        norms[block.index, p, h] += grad[h * d : (h + 1) * d].double().norm()
    model.zero_grad(set_to_none=True)
    scores = (norms / len(batches)).prod(dim=1).float()
    for l, h in pruned:
        scores[l, h] = float("nan")
    return scores


def reference_greedy_order(
    model: nn.Module, batches: list[dict[str, torch.Tensor]], num_steps: int | None = None
) -> tuple[list[tuple[int, int]], list[torch.Tensor]]:
    """The greedy order (one head per step) and the score grid each choice was made on."""
    layout = head_layout(model)
    L, H = layout.shape
    num_steps = L * H if num_steps is None else num_steps
    pruned: set[tuple[int, int]] = set()
    order, grids = [], []
    for _ in range(num_steps):
        scores = reference_gnorm_scores(model, batches, pruned)
        candidates = [(scores[l, h].item(), l, h) for l in range(L) for h in range(H) if (l, h) not in pruned]
        _, l, h = min(candidates)
        order.append((l, h))
        grids.append(scores)
        pruned.add((l, h))
    return order, grids


# --------------------------------------------------------------------------- decoders
# The same plainness for causal LMs (GPT-2, Llama, Qwen2, Mistral), for both units: per layer one
# sweep per batch (or example), masks for pruned heads, plain autograd on the weights, norms read
# straight off the weight gradients (GPT-2's fused c_attn in column blocks). No kernels, no buffer.


def decoder_logits_norm(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The Frobenius norm of the logits of every non-padding position."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    return logits[batch["attention_mask"].bool()].norm()


def _head_norms(block, grad: torch.Tensor, H: int, H_kv: int, d: int) -> list[torch.Tensor]:
    """Q [H], K [H_kv], V [H_kv] float64 block norms of one block's weight gradient."""
    if block.fused_qkv:  # Conv1D weight [D, 3 * H * d]: column blocks
        return [torch.stack([grad[:, p * H * d + h * d : p * H * d + (h + 1) * d].double().norm() for h in range(H)])
                for p in range(3)]
    q, k, v = grad
    return [torch.stack([g[h * d : (h + 1) * d].double().norm() for h in range(n)]) for g, n in ((q, H), (k, H_kv), (v, H_kv))]


def _units(norms: list[torch.Tensor], H: int, H_kv: int, unit: str) -> torch.Tensor:
    """[3, units]: a query head with its group's K/V, or a group with its stacked Q rows' norm."""
    q, k, v = norms
    size = H // H_kv
    if unit == "head":
        group = [h // size for h in range(H)]
        return torch.stack([q, k[group], v[group]])
    q_group = torch.stack([q[g * size : (g + 1) * size].square().sum().sqrt() for g in range(H_kv)])
    return torch.stack([q_group, k, v])


def reference_decoder_norms(
    model: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    pruned: set[tuple[int, int]] = frozenset(),
    *,
    unit: str = "head",
    aggregation: str = "per_batch",
    objective=decoder_logits_norm,
) -> torch.Tensor:
    """[L, 3, units] G_Q, G_K, G_V of a decoder with the query heads in `pruned` masked out.

    per_batch: the mean over batches of each batch's norms; per_example: the mean over examples
    of each example's own (one example at a time); accumulated: the norms of the gradient summed
    over the batches."""
    layout = head_layout(model)
    L, H, d = layout.num_layers, layout.num_heads, layout.head_size
    H_kv = layout.kv_heads
    mask = torch.ones(L, H)
    for l, h in pruned:
        mask[l, h] = 0.0
    if aggregation == "per_example":
        samples = [[{k: v[i : i + 1] for k, v in b.items()}] for b in batches for i in range(b["input_ids"].shape[0])]
    elif aggregation == "accumulated":
        samples = [batches]
    else:
        samples = [[b] for b in batches]
    out = torch.zeros(L, 3, H if unit == "head" else H_kv, dtype=torch.float64)
    with scoring_mode(model, list(model.parameters())), mask_heads(model, mask):
        for block in layout.blocks:  # one sweep per layer
            for sample in samples:
                model.zero_grad(set_to_none=True)
                for batch in sample:
                    objective(model, batch).backward()
                weights = (block.query.weight,) if block.fused_qkv else (block.query.weight, block.key.weight, block.value.weight)
                grad = weights[0].grad if block.fused_qkv else [w.grad for w in weights]
                out[block.index] += _units(_head_norms(block, grad, H, H_kv, d), H, H_kv, unit)
    model.zero_grad(set_to_none=True)
    return (out / len(samples)).float()


def _pruned_units(pruned: set[tuple[int, int]], H: int, H_kv: int, unit: str) -> set[tuple[int, int]]:
    if unit == "head":
        return set(pruned)
    size = H // H_kv
    return {(l, g) for l in {l for l, _ in pruned} for g in range(H_kv)
            if all((l, h) in pruned for h in range(g * size, (g + 1) * size))}


def reference_decoder_scores(
    model: nn.Module, batches: list[dict[str, torch.Tensor]], pruned: set[tuple[int, int]] = frozenset(), **kw
) -> torch.Tensor:
    """G_Q * G_K * G_V per unit ([L, H] or [L, H_kv]), NaN for the units gone with `pruned`."""
    layout = head_layout(model)
    scores = reference_decoder_norms(model, batches, pruned, **kw).prod(dim=1)
    for l, u in _pruned_units(pruned, layout.num_heads, layout.kv_heads, kw.get("unit", "head")):
        scores[l, u] = float("nan")
    return scores


def reference_decoder_greedy_order(
    model: nn.Module, batches: list[dict[str, torch.Tensor]], *, unit: str = "head", num_steps: int | None = None
) -> tuple[list[tuple[int, int]], list[torch.Tensor]]:
    """The greedy order of a decoder (one unit per step) and the score grid each choice was made on;
    a key/value group goes with all its query heads."""
    layout = head_layout(model)
    L, H, H_kv = layout.num_layers, layout.num_heads, layout.kv_heads
    width = H if unit == "head" else H_kv
    num_steps = L * width if num_steps is None else num_steps
    pruned: set[tuple[int, int]] = set()
    order, grids = [], []
    for _ in range(num_steps):
        scores = reference_decoder_scores(model, batches, pruned, unit=unit)
        gone = _pruned_units(pruned, H, H_kv, unit)
        _, l, u = min((scores[l, u].item(), l, u) for l in range(L) for u in range(width) if (l, u) not in gone)
        order.append((l, u))
        grids.append(scores)
        pruned |= {(l, u)} if unit == "head" else {(l, h) for h in range(u * (H // H_kv), (u + 1) * (H // H_kv))}
    return order, grids
