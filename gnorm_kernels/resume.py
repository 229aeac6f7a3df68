"""What identifies a pruning run, so that a run started again on its checkpoint carries on.

The drivers (`gnorm_kernels.greedy`) record their settings, with the calibration data's
fingerprint, in the trajectory; `resume_run` reads a saved trajectory back and refuses it when it
belongs to a different run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from gnorm_kernels.trajectory import Trajectory

__all__ = ["batches_fingerprint", "describe_setting", "resume_run"]

Head = tuple[int, int]
Batch = Mapping[str, torch.Tensor]


def batches_fingerprint(batches: Sequence[Batch]) -> str:
    """A short hash of the batches' token ids and masks, so a resumed run can check its data."""
    digest = hashlib.sha256()
    for batch in batches:
        for key in ("input_ids", "attention_mask"):
            if key in batch:
                digest.update(batch[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def describe_setting(value: Any) -> Any:
    """A JSON-friendly, run-to-run stable description of a setting (callables by name)."""
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
    if isinstance(value, Mapping):
        return {str(k): describe_setting(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe_setting(v) for v in value]
    return value


def resume_run(
    checkpoint: str | os.PathLike | None,
    name: str,
    unit: str,
    grid: tuple[int, int],
    greedy: bool,
    prune_first: str,
    settings: dict[str, Any],
    initially_pruned: list[Head],
    budget: int,
) -> Trajectory | None:
    """The saved trajectory at `checkpoint`, checked to belong to this run; None if there is none."""
    if checkpoint is None or not Path(checkpoint).exists():
        return None
    path = Path(checkpoint)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint must be a file path for the trajectory JSON, got the folder {path}")
    saved = Trajectory.load(path)
    mismatch = []
    for what, mine, theirs in (
        ("method", name, saved.method),
        ("unit", unit, saved.unit),
        ("grid", tuple(grid), saved.shape),
        ("greedy", greedy, saved.greedy),
        ("prune_first", prune_first, saved.prune_first),
        ("heads pruned before the run", sorted(initially_pruned), sorted(saved.initially_pruned)),
        ("budget", budget, saved.budget),
    ):
        if mine != theirs:
            mismatch.append(f"{what}: {theirs!r} saved, {mine!r} now")
    for key, value in settings.items():
        if json.loads(json.dumps(value)) != saved.settings.get(key):
            mismatch.append(f"{key}: {saved.settings.get(key)!r} saved, {value!r} now")
    if mismatch:
        raise ValueError(
            f"checkpoint {path} belongs to a different run ({'; '.join(mismatch)}); "
            "delete it or choose another checkpoint path"
        )
    return saved
