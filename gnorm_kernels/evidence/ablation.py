"""Masking studies with their evidence: which heads, pairs of heads or layers a model needs.

A study masks sets of heads (`mask_heads`), keeps each test example's verdict (right or wrong)
under every mask, and compares those verdicts with the unmasked model's on the same examples.
Every quantity it reports is a fixed linear combination of accuracies (a drop, the interaction of
a pair, the gap between joint masking and the sum of single drops), so one paired bootstrap over
the examples (`contrast_verdicts`: every mask sees the same resample) gives each its interval,
and each family of comparisons is decided together under Holm's correction (`holm_verdicts`).
Accuracies alone get Wilson intervals (`wilson_interval`), which stay meaningful at 0% and 100%.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Mapping, Sequence, TypeVar

import numpy as np
import torch

from gnorm_kernels.evaluation import correct_per_example
from gnorm_kernels.evidence.sentences import proportion_text
from gnorm_kernels.evidence.statistics import Verdict, holm_verdicts, resample_counts
from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.layout import Head
from gnorm_kernels.heads.masking import mask_heads

__all__ = ["contrast_verdicts", "correct_under_mask", "accuracy_text", "MaskingStudy", "change_sentence",
           "drop_grid", "ablation_counts"]

Label = TypeVar("Label", bound=Hashable)


def contrast_verdicts(outcomes: Mapping[Hashable, Any], contrasts: Mapping[Label, Mapping[Hashable, float]], *,
                      resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict[Label, Verdict]:
    """Each contrast sum_name weight * mean(outcomes[name]), decided as one family under Holm's
    correction at 1 - `level`. `outcomes` ({name: [n]}) are per-example values (1/0: right/wrong)
    on the same n examples; one paired bootstrap over the examples serves every name, so a
    difference of two models reflects how they differ example by example."""
    names = list(outcomes)
    stack = np.stack([np.asarray(outcomes[k], dtype=np.float64) for k in names]) if names else np.zeros((0, 0))
    if stack.ndim != 2 or stack.shape[1] < 1:
        raise ValueError(f"expected one [n] array per name on the same n >= 1 examples, got shape {list(stack.shape)}")
    unknown = sorted({str(k) for c in contrasts.values() for k in c} - {str(k) for k in names})
    if unknown:
        raise KeyError(f"contrasts name {unknown}, which are not among the outcomes {[str(k) for k in names]}")
    index = {k: i for i, k in enumerate(names)}
    weights = np.zeros((len(contrasts), len(names)))
    for row, contrast in enumerate(contrasts.values()):
        for name, w in contrast.items():
            weights[row, index[name]] += w
    n = stack.shape[1]
    means = resample_counts(n, resamples, np.random.default_rng(seed)) @ stack.T / n  # [resamples, names]
    samples = means @ weights.T  # [resamples, contrasts]
    values = weights @ stack.sum(1) / n  # sums first: 0/1 outcomes give exact counts, the same in any order
    found = holm_verdicts(list(values), [samples[:, c] for c in range(len(values))], alpha=1 - level)
    return dict(zip(contrasts, found))


def correct_under_mask(model: torch.nn.Module, batches: Sequence[Mapping[str, torch.Tensor]],
                       heads: Iterable[Head] = ()) -> np.ndarray:
    """Bool [n]: whether `model`, with `heads` masked, classifies each example of `batches` right
    (in batch order, the same on every call)."""
    layout = head_layout(model)
    gates = torch.ones(layout.shape)
    for layer, head in heads:
        gates[layer, head] = 0.0
    with mask_heads(model, gates):
        return correct_per_example(model, batches).astype(bool)


def accuracy_text(correct: Any, *, level: float = 0.95, digits: int = 3) -> str:
    """"0.941 [0.930, 0.951] (Wilson 95%, n = 2000)": an accuracy with its Wilson interval."""
    correct = np.asarray(correct, dtype=bool)
    return proportion_text(int(correct.sum()), len(correct), level=level, digits=digits)


def change_sentence(label: str, verdict: Verdict, *, digits: int = 3) -> str:
    """What masking `label` did, from its drop (accuracy with every head minus with `label`
    masked): worse, better, no verdict changed, or not resolved; with the interval and family."""
    shown = verdict.text(digits=digits)
    if verdict.value != verdict.value:
        return f"{label}: not measured."
    if verdict.low == verdict.high == verdict.value == 0:
        return f"{label}: changes no test verdict (drop exactly 0)."
    if not verdict.resolved:
        return f"{label}: drop {shown}; not told apart from no change."
    word = "worse" if verdict.value > 0 else "better"
    return f"{label}: drop {shown}; the model is **{word}** with it masked."


@dataclass
class MaskingStudy:
    """The verdicts of `model` on `batches` under masks, cached per set of masked heads, and the
    contrasts between them (each method one Holm family)."""

    model: torch.nn.Module
    batches: Sequence[Mapping[str, torch.Tensor]]
    resamples: int = 2000
    level: float = 0.95
    seed: int = 0
    runs: dict[frozenset, np.ndarray] = field(default_factory=dict, repr=False)

    def correct(self, heads: Iterable[Head] = ()) -> np.ndarray:
        """Bool [n] verdicts with `heads` masked (evaluated once per set)."""
        key = frozenset(tuple(h) for h in heads)
        if key not in self.runs:
            self.runs[key] = correct_under_mask(self.model, self.batches, key)
        return self.runs[key]

    def accuracy(self, heads: Iterable[Head] = ()) -> float:
        return float(self.correct(heads).mean())

    def _verdicts(self, contrasts: Mapping[Label, Mapping[frozenset, float]]) -> dict[Label, Verdict]:
        needed = sorted({k for c in contrasts.values() for k in c}, key=lambda k: (len(k), sorted(k)))
        outcomes = {k: self.correct(k) for k in needed}  # a fixed order: the same numbers on every run
        return contrast_verdicts(outcomes, contrasts, resamples=self.resamples, level=self.level, seed=self.seed)

    def drops(self, groups: Mapping[Label, Iterable[Head]]) -> dict[Label, Verdict]:
        """Accuracy with every head minus with each group masked (positive: worse without it)."""
        full = frozenset()
        return self._verdicts({name: {full: 1.0, frozenset(map(tuple, g)): -1.0} for name, g in groups.items()})

    def single_drops(self, heads: Iterable[Head]) -> dict[Head, Verdict]:
        """`drops` of each head alone, one family."""
        return self.drops({tuple(h): [tuple(h)] for h in heads})

    def joint_gaps(self, groups: Mapping[Label, Sequence[Head]]) -> dict[Label, Verdict]:
        """For each group: the additive prediction (accuracy with every head minus the sum of the
        group's single drops) minus the accuracy measured with the group masked together. For a
        pair it is the pair's interaction (joint drop minus the two single drops). Positive: the
        heads cost more together than their single drops add up to; negative: less. One family."""
        full = frozenset()
        contrasts: dict[Label, dict[frozenset, float]] = {}
        for name, heads in groups.items():
            heads = [tuple(h) for h in heads]
            c: dict[frozenset, float] = {full: 1.0 - len(heads)}
            for h in heads:
                c[frozenset([h])] = c.get(frozenset([h]), 0.0) + 1.0
            c[frozenset(heads)] = c.get(frozenset(heads), 0.0) - 1.0
            contrasts[name] = c
        return self._verdicts(contrasts)


def drop_grid(verdicts: Mapping[Head, Verdict], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """([L, H] drops, [L, H] resolved) from single-head `verdicts`; NaN and False where absent."""
    drops, resolved = np.full(shape, np.nan), np.zeros(shape, dtype=bool)
    for (layer, head), v in verdicts.items():
        drops[layer, head], resolved[layer, head] = v.value, v.resolved
    return drops, resolved


def ablation_counts(verdicts: Mapping[Any, Verdict]) -> dict[str, int]:
    """How many of a family are resolved drops, resolved gains, unresolved, and how many change
    no verdict at all (a drop of exactly 0 on every resample: tied in any ranking by drop)."""
    counts = {"comparisons": len(verdicts), "worse": 0, "better": 0, "not resolved": 0, "no verdict changed": 0}
    for v in verdicts.values():
        if v.low == v.high == v.value == 0:
            counts["no verdict changed"] += 1
        if v.resolved:
            counts["worse" if v.value > 0 else "better"] += 1
        else:
            counts["not resolved"] += 1
    return counts
