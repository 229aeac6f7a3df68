"""How head scores rank the heads: rank correlations with intervals, and pruning positions.

Only the order of a score grid matters for pruning, so scores are compared by Spearman's rank
correlation over the heads present in both grids (NaN: pruned). A correlation over a few dozen
heads is itself uncertain: `rank_correlations` resamples the heads (one set of resamples for
every pair) and decides a family of correlations against 0 under Holm's correction, as
`holm_verdicts` does for accuracy differences. Ties (heads with equal scores, e.g. ablation
drops of exactly 0) get their average rank.
"""

from __future__ import annotations

from typing import Any, Hashable, Iterable, Literal, Mapping, TypeVar

import numpy as np

from gnorm_kernels.evidence.statistics import Verdict, holm_verdicts

__all__ = ["average_ranks", "spearman", "rank_correlations", "correlation_sentence", "prune_positions", "tied_heads"]

Key = TypeVar("Key", bound=Hashable)


def _flat(grid: Any) -> np.ndarray:
    if hasattr(grid, "detach"):
        grid = grid.detach().cpu().double().numpy()
    return np.asarray(grid, dtype=np.float64).reshape(-1)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks (0-based) along the last axis, tied values sharing their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, axis=-1, kind="stable")
    ranks = np.empty_like(values)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(values.shape[-1], dtype=np.float64), values.shape), -1)
    flat_values, flat_ranks = values.reshape(-1, values.shape[-1]), ranks.reshape(-1, values.shape[-1])
    for row in range(flat_values.shape[0]):
        _, inverse, counts = np.unique(flat_values[row], return_inverse=True, return_counts=True)
        if (counts > 1).any():
            sums = np.bincount(inverse, weights=flat_ranks[row])
            flat_ranks[row] = (sums / counts)[inverse]
    return flat_ranks.reshape(values.shape)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = _flat(a), _flat(b)
    if x.shape != y.shape:
        raise ValueError(f"the two grids must have the same heads, got {x.size} and {y.size} values")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def spearman(a: Any, b: Any) -> float:
    """Spearman's rank correlation of two [L, H] grids over the heads finite in both (NaN if
    either grid is constant there)."""
    x, y = _pair(a, b)
    if x.size < 2:
        return float("nan")
    return float(_pearson_rows(average_ranks(x), average_ranks(y)))


def rank_correlations(pairs: Mapping[Key, tuple[Any, Any]], *, resamples: int = 2000, level: float = 0.95,
                      seed: int = 0) -> dict[Key, Verdict]:
    """Spearman's rho for each named pair of grids, with a bootstrap over heads (the same head
    resamples for every pair of the same heads) and Holm's correction over the family: a
    `Verdict` whose interval excludes 0 says the sign of the correlation is settled."""
    rng = np.random.default_rng(seed)
    draws: dict[int, np.ndarray] = {}
    values, samples = [], []
    for a, b in pairs.values():
        x, y = _pair(a, b)
        n = x.size
        if n < 3:
            raise ValueError(f"a rank correlation needs at least 3 heads scored by both grids, got {n}")
        if n not in draws:
            draws[n] = rng.integers(0, n, size=(resamples, n))
        idx = draws[n]
        values.append(spearman(a, b))
        samples.append(_pearson_rows(average_ranks(x[idx]), average_ranks(y[idx])))
    # a resample where one side is constant has no correlation: count it as 0 (no evidence of a sign)
    samples = [np.nan_to_num(s, nan=0.0) for s in samples]
    return dict(zip(pairs, holm_verdicts(values, samples, alpha=1 - level)))


def correlation_sentence(verdict: Verdict) -> str:
    """"ρ = +0.86 [+0.70, +0.94] resolved (Holm over 3): positive" or "...: sign not resolved"."""
    if verdict.value != verdict.value:
        return "ρ undefined (a grid is constant over these heads)"
    sign = ("positive" if verdict.value > 0 else "negative") if verdict.resolved else "sign not resolved"
    return f"ρ = {verdict.text(digits=2)}: {sign}"


def prune_positions(scores: Any, heads: Iterable[tuple[int, int]], *,
                    prune_first: Literal["lowest", "highest"] = "lowest") -> dict[tuple[int, int], int]:
    """Where each of `heads` comes in the pruning order of `scores` (1 = pruned first; ties broken
    by (layer, head), as the engine breaks them). Heads with NaN scores are not in the order."""
    if prune_first not in ("lowest", "highest"):
        raise ValueError(f"prune_first must be 'lowest' or 'highest', got {prune_first!r}")
    grid = _flat(scores).reshape(np.shape(scores.detach().cpu() if hasattr(scores, "detach") else scores))
    sign = 1.0 if prune_first == "lowest" else -1.0
    present = [(l, h) for l in range(grid.shape[0]) for h in range(grid.shape[1]) if np.isfinite(grid[l, h])]
    order = sorted(present, key=lambda lh: (sign * grid[lh], lh))
    where = {lh: i + 1 for i, lh in enumerate(order)}
    missing = [tuple(h) for h in heads if tuple(h) not in where]
    if missing:
        raise KeyError(f"heads {missing} have no score in this grid")
    return {tuple(h): where[tuple(h)] for h in heads}


def tied_heads(grid: Any) -> int:
    """How many finite entries of `grid` share their value with another one."""
    x = _flat(grid)
    x = x[np.isfinite(x)]
    _, counts = np.unique(x, return_counts=True)
    return int(counts[counts > 1].sum())

