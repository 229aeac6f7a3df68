"""The offline decoder default: "tiny-lm", a small Llama trained here on the film reviews.

Each review of the synthetic grammar (`gnorm_kernels.data.synthetic`) becomes a text that ends in
its verdict, ``[BOS] the plot was dull but the acting was superb verdict : positive``, and a
4-layer Llama with grouped-query attention (8 query heads reading 2 key/value heads) learns
the texts as a language model. So it has a perplexity (every token) and a verdict accuracy (the
verdict word predicted after the cue), and its heads can be scored and pruned like the tiny
BERT's. Like "tiny", the model trained from the default `LMRecipe` ships with the package
(`gnorm_kernels.models.shipped_models`); training is deterministic for a recipe on one kind of CPU (it
runs on the recipe's pinned thread count), and a recipe other than the default is trained here
and cached.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gnorm_kernels.checkpoints.formats import progress_bars
from gnorm_kernels.data.lm_tasks import VERDICT_CUE, VERDICTS, lm_tokenizer, synthetic_lm_task
from gnorm_kernels.data.synthetic import synthetic_fingerprint
from gnorm_kernels.models.training import TrainingStuck, cache_dir, cached_model, torch_threads
from gnorm_kernels.progress import progress_bar
from gnorm_kernels.schedules import lr_factor

__all__ = [
    "LMRecipe",
    "train_tiny_lm",
    "ensure_tiny_lm",
    "load_tiny_lm",
    "tiny_lm_cache_path",
]

# Bump when the training code changes in a way the recipe fields do not capture.
_RECIPE_VERSION = 1



@dataclass(frozen=True)
class LMRecipe:
    """Everything that determines the tiny LM; its hash names the cache folder of a model trained
    here. The default recipe is the shipped model's (trained with it by `make models`)."""

    seed: int = 0
    data_seed: int = 0
    train_size: int = 40_000
    layers: int = 4
    heads: int = 8
    kv_heads: int = 2
    hidden: int = 64
    ffn: int = 256
    max_positions: int = 64
    init_range: float = 0.02
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    steps: int = 1_600
    batch_size: int = 64
    length_pool: int = 4  # batches sorted by length together (see Task.batches)
    grad_clip: float = 1.0
    verdict_weight: float = 4.0  # the verdict token's loss counts this much beside the mean token loss
    min_accuracy: float = 0.9  # calibration verdict accuracy below this is a failed run
    threads: int = 2  # pinned, as for the tiny BERT: thread splits change rounding, and so the model

    def key(self) -> str:
        payload = json.dumps(
            {"recipe": asdict(self), "version": _RECIPE_VERSION, "grammar": synthetic_fingerprint(),
             "verdicts": VERDICTS, "cue": VERDICT_CUE},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- training


def _lm_config(recipe: LMRecipe, tokenizer: Any) -> Any:
    from transformers import LlamaConfig

    if recipe.hidden % recipe.heads or recipe.heads % recipe.kv_heads:
        raise ValueError(
            f"hidden ({recipe.hidden}) must split into heads ({recipe.heads}), and heads into kv_heads "
            f"({recipe.kv_heads}) groups"
        )
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden,
        intermediate_size=recipe.ffn,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.kv_heads,
        head_dim=recipe.hidden // recipe.heads,
        max_position_embeddings=recipe.max_positions,
        initializer_range=recipe.init_range,
        attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def _lm_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor], weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token loss over real tokens plus `weight` x the verdict token's loss;
    also the verdict predictions (arg-max over the verdict words)."""
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    keep = mask[:, 1:] & mask[:, :-1]
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view_as(keep)
    token_loss = nll[keep].mean()
    rows = torch.arange(ids.shape[0])
    before = batch["verdict_index"] - 1
    verdict_loss = nll[rows, before].mean()
    choice = logits[rows, before][:, batch["label_token_ids"]].argmax(-1)
    return token_loss + weight * verdict_loss, choice


def _train_loop(model, optimizer, schedule, batches, recipe: LMRecipe, progress: bool) -> dict[str, float]:
    """The optimisation itself; returns its wall-clock and CPU seconds."""
    check_at = max(recipe.warmup_steps, int(0.4 * recipe.steps))
    window: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = progress_bar(batches, desc="training tiny-lm", disable=not progress, mininterval=1.0)
    for step, batch in enumerate(bar):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, choice = _lm_loss(logits, batch, recipe.verdict_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        schedule.step()
        window.append((choice == batch["labels"]).float().mean().item())
        window = window[-100:]
        running = sum(window) / len(window)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{running:.3f}")
        if step == check_at and running < 0.6:
            bar.close()
            raise TrainingStuck(
                f"tiny-lm training is stuck at chance: running verdict accuracy {running:.3f} after {step} of "
                f"{recipe.steps} steps (recipe {recipe}). Try another seed or learning rate/warm-up."
            )
    bar.close()
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start}


def train_tiny_lm(recipe: LMRecipe | None = None, *, progress: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """Train the tiny Llama on the synthetic reviews as text; returns (model, tokenizer, info).

    Deterministic for a given recipe on one kind of CPU (it trains on `recipe.threads`
    threads whatever the machine has). Raises `TrainingStuck` if the running verdict accuracy
    is still near chance after 40% of the steps, or if calibration verdict accuracy at the
    end is below `recipe.min_accuracy`. `info` holds test accuracy and perplexity and the
    training time.
    """
    from transformers import LlamaForCausalLM

    from gnorm_kernels.evaluation import evaluate

    recipe = recipe or LMRecipe()
    task = synthetic_lm_task(seed=recipe.data_seed, train_size=recipe.train_size)
    tokenizer = lm_tokenizer(model_max_length=recipe.max_positions)
    epochs = math.ceil(recipe.steps * recipe.batch_size / recipe.train_size)
    batches = task.batches(
        "train", tokenizer, batch_size=recipe.batch_size, shuffle=True, seed=recipe.seed, group_by_length=True,
        pool_batches=recipe.length_pool, epochs=epochs, max_length=recipe.max_positions,
    )[: recipe.steps]
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM._from_config(_lm_config(recipe, tokenizer), attn_implementation="sdpa")
    model.train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, recipe.warmup_steps, recipe.steps)
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with torch_threads(recipe.threads):
        timing = _train_loop(model, optimizer, schedule, batches, recipe, progress)
        model.eval()
        scores = {s: evaluate(model, task.batches(s, tokenizer, batch_size=256)) for s in ("calibration", "test")}
    if scores["calibration"]["accuracy"] < recipe.min_accuracy:
        raise TrainingStuck(
            f"tiny-lm reached calibration verdict accuracy {scores['calibration']['accuracy']:.3f}, expected >= "
            f"{recipe.min_accuracy} (recipe {recipe})"
        )
    info = {
        "recipe": asdict(recipe),
        "recipe_version": _RECIPE_VERSION,
        "grammar": synthetic_fingerprint(),
        "accuracy": scores["test"]["accuracy"],
        "perplexity": scores["test"]["perplexity"],
        "calibration_accuracy": scores["calibration"]["accuracy"],
        "calibration_perplexity": scores["calibration"]["perplexity"],
        "train_seconds": round(timing["seconds"], 2),
        "train_cpu_seconds": round(timing["cpu_seconds"], 2),
        "load_average_at_start": round(load, 2),
        "torch_threads": recipe.threads,
    }
    return model, tokenizer, info


# --------------------------------------------------------------------------- the cache


def tiny_lm_cache_path(recipe: LMRecipe | None = None, cache: str | os.PathLike | None = None) -> Path:
    """The folder the tiny LM of `recipe` is cached in (under `cache`, default `training.cache_dir()`)."""
    base = Path(cache) if cache is not None else cache_dir()
    return base / f"tiny-lm-{(recipe or LMRecipe()).key()}"


def ensure_tiny_lm(
    recipe: LMRecipe | None = None, cache: str | os.PathLike | None = None, progress: bool = True
) -> Path:
    """The folder of the tiny LM of `recipe`: the shipped one (checked against its pinned hashes,
    never trained) for the default recipe; otherwise trained and cached unless a finished copy
    exists.

    See `training.cached_model`: a reader never sees a half-written entry, and a broken one (a
    file missing, weights that do not match their recorded hash) is set aside with a warning
    and trained again.
    """
    if recipe is None or recipe == LMRecipe():
        from gnorm_kernels.models.shipped_models import shipped_folder

        return shipped_folder("tiny-lm")
    return cached_model(tiny_lm_cache_path(recipe, cache), lambda: train_tiny_lm(recipe, progress=progress), "tiny-lm")


def load_tiny_lm(
    recipe: LMRecipe | None = None,
    *,
    cache: str | os.PathLike | None = None,
    attn_implementation: str | None = None,
    progress: bool = True,
) -> tuple[Any, Any]:
    """(model, tokenizer) of the tiny LM in eval mode: the shipped one for the default recipe,
    otherwise trained and cached on first use."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = ensure_tiny_lm(recipe, cache, progress)
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    with progress_bars(progress):
        model = LlamaForCausalLM.from_pretrained(folder, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    model.eval()
    return model, tokenizer
