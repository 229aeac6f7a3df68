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
"""

from __future__ import annotations

import torch
from torch import nn

from gnorm_kernels.arch import head_layout
from gnorm_kernels.masking import mask_heads
from gnorm_kernels.scores import scoring_mode


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
