"""Calibration samples: disjoint draws of calibration examples from a task, as batches."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

__all__ = ["calibration_draws"]


def calibration_draws(
    task: Any,
    tokenizer: Any,
    *,
    draws: int = 1,
    size: int | None = None,
    batch_size: int | None = None,
    max_length: int = 128,
    seed: int = 0,
    preset: str | None = None,
) -> list[list[dict]]:
    """`draws` disjoint calibration samples of `size` examples each, as batches (a list per draw).

    Draw 0 is the first `size` examples of the task's calibration split; later draws continue
    through that split and then through the training split (in a seeded shuffle), never the test
    split. For a text-only task (`gnorm_kernels.data.text.TextTask`) an example is a packed window
    of `max_length` tokens, what its batches hold: the same documents are packed into one stream and
    cut into windows, and each draw takes the next `size` windows (draw 0: the first `size`
    windows of the calibration split, as ``task.batches("calibration", limit=size)`` gives them).
    `size` and `batch_size` default to 256 and 32, or to the `preset`'s (authors: 1000 and 128)."""
    from gnorm_kernels.data.text import TextTask, pack_windows
    from gnorm_kernels.scoring.presets import get_preset

    spec = get_preset(preset) if preset is not None else None
    size = size or (spec.calibration_size if spec else 256)
    batch_size = batch_size or (spec.batch_size if spec else 32)
    if draws < 1 or size < 1:
        raise ValueError(f"draws and size must be >= 1, got draws={draws}, size={size}")
    rest = list(task.splits["train"])
    np.random.default_rng(seed).shuffle(rest)
    pool = list(task.splits["calibration"]) + rest
    if isinstance(task, TextTask):
        windows = pack_windows([ex.text for ex in pool], tokenizer, max_length=max_length, batch_size=size,
                               limit=draws * size)
        if len(windows) < draws or windows[draws - 1]["input_ids"].shape[0] < size:
            got = sum(b["input_ids"].shape[0] for b in windows)
            raise ValueError(f"{draws} disjoint calibration draws of {size} windows of {max_length} tokens need "
                             f"{draws * size}; the calibration and training documents of {task.name!r} fill {got}")
        return [[{k: v[i:i + batch_size] for k, v in draw.items()} for i in range(0, size, batch_size)]
                for draw in windows]
    if len(pool) < draws * size:
        raise ValueError(f"{draws} disjoint calibration draws of {size} examples need {draws * size}; the "
                         f"calibration and training splits of {task.name!r} hold {len(pool)}")
    return [replace(task, splits={**task.splits, "calibration": pool[d * size:(d + 1) * size]})
            .batches("calibration", tokenizer, batch_size=batch_size, max_length=max_length) for d in range(draws)]
