"""Evaluation: task metrics, model size, latency and single-head ablation.

Under torch.distributed (`gnorm_kernels.parallel.distributed.data_parallel`) the batches are this rank's
shard: the confusion counts and loss sums are all-reduced, so every rank reports the global metrics.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from gnorm_kernels.data.batches import Batch, model_device, model_inputs
from gnorm_kernels.data.tasks import METRICS
from gnorm_kernels.heads.families import head_layout, is_causal_lm, stack_module
from gnorm_kernels.heads.masking import mask_heads
from gnorm_kernels.modes import model_mode
from gnorm_kernels.parallel import distributed
from gnorm_kernels.progress import progress_bar

__all__ = ["confusion_metrics", "evaluate", "parameter_count", "model_size_mb", "measure_latency", "single_head_ablation",
           "correct_per_example"]



def _confusion(pred: torch.Tensor, gold: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts [num_classes, num_classes] float64: gold classes on rows, predictions on columns."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    confusion.index_put_((gold, pred), torch.ones_like(gold, dtype=torch.float64), accumulate=True)
    return confusion


def confusion_metrics(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Matthews correlation (the multiclass R_K form; the usual MCC for two classes) and, for two
    classes, F1 of the positive class, from confusion counts [..., gold, pred] over any leading
    axes (one evaluation, or every bootstrap resample at once). 0 where a metric is undefined."""
    confusion = np.asarray(confusion, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    if confusion.shape[-1] == 2:
        tp, fp, fn = confusion[..., 1, 1], confusion[..., 0, 1], confusion[..., 1, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["f1"] = np.where(tp == 0, 0.0, 2 * tp / (2 * tp + fp + fn))
    total = confusion.sum((-1, -2))
    correct = np.trace(confusion, axis1=-2, axis2=-1)
    true, pred = confusion.sum(-1), confusion.sum(-2)
    cov_tp = correct * total - (true * pred).sum(-1)
    denom = np.sqrt((total**2 - (pred * pred).sum(-1)) * (total**2 - (true * true).sum(-1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        out["matthews"] = np.where(denom == 0, 0.0, cov_tp / denom)
    return out


def _class_logits(model: torch.nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor | None, dict]:
    """Per-example class logits [B, C] (None for a text-only LM batch) and LM token statistics."""
    logits = model(**model_inputs(batch, device)).logits
    if not is_causal_lm(model):
        if logits.ndim != 2 or logits.shape[-1] < 2:
            raise ValueError(f"expected classification logits [batch, classes >= 2], got shape {tuple(logits.shape)}")
        if "labels" not in batch:
            raise ValueError(f"each batch needs 'labels'; got keys {sorted(batch)}")
        return logits, {}
    # causal LM: position t predicts token t + 1 wherever both are real tokens
    ids = batch["input_ids"].to(logits.device)
    mask = batch.get("attention_mask", torch.ones_like(ids)).to(logits.device).bool()
    keep = mask[:, 1:] & mask[:, :-1]
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    row_nll = (nll.view_as(keep) * keep).sum(1, dtype=torch.float64)  # each row's summed NLL, for the bootstrap
    stats = {"token_nll": float(row_nll.sum()), "tokens": int(keep.sum()),
             "row_nll": row_nll.tolist(), "row_tokens": keep.sum(1).tolist()}
    if "labels" not in batch:
        return None, stats
    for key in ("label_token_ids", "verdict_index"):
        if key not in batch:
            raise ValueError(f"a labelled LM batch needs {key!r} beside 'labels'; got keys {sorted(batch)}")
    rows = torch.arange(ids.shape[0], device=logits.device)
    before = batch["verdict_index"].to(logits.device) - 1
    return logits[rows, before][:, batch["label_token_ids"].to(logits.device)], stats


@torch.no_grad()
def _predict(model: torch.nn.Module, batches: Iterable[Batch], progress: bool) -> dict[str, Any]:
    device = model_device(model)
    preds, golds, row_nll, row_tokens = [], [], [], []
    loss_sum, token_nll, tokens, seen = 0.0, 0.0, 0, 0
    for batch in progress_bar(batches, desc="evaluating", disable=not progress, leave=False):
        seen += 1
        logits, stats = _class_logits(model, batch, device)
        token_nll += stats.get("token_nll", 0.0)
        tokens += stats.get("tokens", 0)
        if "row_nll" in stats:
            row_nll.append(stats["row_nll"])
            row_tokens.append(stats["row_tokens"])
        if logits is None:
            continue
        if not torch.isfinite(logits).all():
            raise FloatingPointError(
                "the model gives non-finite logits (NaN or inf): its weights or inputs hold non-finite values"
            )
        labels = batch["labels"].to(logits.device)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        preds.append(logits.argmax(-1).cpu())
        golds.append(labels.cpu())
    if not seen and not distributed.data_parallel(model):  # a rank's shard may be empty
        raise ValueError("no batches to evaluate")
    return {"preds": preds, "golds": golds, "loss_sum": loss_sum, "token_nll": token_nll, "tokens": tokens, "seen": seen,
            "row_nll": row_nll, "row_tokens": row_tokens}


def _totals(model: torch.nn.Module, found: dict[str, Any]) -> tuple[torch.Tensor, list[float]]:
    """The confusion counts [C, C] and the sums [loss, token NLL, tokens, batches] every metric
    comes from; summed over the ranks (two small collectives) under data parallelism."""
    num_classes = 0
    if found["preds"]:
        pred, gold = torch.cat(found["preds"]), torch.cat(found["golds"])
        configured = int(getattr(getattr(model, "config", None), "num_labels", 0) or 0)
        if is_causal_lm(model):
            configured = 0
        num_classes = max(configured, int(max(pred.max(), gold.max())) + 1)
    parallel = distributed.data_parallel(model)
    if parallel:
        num_classes = distributed.all_reduce_max(num_classes)
    confusion = _confusion(pred, gold, num_classes) if found["preds"] else torch.zeros(num_classes, num_classes)
    sums = torch.tensor([found["loss_sum"], found["token_nll"], found["tokens"], found["seen"]], dtype=torch.float64)
    if parallel:
        confusion, sums = distributed.all_reduce_sums(confusion.double(), sums)
    if not sums[3]:
        raise ValueError("no batches to evaluate")
    return confusion, sums.tolist()


def evaluate(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    *,
    metric: str = "accuracy",
    progress: bool = False,
    per_example: bool = False,
) -> dict[str, Any]:
    """Accuracy, mean cross-entropy loss, F1 (binary tasks) and Matthews correlation; for a
    causal LM also perplexity (next-token, padding ignored) and, where its batches carry verdict
    labels, the same class metrics on the verdict token.

    `score` repeats the value of `metric`, the task's own metric ("perplexity" for text-only LM
    tasks: lower is better there). Runs without gradients in eval mode; the model's modes are
    restored afterwards. Non-finite logits are an error, never a metric.

    With `per_example` (labelled batches) the result also holds ``predictions`` and ``golds``:
    the predicted and the true class of every example, as lists of ints in batch order, so the
    metric can be recomputed on resampled examples (the bootstrap of `gnorm_kernels.evidence.comparison`);
    a causal LM on text alone gives ``example_nll`` and ``example_tokens`` instead (each row's
    summed next-token NLL and its token count: perplexity is exp(sum NLL / sum tokens)). Under data
    parallelism every rank gets all of them.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    with model_mode(model, training=False):
        found = _predict(model, batches, progress)
        confusion, (loss_sum, token_nll, tokens, _) = _totals(model, found)
    result: dict[str, float] = {}
    if tokens:
        token_loss = token_nll / tokens
        if not math.isfinite(token_loss):
            raise FloatingPointError("the model's next-token loss is not finite (NaN or inf in its weights?)")
        result.update(perplexity=math.exp(token_loss), token_loss=token_loss, tokens=float(tokens))
    n, num_classes = int(confusion.sum()), confusion.shape[0]
    if n:
        result.update(
            accuracy=float(torch.tensor(float(confusion.trace()), dtype=torch.float32) / n),
            loss=loss_sum / n,
            n=float(n),
        )
        result.update({k: float(v) for k, v in confusion_metrics(confusion.numpy()).items()})
    if per_example and not n and not tokens:
        raise ValueError("per_example=True needs labelled batches or a causal LM: there is nothing per example to report")
    if metric not in result:
        if metric == "perplexity" or not n:
            raise ValueError(f"metric {metric!r} needs {'a causal LM' if metric == 'perplexity' else 'labelled batches'}")
        raise ValueError(f"metric {metric!r} needs a binary task; this model has {num_classes} labels")
    result["score"] = result[metric]
    if per_example:
        # perplexity is bootstrapped from each row's NLL, even on a labelled LM task
        result.update(_per_window(model, found) if metric == "perplexity" or not n else _per_example(model, found))
    return result


def _per_window(model: torch.nn.Module, found: dict[str, Any]) -> dict[str, list]:
    """Every text row's summed NLL and token count in batch order (gathered from every rank)."""
    per_batch = list(zip(found["row_nll"], found["row_tokens"]))
    if distributed.data_parallel(model):
        per_batch = distributed.gather_shards([([], []), *per_batch], "evaluation batches")
    return {"example_nll": [v for nll, _ in per_batch for v in nll],
            "example_tokens": [int(v) for _, t in per_batch for v in t]}


def _per_example(model: torch.nn.Module, found: dict[str, Any]) -> dict[str, list[int]]:
    """Every example's predicted and true class in batch order; under data parallelism gathered
    from every rank back into the order of the batches before they were shared out."""
    per_batch = [(p.tolist(), g.tolist()) for p, g in zip(found["preds"], found["golds"])]
    if distributed.data_parallel(model):  # a leading empty entry on each rank, so a rank with no batch takes part
        per_batch = distributed.gather_shards([([], []), *per_batch], "evaluation batches")
    return {"predictions": [v for p, _ in per_batch for v in p], "golds": [v for _, g in per_batch for v in g]}


def parameter_count(model: torch.nn.Module, *, encoder_only: bool = False) -> int:
    """Number of distinct parameters; `encoder_only` counts the transformer layers alone
    (no embeddings, pooler or classifier), the part that head pruning shrinks."""
    module = model
    if encoder_only:
        try:
            module = stack_module(model)
        except ValueError as err:
            raise ValueError(f"encoder_only=True needs a model whose encoder stack is known: {err}") from None
    return sum(p.numel() for p in module.parameters())


def correct_per_example(model: torch.nn.Module, batches: Iterable[Batch]) -> np.ndarray:
    """[n] 1.0 where `model` predicts the label of the example, 0.0 where not, in batch order: two
    models' rows on the same batches are what a paired bootstrap compares example by example."""
    found = evaluate(model, batches, per_example=True)
    if "predictions" not in found:
        raise ValueError("correct_per_example needs labelled batches (class labels or verdict words)")
    return np.equal(found["predictions"], found["golds"]).astype(np.float64)


def model_size_mb(model: torch.nn.Module) -> float:
    """Size of parameters plus buffers as stored (their own dtypes), in MiB (2**20 bytes)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


@torch.no_grad()
def measure_latency(
    model: torch.nn.Module, batches: Iterable[Batch], *, repeats: int = 5, warmup: int = 1
) -> dict[str, Any]:
    """Median wall-clock seconds per forward pass over the given batches.

    Each of `repeats` passes times every batch; `warmup` untimed passes go first.
    The CPU thread count is part of the result because latency depends on it.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    batches = list(batches)
    if not batches:
        raise ValueError("no batches to time")
    device = model_device(model)
    inputs = [model_inputs(b, device) for b in batches]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: list[float] = []
    with model_mode(model, training=False):
        for _ in range(warmup):
            for x in inputs:
                model(**x)
        for _ in range(repeats):
            for x in inputs:
                sync()
                start = time.perf_counter()
                model(**x)
                sync()
                times.append(time.perf_counter() - start)
    examples = sum(int(x["input_ids"].shape[0]) for x in inputs) / len(inputs)
    median = statistics.median(times)
    return {
        "median_s": median,
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "per_example_s": median / examples,
        "batches": len(inputs),
        "mean_batch_size": examples,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }


def single_head_ablation(
    model: torch.nn.Module, batches: Iterable[Batch], *, metric: str = "accuracy", progress: bool = True
) -> torch.Tensor:
    """Drop in `metric` when each head alone is masked out: an [L, H] grid.

    Drops are in the metric's own units (accuracy 0.05 = 5 points); positive
    means the model got worse without that head (for perplexity, where lower is better, the
    drop is the rise: masked minus unmasked). Heads already pruned are NaN.
    """

    layout = head_layout(model)
    present = layout.kept_mask()
    batches = list(batches)
    base = evaluate(model, batches, metric=metric)["score"]
    drops = torch.full(layout.shape, float("nan"))
    bar = progress_bar(total=int(present.sum()), desc="ablating heads", disable=not progress)
    for layer, head in present.nonzero().tolist():
        bar.update(1)
        mask = torch.ones(layout.shape)
        mask[layer, head] = 0.0
        with mask_heads(model, mask):
            score = evaluate(model, batches, metric=metric)["score"]
            drops[layer, head] = score - base if metric == "perplexity" else base - score
    bar.close()
    return drops
