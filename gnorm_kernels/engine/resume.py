"""What identifies a pruning run, so that a run started again on its checkpoint carries on.

The drivers (`gnorm_kernels.engine.driver`) record their settings, with fingerprints of the model's
weights, the calibration data and the evaluation data, in the trajectory; `resume_run` reads a
saved trajectory back and refuses it (`ResumeMismatch`, saying what differs) when it belongs to a
different run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from gnorm_kernels.data.batches import Batch
from gnorm_kernels.engine.trajectory import Trajectory
from gnorm_kernels.heads.layout import Head
from gnorm_kernels.parallel import distributed

__all__ = ["batches_fingerprint", "model_fingerprint", "describe_setting", "resume_run", "ResumeMismatch",
           "EVALUATION_KEYS", "FINGERPRINTS"]



# the calibration fingerprint hashes token ids and masks (as trajectories have always recorded
# it); the evaluation set's also covers what decides its metric
EVALUATION_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "label_token_ids", "verdict_index")

# the fingerprints among a trajectory's settings, in words for a refused resume
FINGERPRINTS = {
    "model_fingerprint": "the model's weights",
    "calibration_fingerprint": "the calibration set",
    "evaluation_fingerprint": "the evaluation set",
}


class ResumeMismatch(ValueError):
    """A checkpoint that belongs to another run: other settings, model weights or data.
    `differences` lists them in words (e.g. "the model's weights changed, model_fingerprint: ...")."""

    def __init__(self, path: str | os.PathLike, differences: list[str]):
        self.path, self.differences = Path(path), differences
        super().__init__(
            f"checkpoint {path} belongs to a different run ({'; '.join(differences)}); "
            "delete it or choose another checkpoint path"
        )


def batches_fingerprint(batches: Sequence[Batch], keys: Sequence[str] = ("input_ids", "attention_mask")) -> str:
    """A short hash of the batches' tensors under `keys` (token ids and masks by default), so a
    resumed run can check its data."""
    digest = hashlib.sha256()
    for batch in batches:
        for key in keys:
            if key in batch:
                digest.update(batch[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of every weight and buffer (name, dtype, shape, bytes), so a resumed run can
    check that it carries on with the model it started with."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach()
        if hasattr(tensor, "full_tensor"):  # a DTensor shard (FSDP2): every rank hashes the whole tensor
            tensor = tensor.full_tensor()
        tensor = tensor.cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
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
        theirs = saved.settings.get(key, "not recorded")
        if json.loads(json.dumps(value)) != theirs:
            what = f"{FINGERPRINTS[key]} changed, " if key in FINGERPRINTS else ""
            mismatch.append(f"{what}{key}: {theirs!r} saved, {value!r} now")
    if mismatch:
        raise ResumeMismatch(path, mismatch)
    return saved


def data_settings(calibration: Sequence[Any], evaluation: Sequence[Any] | None, *, parallel: bool) -> dict[str, Any]:
    """What a pruning run records about its data: calibration batches, examples and fingerprint,
    evaluation examples and fingerprint. With `parallel` the batches are this rank's shards and the
    record is the global one (shards gathered in `shard`'s order), the same as one process given them all."""
    light = [{k: b[k] for k in ("input_ids", "attention_mask") if k in b} for b in calibration]
    examples = None if evaluation is None else sum(int(b["input_ids"].shape[0]) for b in evaluation)
    evaluated = None if evaluation is None else [{k: b[k] for k in EVALUATION_KEYS if k in b} for b in evaluation]
    if parallel:
        light = distributed.gather_shards(light)
        if examples is not None:
            examples = int(distributed.all_reduce_sums(torch.tensor(float(examples)))[0])
            parts = distributed.all_gather_objects(evaluated)  # a rank may hold no evaluation batch
            evaluated = [part[i] for i in range(max(map(len, parts))) for part in parts if i < len(part)]
    if examples == 0:
        raise ValueError("the evaluation set is empty: pass batches with labels, or None to skip evaluation")
    return {
        "calibration_batches": len(light),
        "calibration_examples": sum(int(b["input_ids"].shape[0]) for b in light),
        "calibration_fingerprint": batches_fingerprint(light),
        "evaluation_examples": examples,
        "evaluation_fingerprint": None if evaluated is None else batches_fingerprint(evaluated, EVALUATION_KEYS),
    }
