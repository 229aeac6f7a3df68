"""Head importance scores by name: the scorer registry and the table of pruning methods.

Every scorer is called as ``scorer(model, batches, **options)`` and returns a float32 tensor on
the original grid of its unit (on the CPU), NaN for units already pruned: ``[num_layers,
num_heads]`` for ``unit="head"`` (the default), ``[num_layers, num_kv_heads]`` for
``unit="kv_group"`` on grouped-query models (`gnorm_kernels.heads.units`).
`SCORERS` names them: "gnorm" (Greedy-Gnorm, `gnorm_kernels.scoring.gnorm`) and the baselines "entropy",
"taylor" and "random" (`gnorm_kernels.scoring.baselines`). A *method* is a scorer plus the end of the
ranking pruned first plus static or greedy driving; `METHODS` is the one table of them that the
drivers, the command line and the notebooks read.

The scorers and their helpers are re-exported here, so ``from gnorm_kernels.scoring.registry import
gnorm_scores, attention_entropy, ...`` works as well as importing from their own modules.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Sequence

import torch
from torch import nn

from gnorm_kernels.data.batches import Batch
from gnorm_kernels.heads.units import UNITS, unit_of
from gnorm_kernels.scoring.baselines import attention_entropy, random_scores, taylor_importance
from gnorm_kernels.scoring.gnorm import gnorm_scores

__all__ = ["METHODS", "SCORERS", "Method", "Scorer", "get_method", "get_scorer"]


class Scorer(Protocol):
    """What every scorer is: ``scorer(model, batches, **options) -> [num_layers, num_heads]``
    (``[num_layers, num_kv_heads]`` when called with ``unit="kv_group"``)."""

    def __call__(self, model: nn.Module, batches: Sequence[Batch], **options: Any) -> torch.Tensor: ...


SCORERS: dict[str, Scorer] = {
    "gnorm": gnorm_scores,
    "entropy": attention_entropy,
    "taylor": taylor_importance,
    "random": random_scores,
}


def get_scorer(name: str, *, unit: str | None = None) -> Scorer:
    """The scorer registered under `name` (see `SCORERS`); given a `unit` ("head" or "kv_group"),
    the scorer with that unit fixed."""
    try:
        scorer = SCORERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown scorer {name!r}; expected one of {sorted(SCORERS)}") from None
    if unit is None:
        return scorer
    return functools.partial(scorer, unit=unit_of(unit).name)


@dataclass(frozen=True)
class Method:
    """A pruning method: which scorer, which end of its ranking goes first, static or greedy."""

    name: str
    scorer: str
    prune_first: Literal["lowest", "highest"]
    greedy: bool
    description: str
    seeded: bool = False  # a chance baseline, run with several seeds
    units: tuple[str, ...] = UNITS  # what it can rank: query heads, key/value groups

    def check_unit(self, unit: str) -> str:
        """`unit`'s name, checked to be a unit this method ranks."""
        unit = unit_of(unit).name
        if unit not in self.units:
            raise ValueError(f"method {self.name!r} ranks {' or '.join(self.units)} units, not {unit!r}")
        return unit


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("greedy-gnorm", "gnorm", "lowest", True,
               "Greedy-Gnorm: prune the lowest G_Q*G_K*G_V head, re-score the pruned model, repeat"),
        Method("static-gnorm", "gnorm", "lowest", False,
               "Gnorm scored once on the full model, pruned lowest first"),
        Method("inverse-gnorm", "gnorm", "highest", True,
               "sanity check: Greedy-Gnorm pruning the highest-scoring head first"),
        Method("entropy", "entropy", "highest", False,
               "attention entropy (AE), scored once, highest-entropy head pruned first"),
        Method("inverse-entropy", "entropy", "lowest", False,
               "attention entropy, scored once, lowest-entropy head pruned first"),
        Method("taylor", "taylor", "lowest", False,
               "head-gate Taylor importance (Michel et al. 2019), scored once, least important first"),
        Method("random", "random", "lowest", False,
               "a random order (several seeds: report the median and spread)", seeded=True),
    )
}


def get_method(name: str) -> Method:
    """The method registered under `name` (see `METHODS`)."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}") from None
