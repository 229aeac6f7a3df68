"""What a task is and how it becomes batches.

A `Task` holds disjoint train / calibration / test splits of `Example`s; `Task.batches`
tokenises a split into padded batches of model keyword arguments plus `labels`, the form every
scorer, driver and evaluation consumes. Where tasks come from (the synthetic grammar, GLUE,
local files) is `gnorm_kernels.data.loading`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

__all__ = ["Example", "Task", "SPLITS", "METRICS", "LOG_METRICS", "auc_values"]

SPLITS = ("train", "calibration", "test")
METRICS = ("accuracy", "f1", "matthews", "perplexity")  # what a task is scored by; evaluate reports these
LOG_METRICS = ("perplexity",)  # lower is better and spans orders of magnitude: curves averaged on a log scale


def auc_values(metric: str, values: Any) -> Any:
    """A curve's `values` (an array) on the scale its area is taken on: the natural log for
    perplexity (so the area under the curve is a mean log-perplexity), as they are otherwise."""
    import numpy as np

    return np.log(values) if metric in LOG_METRICS else values


@dataclass(frozen=True)
class Example:
    """One labelled input: a text, or a text pair, and a class id."""

    text: str
    text_pair: str | None
    label: int


@dataclass
class Task:
    """A classification task with disjoint train / calibration / test splits."""

    name: str
    label_names: list[str]
    splits: dict[str, list[Example]]
    metric: str = "accuracy"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"task {self.name!r} needs splits {list(SPLITS)}, missing {missing}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {self.metric!r}")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def batches(
        self,
        split: str,
        tokenizer: Any,
        *,
        batch_size: int = 32,
        limit: int | None = None,
        max_length: int = 128,
        shuffle: bool = False,
        seed: int = 0,
        group_by_length: bool = False,
        pool_batches: int = 50,
        epochs: int = 1,
    ) -> list[dict[str, torch.Tensor]]:
        """Tokenise a split into padded batches of model kwargs plus `labels`.

        Each batch is padded to its own longest member. `limit` keeps the first
        examples of the split (after shuffling, if asked). `group_by_length` puts
        examples of similar length together (less padding, faster training): each
        run of `pool_batches` batches' worth of shuffled examples is sorted by
        length and cut into batches, and the batch order is shuffled. Small pools
        keep batches mixed (long and short reviews differ in difficulty), large
        pools save the most padding. `epochs` > 1 returns that many passes
        one after the other, each reshuffled when shuffling, tokenised only once.
        """
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}; this task has {sorted(self.splits)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        examples = list(self.splits[split])
        rng = random.Random(seed)
        if shuffle:
            rng.shuffle(examples)
        if limit is not None:
            examples = examples[:limit]
        if not examples:
            return []
        encoded = _encode(examples, tokenizer, max_length)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        labels = [ex.label for ex in examples]
        batches: list[dict[str, torch.Tensor]] = []
        for epoch in range(epochs):
            order = list(range(len(examples)))
            if shuffle and epoch > 0:
                rng.shuffle(order)
            if group_by_length:
                groups = _length_grouped(order, lengths, batch_size, pool_batches, rng)
            else:
                groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            batches.extend(_collate(encoded, labels, idx, tokenizer) for idx in groups)
        return batches


def _encode(examples: Sequence[Example], tokenizer: Any, max_length: int) -> dict[str, list[list[int]]]:
    texts = [ex.text for ex in examples]
    has_pairs = any(ex.text_pair is not None for ex in examples)
    if has_pairs and any(ex.text_pair is None for ex in examples):
        raise ValueError("a split mixes single texts and text pairs; expected one or the other")
    pairs = [ex.text_pair for ex in examples] if has_pairs else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    return {k: list(v) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def _length_grouped(
    order: list[int], lengths: list[int], batch_size: int, pool_batches: int, rng: random.Random
) -> list[list[int]]:
    """Batches of similar length: sort within shuffled pools, then shuffle batches."""
    if pool_batches < 1:
        raise ValueError(f"pool_batches must be >= 1, got {pool_batches}")
    order = order[:]
    rng.shuffle(order)
    pool = batch_size * pool_batches
    groups: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        groups.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(groups)
    return groups


def _collate(
    encoded: dict[str, list[list[int]]], labels: list[int], idx: list[int], tokenizer: Any
) -> dict[str, torch.Tensor]:
    width = max(len(encoded["input_ids"][i]) for i in idx)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    left = getattr(tokenizer, "padding_side", "right") == "left"
    batch: dict[str, torch.Tensor] = {}
    for key, rows in encoded.items():
        fill = pad_id if key == "input_ids" else 0
        padded = []
        for i in idx:
            row = rows[i]
            pad = [fill] * (width - len(row))
            padded.append(pad + row if left else row + pad)
        batch[key] = torch.tensor(padded, dtype=torch.long)
    batch["labels"] = torch.tensor([labels[i] for i in idx], dtype=torch.long)
    return batch
