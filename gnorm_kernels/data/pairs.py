"""Paired texts for sentence embedders: each paragraph cut into its two halves.

A sentence embedder has no task head, but it was trained to place texts that belong together
nearest each other; the two halves of one paragraph belong together, the halves of other
paragraphs are the distractors. So paragraphs alone (e.g. python-docs) give it a task offline:
find each first half's own second half (`gnorm_kernels.models.sentence.pair_retrieval`), and a
loss to score heads with (the "contrastive" objective of `gnorm_kernels.scoring.objectives`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["paragraph_halves", "pair_batches"]


def paragraph_halves(texts: Sequence[str], *, min_words: int = 16) -> list[tuple[str, str]]:
    """(first half, second half) of every text of at least `min_words` words, cut at the middle word."""
    if min_words < 2:
        raise ValueError(f"min_words must be at least 2 (a half needs a word), got {min_words}")
    pairs = []
    for text in texts:
        words = text.split()
        if len(words) >= min_words:
            middle = len(words) // 2
            pairs.append((" ".join(words[:middle]), " ".join(words[middle:])))
    return pairs


def pair_batches(tokenizer: Any, pairs: Sequence[tuple[str, str]], *, batch_size: int = 16,
                 max_length: int = 64) -> list[dict[str, torch.Tensor]]:
    """Batches of 2B rows for B pairs: the first halves, then the second halves in the same order;
    ``pairs`` ([B, 2]) holds each pair's two row indices. Each half is cut at `max_length` tokens; a
    last lone pair joins the batch before it (every batch has B >= 2)."""
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (a pair needs another pair's half as a distractor), got {batch_size}")
    if len(pairs) < 2:
        raise ValueError(f"got {len(pairs)} pair(s): expected at least 2 (first half, second half) tuples, e.g. from paragraph_halves")
    chunks = [list(pairs[start:start + batch_size]) for start in range(0, len(pairs), batch_size)]
    if len(chunks[-1]) < 2:  # a lone pair has no distractor: it joins the batch before it
        chunks[-2].extend(chunks.pop())
    batches = []
    for chunk in chunks:
        texts = [a for a, _ in chunk] + [b for _, b in chunk]
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        batch = {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded}
        rows = torch.arange(len(chunk))
        batch["pairs"] = torch.stack([rows, rows + len(chunk)], dim=1)
        batches.append(batch)
    return batches
