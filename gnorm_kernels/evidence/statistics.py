"""The numerics of the paired bootstrap: resample counts, a metric on every resample, curves read linearly.

A bootstrap resample of n evaluation examples is a row of counts (how often each example is
drawn); a metric on a resample is then a weighted count, so B resamples of S steps are one
[B, n] x [n, S] matrix product. Reading a curve at a budget, or its mean over a range, is linear
in the curve's values: `point_weights` and `range_weights` give the weight vectors, so the same
product serves the recorded curve and every resampled one. `gnorm_kernels.evidence.comparison` uses these.
"""

from __future__ import annotations

import numpy as np

from gnorm_kernels.evaluate import confusion_metrics

__all__ = ["resample_counts", "metric_on_resamples", "point_weights", "range_weights"]

_EPS = 1e-9


def resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[resamples, n] how often each of n examples is drawn in each bootstrap resample of size n."""
    if n < 1 or resamples < 1:
        raise ValueError(f"need at least one example and one resample, got n={n}, resamples={resamples}")
    draws = rng.integers(0, n, size=(resamples, n))
    flat = (draws + n * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def metric_on_resamples(counts: np.ndarray, predictions: np.ndarray, golds: np.ndarray, metric: str) -> np.ndarray:
    """[resamples, steps] `metric` of each step's predictions ([steps, n]) against `golds` [n] on
    each resample (`counts` [resamples, n]); counts of all ones give the metric on the data,
    as `gnorm_kernels.evaluate.evaluate` computes it. For "perplexity" `predictions` are each
    step's summed NLL per evaluation window and `golds` the windows' token counts: a resample's
    perplexity is exp(its NLL sum / its token sum), token-weighted like the metric itself."""
    n = golds.shape[0]
    if metric == "accuracy":
        return counts @ (predictions == golds).T.astype(np.float64) / n
    if metric == "perplexity":
        tokens = counts @ golds.astype(np.float64)
        return np.exp(counts @ predictions.T.astype(np.float64) / np.maximum(tokens, 1)[:, None])
    if metric not in ("f1", "matthews"):
        raise ValueError(f"the bootstrap handles accuracy, f1, matthews and perplexity, got {metric!r}")
    k = int(max(predictions.max(), golds.max())) + 1
    confusion = np.stack([np.stack([counts @ ((golds == g)[None, :] & (predictions == p)).T.astype(np.float64)
                                    for p in range(k)], -1) for g in range(k)], -2)  # [B, S, gold, pred]
    if metric == "f1" and k > 2:
        raise ValueError(f"f1 needs a binary task; these predictions have {k} classes")
    if k == 1:  # one class seen: pad so F1 has a positive class and MCC is its undefined 0
        confusion = np.pad(confusion, [(0, 0)] * (confusion.ndim - 2) + [(0, 1), (0, 1)])
    return confusion_metrics(confusion)[metric]


def point_weights(xs: np.ndarray, fraction: float) -> np.ndarray:
    """w with w @ ys == np.interp(fraction, xs, ys) (Trajectory.metric_at); NaN past the curve."""
    if len(xs) == 0 or fraction < 0 or fraction > xs[-1] + _EPS:
        return np.full(len(xs), np.nan)
    return np.array([np.interp(fraction, xs, unit) for unit in np.eye(len(xs))])


def range_weights(xs: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    """w with w @ ys == the mean of the piecewise-linear curve over [low, high] (None: the whole
    run, Trajectory.area_under_curve); NaN when the run does not reach `high`."""
    if len(xs) < 2 or xs[-1] <= 0:
        return np.full(len(xs), np.nan)
    low, high = (xs[0], xs[-1]) if low is None else (low, high)
    if high > xs[-1] + _EPS or high <= low:
        return np.full(len(xs), np.nan)
    knots = np.unique(np.concatenate([[low, min(high, xs[-1])], xs[(xs > low) & (xs < high)]]))
    at = np.stack([point_weights(xs, k) for k in knots])  # [knots, steps]
    area = ((knots[1:] - knots[:-1])[:, None] * (at[1:] + at[:-1]) / 2).sum(0)
    return area / (high - low)
