"""What every gradient-based head scorer shares: batch checks, the forward pass to logits, the
objectives, and the scoring mode.

Objectives (`OBJECTIVES`), for classifiers and for causal LMs alike:

* "logits_norm": the L2 (Frobenius) norm of the output logits; needs no labels (the Greedy-Gnorm
  default). A classifier's logits are [B, C]; a causal LM's are [B, T, vocab], and the norm runs
  over every non-padding position (the paper's objective, generalised to one logit vector per token).
* "loss": the task loss. A classifier's cross-entropy against ``labels`` (MSE for a one-output
  regression head); a causal LM's next-token cross-entropy, the targets being the inputs shifted by
  one, positions where either token is padding ignored (no labels needed).
* "contrastive": for a sentence embedder (`gnorm_kernels.models.sentence.SentenceEmbedder`, whose
  logits are sentence embeddings) on paired rows (`gnorm_kernels.data.pairs.pair_batches`): the
  in-batch contrastive loss its pretraining used (each first half against every second half of the
  batch). Per batch only: the in-batch distractors couple the examples.

Any callable ``objective(logits, batch) -> Tensor`` serves too: a scalar, or one value per example
(summed). Batches follow `gnorm_kernels.data.batches` (its `model_inputs` picks the forward-pass keys).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gnorm_kernels.data.batches import Batch, model_inputs
from gnorm_kernels.modes import model_mode
from gnorm_kernels.progress import progress_bar

__all__ = [
    "OBJECTIVES",
    "NonFiniteGradientError",
    "Objective",
    "check_batches",
    "model_logits",
    "objective_value",
    "progress_over",
    "scoring_mode",
]

Objective = Callable[..., torch.Tensor]


class NonFiniteGradientError(FloatingPointError):
    """A NaN or infinite objective or gradient: the ranking it would give is meaningless."""


# --------------------------------------------------------------------------- objectives


def _token_mask(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Bool [B, T]: the real (non-padding) positions of a causal LM batch."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    return mask.to(logits.device)


def _logits_norm(logits: torch.Tensor, batch: Batch, per_example: bool, causal: bool = False) -> torch.Tensor:
    # Per batch: the norm of the whole logits tensor, as the authors' code computes it ([B, C]; for
    # a causal LM every real position's logits). Per example: each example's own norm; their sum
    # has separable per-example gradients.
    logits = logits.float()
    if causal:
        logits = logits * _token_mask(logits, batch)[..., None]  # padding contributes nothing
        return _norm(logits.flatten(1), per_example)
    return _norm(logits, per_example)


def _norm(values: torch.Tensor, per_example: bool) -> torch.Tensor:
    """The L2 norm (over the last dim per example, or of everything), its sum of squares
    accumulated in float64: float32 `Tensor.norm()` over tens of millions of elements (a real
    LM's logits) comes out about 0.1% low on some CPU builds, which scales every gradient."""
    squares = values.square()
    total = squares.sum(dim=-1, dtype=torch.float64) if per_example else squares.sum(dtype=torch.float64)
    return total.sqrt().to(values.dtype)


def _task_loss(logits: torch.Tensor, batch: Batch, per_example: bool, causal: bool = False) -> torch.Tensor:
    if causal:
        return _next_token_loss(logits, batch, per_example)
    labels = batch["labels"].to(logits.device)
    reduction = "none" if per_example else "mean"
    if logits.shape[-1] == 1:  # regression head
        return F.mse_loss(logits.float().squeeze(-1), labels.float(), reduction=reduction)
    return F.cross_entropy(logits.float(), labels.long(), reduction=reduction)


def _next_token_loss(logits: torch.Tensor, batch: Batch, per_example: bool) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions where token t and t + 1 are both real
    (per example: each example's own mean; 0 for an example with no such position)."""
    ids = batch["input_ids"].to(logits.device)
    real = _token_mask(logits, batch)
    keep = (real[:, 1:] & real[:, :-1]).float()
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    nll = nll.view_as(keep) * keep
    if per_example:  # sums in float64 (see _norm), the mean back in the logits' precision
        return (nll.sum(dim=1, dtype=torch.float64) / keep.sum(dim=1).clamp_min(1)).to(nll.dtype)
    return (nll.sum(dtype=torch.float64) / keep.sum().clamp_min(1)).to(nll.dtype)


CONTRASTIVE_SCALE = 20.0  # sentence-transformers' MultipleNegativesRankingLoss scale (all-MiniLM-L6-v2's training loss)


def _contrastive(logits: torch.Tensor, batch: Batch, per_example: bool, causal: bool = False) -> torch.Tensor:
    """Mean cross-entropy of each pair's first half against every second half in the batch, on
    `CONTRASTIVE_SCALE` x cosine similarity: low when every half finds its own partner."""
    pairs = batch.get("pairs")
    if pairs is None:
        raise ValueError("objective 'contrastive' needs paired rows: batches from gnorm_kernels.data.pairs.pair_batches "
                         f"(a 'pairs' entry); got keys {sorted(batch)}")
    if causal or logits.dim() != 2:
        raise ValueError(f"objective 'contrastive' expects sentence embeddings [rows, dim], got logits of shape {list(logits.shape)}")
    if per_example:
        raise ValueError("objective 'contrastive' has no per-example value (the other pairs of a batch are each "
                         "pair's distractors); use aggregation='per_batch' or 'accumulated'")
    embeddings = F.normalize(logits.float(), dim=-1)
    pairs = pairs.to(logits.device)
    similarity = CONTRASTIVE_SCALE * embeddings[pairs[:, 0]] @ embeddings[pairs[:, 1]].T
    return F.cross_entropy(similarity, torch.arange(len(pairs), device=logits.device))


# name -> f(logits, batch, per_example, causal)
OBJECTIVES: dict[str, Callable[[torch.Tensor, Batch, bool, bool], torch.Tensor]] = {
    "logits_norm": _logits_norm,
    "loss": _task_loss,
    "contrastive": _contrastive,
}
_NEEDS_LABELS = {"loss"}  # for classifiers; a causal LM's targets are its own inputs


def objective_value(
    objective: str | Objective,
    logits: torch.Tensor,
    batch: Batch,
    index: int,
    per_example: bool,
    *,
    causal: bool = False,
) -> torch.Tensor:
    """The objective of one batch: a scalar, or [B] per-example values when `per_example`.
    `causal`: the logits are a causal LM's [B, T, vocab] (see the module docstring)."""
    if isinstance(objective, str):
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; expected one of {sorted(OBJECTIVES)} or a callable")
        if objective in _NEEDS_LABELS and not causal and "labels" not in batch:
            raise ValueError(
                f"objective {objective!r} needs labels, but calibration batch {index} has no 'labels' "
                f"(keys: {sorted(batch)}); use objective='logits_norm', which needs none"
            )
        value = OBJECTIVES[objective](logits, batch, per_example, causal)
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


# --------------------------------------------------------------------------- batches, logits, mode


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
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.numel() and not mask.bool().any():
            # an error, not a warning: such a batch gives zero gradients, so scores from it rank
            # nothing (all of them zero: greedy would prune in index order); it is a data bug
            raise ValueError(
                f"calibration batch {i} has no real tokens: its attention_mask is 0 everywhere (all padding), "
                "which gives zero scores for every head; drop the batch or fix its attention_mask (1 = token, 0 = padding)"
            )
    return batches


def model_logits(model: nn.Module, batch: Batch, device: torch.device) -> torch.Tensor:
    """The model's output logits on one batch; a model without a task or LM head is refused."""
    logits = getattr(model(**model_inputs(batch, device)), "logits", None)
    if logits is None:
        raise TypeError(
            f"{type(model).__name__} returned no logits: scoring needs a model with a task head "
            "(e.g. AutoModelForSequenceClassification) or a language-model head (AutoModelForCausalLM)"
        )
    return logits


def progress_over(items: Sequence, progress: bool, desc: str):
    """`items`, behind a transient progress bar when `progress` (`gnorm_kernels.progress`)."""
    return progress_bar(items, desc=desc, leave=False) if progress else items


@contextmanager
def scoring_mode(
    model: nn.Module,
    trainable: Sequence[torch.nn.Parameter] = (),
    *,
    grad: bool = True,
    training: bool = False,
) -> Iterator[nn.Module]:
    """Eval mode (dropout off; ``training=True`` for train mode, dropout on), only `trainable`
    parameters requiring grad, and gradients on (off with ``grad=False``); every module's mode and
    every parameter's flag restored on exit.

    Freezing everything else lets backward skip the weight gradients nobody reads.
    """
    keep = {id(p) for p in trainable}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with model_mode(model, training=training):
        try:
            for p, _ in flags:
                p.requires_grad_(id(p) in keep)
            with torch.enable_grad() if grad else torch.no_grad():
                yield model
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
