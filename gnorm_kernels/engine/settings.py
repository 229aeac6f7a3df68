"""`PruneSettings`: everything that decides how a pruning run chooses, stops and records, as one
typed value that travels from `compare` or the command line through `run_method` to the driver.

The drivers take it whole (``settings=``) or build it from keyword options of the same names;
an unknown option is an error naming the known ones, so a typo never runs with a default.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import torch

__all__ = ["PruneSettings"]


@dataclass(frozen=True)
class PruneSettings:
    """How a run prunes. `scorer`: a registered scorer name or ``f(model, batches, **options)``
    returning the unit grid; `scorer_options` go to it. `prune_first`: remove the lowest or the
    highest scores. `unit`: query heads ("head") or whole key/value groups ("kv_group"). `method`:
    the run's name in its trajectory (default from greedy/static and the scorer). Budget: `ratio`
    of the prunable units, or `steps` steps of `heads_per_step` units, keeping at least
    `min_heads_per_layer` units in every layer (default: every prunable unit). Evaluation with
    `metric` after step 0, every `eval_every` steps and after the last; `per_example` keeps each
    evaluated step's per-example predictions. `checkpoint`: a trajectory file written after every
    step, resumed from when it exists; `max_steps` stops this call after that many new steps.
    `inplace` prunes the caller's model at the end; `progress` shows a bar."""

    scorer: str | Callable[..., torch.Tensor] = "gnorm"
    scorer_options: Mapping[str, Any] | None = None
    prune_first: Literal["lowest", "highest"] = "lowest"
    unit: Literal["head", "kv_group"] = "head"
    method: str | None = None
    ratio: float | None = None
    steps: int | None = None
    heads_per_step: int = 1
    min_heads_per_layer: int = 0
    eval_every: int = 1
    metric: str = "accuracy"
    checkpoint: str | os.PathLike | None = None
    max_steps: int | None = None
    inplace: bool = False
    progress: bool = True
    per_example: bool = False

    @classmethod
    def build(cls, settings: PruneSettings | None = None, **options: Any) -> PruneSettings:
        """`settings` (default: the defaults) with `options` set; an unknown name is a TypeError."""
        if settings is not None and not isinstance(settings, PruneSettings):
            raise TypeError(f"settings must be a PruneSettings, got {type(settings).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown pruning option(s) {unknown}; the options are {sorted(known)}")
        return dataclasses.replace(settings or cls(), **options)
