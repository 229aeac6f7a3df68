"""What the offline models' training runs share: where they are cached, a pinned thread count,
the learning-rate schedule, the error for a run that learned nothing, and the cache entry itself
(`cached_model`: written beside its place and renamed in, its weights hashed, a broken entry set
aside and trained again).

The tiny BERT (`gnorm_kernels.models.loading`) and the tiny LM (`gnorm_kernels.models.tiny_lm`) are both trained
here on first use and cached under `cache_dir()`; each pins its thread count so that machines of
any size train the same model.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from gnorm_kernels.checkpoints.formats import file_sha256, write_checkpoint

__all__ = ["TrainingStuck", "cache_dir", "cached_model", "entry_problem", "torch_threads"]

WEIGHTS = "model.safetensors"
TRAINING_RECORD = "training.json"


class TrainingStuck(RuntimeError):
    """Raised when a training run stays at chance or ends below the recipe's accuracy floor."""


def cache_dir() -> Path:
    """`$GNORM_CACHE`, or ~/.cache/gnorm_kernels."""
    return Path(os.environ.get("GNORM_CACHE") or Path.home() / ".cache" / "gnorm_kernels")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def entry_problem(folder: str | os.PathLike) -> str | None:
    """Why a cache folder is not a finished entry (None when it is): its record, config,
    tokenizer and weights must all be there, the weights with the hash the record holds."""
    folder = Path(folder)
    record = folder / TRAINING_RECORD
    try:
        info = json.loads(record.read_text())
    except (OSError, ValueError) as err:
        return f"{record} is missing or unreadable ({err})"
    for name in ("config.json", "tokenizer.json", WEIGHTS):
        if not (folder / name).is_file():
            return f"{folder / name} is missing"
    if not isinstance(info, dict) or "weights_sha256" not in info:
        return f"{record} records no weights hash (written by an older version)"
    if info["weights_sha256"] != file_sha256(folder / WEIGHTS):
        return f"{folder / WEIGHTS} does not match the hash in {record} (truncated or changed)"
    return None


def cached_model(target: str | os.PathLike, train: Callable[[], tuple[Any, Any, dict[str, Any]]],
                 what: str) -> Path:
    """The cache folder `target`, trained first (``train() -> (model, tokenizer, record)``) unless
    a finished entry is there; returns it.

    The entry is written to a temporary folder beside `target` and renamed into place, so a reader
    never sees half of one; its record (``training.json``) holds the weights' SHA-256. An entry
    that is broken (a file missing, weights that do not match their hash) is set aside with a
    warning naming `what` and trained again. Two processes training the same entry at once both
    succeed; the first rename wins.
    """
    target = Path(target)
    if target.exists():
        problem = entry_problem(target)
        if problem is None:
            return target
        warnings.warn(f"{what} cache entry {target} is broken ({problem}); training it again", stacklevel=3)
        broken = target.with_name(f".{target.name}-broken-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(target, broken)
        except OSError:
            pass  # another process moved it first
        shutil.rmtree(broken, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    model, tokenizer, info = train()
    tmp = target.parent / f".{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write_checkpoint(model, tmp, tokenizer)
        info = {**info, "weights_sha256": file_sha256(tmp / WEIGHTS)}
        (tmp / TRAINING_RECORD).write_text(json.dumps(info, indent=2))
        try:
            os.rename(tmp, target)
        except OSError:
            if entry_problem(target) is not None:  # not another process's finished copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
