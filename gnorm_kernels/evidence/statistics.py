"""The numerics of the paired bootstrap: resample counts, a metric on every resample, curves read linearly.

A bootstrap resample of n evaluation examples is a row of counts (how often each example is
drawn); a metric on a resample is then a weighted count, so B resamples of S steps are one
[B, n] x [n, S] matrix product. Reading a curve at a budget, or its mean over a range, is linear
in the curve's values: `point_weights` and `range_weights` give the weight vectors, so the same
product serves the recorded curve and every resampled one. `gnorm_kernels.evidence.comparison` uses these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any, Mapping, Sequence

import numpy as np

from gnorm_kernels.evaluation import confusion_metrics

__all__ = [
    "resample_counts", "metric_on_resamples", "point_weights", "range_weights", "resample_runs", "wilson_interval",
    "percentile_interval", "bootstrap_p_value", "Estimate", "with_wilson", "Verdict", "format_interval",
    "holm_verdicts", "Evidence", "compare_means", "perplexity_evidence",
]

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
    as `gnorm_kernels.evaluation.evaluate` computes it. For "perplexity" `predictions` are each
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


# --------------------------------------------------------------------------- seeds, proportions, p-values


def resample_runs(groups: Sequence[int], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[resamples, runs] the run each position stands for in each resample: runs are drawn with
    replacement among the runs of their own group (a calibration draw), so a method's seeds are
    resampled and its draws kept. A group of one run always draws itself."""
    groups = np.asarray(groups)
    picks = np.empty((resamples, len(groups)), dtype=np.int64)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        picks[:, members] = members[rng.integers(0, len(members), size=(resamples, len(members)))]
    return picks


def wilson_interval(successes: float | np.ndarray, n: int, level: float = 0.95) -> tuple[Any, Any]:
    """The Wilson score interval of a proportion `successes` / `n` (arrays work elementwise).

    Unlike p ± z·sqrt(p(1-p)/n), which is [1, 1] at 100% and [0, 0] at 0%, it keeps a width
    set by n at the ends (0 of 50: [0, 0.071]) and never leaves [0, 1]."""
    if n < 1 or not 0 < level < 1:
        raise ValueError(f"need n >= 1 and a level in (0, 1), got n={n}, level={level}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = np.asarray(successes, dtype=float) / n
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    return np.clip(centre - half, 0.0, 1.0)[()], np.clip(centre + half, 0.0, 1.0)[()]


def percentile_interval(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The central `level` of bootstrap `samples` along axis 0, each bound an order statistic (no
    interpolation): a bound lies beyond r exactly when fewer than (1 - level) / 2 of the samples
    lie at or beyond r on its side, the same count `bootstrap_p_value` reads."""
    samples = np.sort(np.asarray(samples, dtype=float), axis=0)
    index = max(math.ceil(len(samples) * (1 - level) / 2) - 1, 0)
    return samples[index], samples[len(samples) - 1 - index]


def bootstrap_p_value(samples: np.ndarray, reference: float = 0.0) -> np.ndarray:
    """Two-sided bootstrap p-value of "the quantity equals `reference`" along axis 0: twice the
    smaller share of resamples at or beyond `reference` on either side (1 when all equal it)."""
    below = (samples <= reference).mean(0)
    above = (samples >= reference).mean(0)
    return np.minimum(1.0, 2 * np.minimum(below, above))


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Estimate:
    """A number with its intervals: `low`..`high` from the bootstrap over evaluation examples,
    `calib_low`..`calib_high` over calibration draws (None with one draw)."""

    value: float
    low: float
    high: float
    calib_low: float | None = None
    calib_high: float | None = None

    @property
    def resolved(self) -> bool:
        """Whether every interval excludes 0 (for a difference: its sign is settled)."""
        return _excludes(self.low, self.high, 0.0) and _excludes(self.calib_low, self.calib_high, 0.0)


def _excludes(low: float | None, high: float | None, reference: float) -> bool:
    return low is None or low > reference or high < reference  # NaN bounds compare False: not resolved


def with_wilson(estimate: Estimate, n: int, level: float) -> Estimate:
    """`estimate` of a proportion on `n` examples with its interval widened to hold the Wilson
    interval of its value: a bootstrap at 0% or 100% has nothing to resample and reads [1, 1]."""
    if estimate.value != estimate.value:
        return estimate
    low, high = wilson_interval(min(max(estimate.value, 0.0), 1.0) * n, n, level)
    return replace(estimate, low=min(estimate.low, float(low)), high=max(estimate.high, float(high)))


@dataclass(frozen=True)
class Verdict:
    """One comparison of a family, decided with Holm's step-down correction.

    `low`..`high` is the bootstrap interval at `level`, the level Holm's procedure tested this
    comparison at (1 - alpha / (comparisons - rank + 1), or the level it stopped at for those it
    did not reach), so it excludes `reference` exactly when the procedure rejects "equals
    `reference`" (`p_adjusted` < alpha, up to ties at the boundary); `calib_low`..`calib_high`
    (calibration draws) must exclude it too for the comparison to be `resolved`."""

    value: float
    low: float
    high: float
    level: float
    p_value: float
    p_adjusted: float
    comparisons: int
    alpha: float = 0.05
    reference: float = 0.0
    calib_low: float | None = None
    calib_high: float | None = None
    correction: str = "Holm"

    @property
    def resolved(self) -> bool:
        """Whether Holm's procedure rejects "equals `reference`" (the interval excludes it) and the
        calibration spread excludes it too."""
        return _excludes(self.low, self.high, self.reference) and _excludes(self.calib_low, self.calib_high,
                                                                            self.reference)

    def negated(self) -> "Verdict":
        """The same comparison the other way round (other minus method)."""
        flip = {"calib_low": None if self.calib_high is None else -self.calib_high,
                "calib_high": None if self.calib_low is None else -self.calib_low}
        return replace(self, value=-self.value, low=-self.high, high=-self.low, reference=-self.reference, **flip)

    def text(self, digits: int = 3, signed: bool = True) -> str:
        """"+0.0123 [+0.0041, +0.0210] resolved (Holm, 1 of 12)": the numbers at a precision that
        shows where the interval lies against the reference, and the verdict with its family."""
        shown = format_interval(self.value, self.low, self.high, reference=self.reference, digits=digits,
                                signed=signed)
        if self.calib_low is not None:
            shown += " calib " + format_interval(self.value, self.calib_low, self.calib_high, reference=self.reference,
                                                 digits=digits, signed=signed).split(" ", 1)[1]
        word = "resolved" if self.resolved else "not resolved"
        return f"{shown} {word} ({self.correction} over {self.comparisons})"


def format_interval(value: float, low: float, high: float, *, reference: float = 0.0, digits: int = 3,
                    signed: bool = False, max_digits: int = 8) -> str:
    """"value [low, high]" with at least `digits` decimals, all three alike, and as many more as
    it takes for each printed bound to sit on the same side of `reference` as the bound itself (a
    bound within 1e-9 of it prints as it). So "[0.000, 0.014]" can only mean a lower bound of exactly 0 (an
    interval that holds 0), and a lower bound of 0.0004 prints "0.0004"."""
    numbers = [value, low, high]
    if any(x != x for x in numbers):
        return "n/a" if value != value else f"{value:{'+' if signed else ''}.{digits}f} [n/a]"
    def side(x: float) -> int:
        return 0 if abs(x - reference) <= 1e-9 else (1 if x > reference else -1)

    numbers = [reference if side(x) == 0 else x for x in numbers]
    for d in range(digits, max_digits + 1):
        texts = [f"{x + 0.0:{'+' if signed else ''}.{d}f}" for x in numbers]  # + 0.0: no "-0.000"
        if all(side(float(t)) == side(x) for t, x in zip(texts[1:], numbers[1:])) or d == max_digits:
            return f"{texts[0]} [{texts[1]}, {texts[2]}]"
    raise AssertionError("unreachable")


@dataclass
class Evidence:
    """Estimates with intervals for each method, and for the difference of every pair.

    `estimates[method][key]` and `differences[(method, other)][key]` (method minus other) are
    `Estimate`s; keys are "unpruned", the budgets' "at_X%" and the ranges' "auc..." columns.
    `bands[method]` is (fraction pruned, lower, upper): the pointwise bootstrap interval of the
    method's curve, for plots. `resampled[method]` ([resamples, keys]) is the method's value on
    every resample, from which `verdicts` decides a family of differences. Built by
    `gnorm_kernels.evidence.comparison.bootstrap_evidence`."""

    metric: str
    methods: list[str]
    reference: str
    keys: list[str]
    estimates: dict[str, dict[str, Estimate]]
    differences: dict[tuple[str, str], dict[str, Estimate]]
    bands: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    resamples: int
    level: float
    examples: int
    draws: int
    budgets: list[float] = field(default_factory=list)
    resampled: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # method: [resamples, keys]

    def difference(self, method: str, other: str | None = None) -> dict[str, Estimate]:
        """`method` minus `other` (default: the reference) for every key."""
        other = self.reference if other is None else other
        for name in (method, other):
            if name not in self.methods:
                raise KeyError(f"unknown method {name!r}; this comparison has {self.methods}")
        return self.differences[(method, other)]

    def verdicts(self, pairs: Sequence[tuple[str, str]] | None = None) -> dict[tuple[str, str], dict[str, Verdict]]:
        """Each pair's difference (method minus other) on every key but "unpruned", decided as one
        family under Holm's correction at 1 - `level` (`gnorm_kernels.evidence.statistics.holm_verdicts`).
        Default pairs: every method against the reference, the comparisons of one table."""
        pairs = [(m, self.reference) for m in self.methods if m != self.reference] if pairs is None else list(pairs)
        cells = [(a, b, self.keys.index(k), k) for a, b in pairs for k in self.keys[1:]]
        found = holm_verdicts([self.differences[(a, b)][k].value for a, b, _, k in cells],
                              [self.resampled[a][:, j] - self.resampled[b][:, j] for a, b, j, _ in cells],
                              alpha=1 - self.level,
                              calib=[(self.differences[(a, b)][k].calib_low, self.differences[(a, b)][k].calib_high)
                                     for a, b, _, k in cells])
        out: dict[tuple[str, str], dict[str, Verdict]] = {pair: {} for pair in pairs}
        for (a, b, _, k), v in zip(cells, found):
            out[(a, b)][k] = v
        return out


def holm_verdicts(values: Sequence[float], samples: Sequence[np.ndarray], *, alpha: float = 0.05,
                  reference: float = 0.0, calib: Sequence[tuple[float | None, float | None]] | None = None,
                  ) -> list[Verdict]:
    """Verdicts on a family of comparisons, each a point `values[i]` with its bootstrap
    `samples[i]` ([resamples]), under Holm's step-down correction at family-wise error `alpha`.

    Sorted by bootstrap p-value, the k-th smallest is tested at alpha / (m - k + 1) and the
    procedure stops at the first that fails; those after it are not resolved. NaN comparisons
    (a budget a run never reaches) do not count in m and stay unresolved."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if len(values) != len(samples):
        raise ValueError(f"expected one sample array per value, got {len(values)} values and {len(samples)}")
    calib = list(calib) if calib is not None else [(None, None)] * len(values)
    live = [i for i, (v, s) in enumerate(zip(values, samples)) if v == v and not np.isnan(s).any()]
    m = len(live)
    p = {i: float(bootstrap_p_value(np.asarray(samples[i]), reference)) for i in live}
    order = sorted(live, key=lambda i: p[i])
    out: dict[int, Verdict] = {}
    adjusted, stop = 0.0, None
    for rank, i in enumerate(order):
        adjusted = max(adjusted, min(1.0, (m - rank) * p[i]))  # Holm's adjusted p-value, for reports
        level = stop if stop is not None else 1 - alpha / (m - rank)
        low, high = percentile_interval(np.asarray(samples[i]), level)
        if stop is None and not _excludes(float(low), float(high), reference):
            stop = level  # the first failure: it and every later one are shown at its level
        out[i] = Verdict(float(values[i]), float(low), float(high), level, p[i], adjusted, m, alpha, reference,
                         *calib[i])
    nan = float("nan")
    return [out.get(i) or Verdict(float(values[i]), nan, nan, nan, nan, nan, m, alpha, reference, *calib[i])
            for i in range(len(values))]


def compare_means(values: Mapping[str, np.ndarray], pairs: Sequence[tuple[str, str]], *, resamples: int = 2000,
                  level: float = 0.95, seed: int = 0) -> tuple[dict[str, Estimate], dict[tuple[str, str], Verdict]]:
    """Means of per-example values with paired-bootstrap intervals, and the differences of `pairs`
    (a minus b) decided as one family under Holm's correction (`holm_verdicts`).

    Every entry of `values` holds the same n examples: [n], or [runs, n] for a method run with
    several seeds (its mean is over runs and examples). All entries share each resample of the
    examples, so differences are paired; a [runs, n] entry also has its runs resampled
    (`resample_runs`), which puts the spread over seeds inside its intervals."""
    arrays = {k: np.atleast_2d(np.asarray(v, dtype=np.float64)) for k, v in values.items()}
    sizes = {a.shape[1] for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"every entry must hold the same examples, got sizes {sorted(sizes)}")
    unknown = sorted({k for pair in pairs for k in pair} - set(arrays))
    if unknown:
        raise KeyError(f"pairs name {unknown}, which are not in values ({sorted(arrays)})")
    rng = np.random.default_rng(seed)
    n = sizes.pop()
    counts = resample_counts(n, resamples, rng)  # shared by every entry: the pairing
    sampled = {}
    for key, runs in arrays.items():
        picks = resample_runs([0] * len(runs), resamples, rng)  # [resamples, runs]
        per_run = counts @ runs.T / n  # [resamples, runs]: each run's mean on each resample
        sampled[key] = np.take_along_axis(per_run, picks, axis=1).mean(1)
    estimates = {}
    for key, runs in arrays.items():
        low, high = percentile_interval(sampled[key], level)
        estimates[key] = Estimate(float(runs.mean()), float(low), float(high))
    found = holm_verdicts([estimates[a].value - estimates[b].value for a, b in pairs],
                          [sampled[a] - sampled[b] for a, b in pairs], alpha=1 - level)
    return estimates, dict(zip(pairs, found))


def perplexity_evidence(
    windows: Mapping[str, tuple[Sequence[float], Sequence[int]]],
    pairs: Sequence[tuple[str, str]],
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[dict[str, Estimate], dict[tuple[str, str], Verdict]]:
    """Perplexities of fixed models on the same evaluation windows, with intervals, and the
    differences of `pairs` (a minus b) decided as one family under Holm's correction.

    `windows[name]` is (each window's summed next-token NLL, its token count), as
    ``evaluate(..., per_example=True)`` gives them (``example_nll``, ``example_tokens``). One paired
    bootstrap over windows serves every model (the same resampled windows for all), so a
    difference's interval reflects how the models differ window by window."""
    if not windows:
        raise ValueError("no models to compare: expected {name: (window NLL sums, window token counts)}")
    names = list(windows)
    tokens = np.asarray(windows[names[0]][1], dtype=np.float64)
    nll = {}
    for name in names:
        values, counts = (np.asarray(x, dtype=np.float64) for x in windows[name])
        if counts.shape != tokens.shape or (counts != tokens).any() or values.shape != tokens.shape:
            raise ValueError(f"{name!r} was evaluated on other windows than {names[0]!r}: a paired bootstrap needs "
                             f"the same windows ({len(tokens)} with the same token counts) for every model")
        nll[name] = values
    unknown = sorted({n for pair in pairs for n in pair} - set(names))
    if unknown:
        raise ValueError(f"pairs name {unknown}, which are not among the models {names}")
    counts = resample_counts(len(tokens), resamples, np.random.default_rng(seed))
    point = {n: float(metric_on_resamples(np.ones((1, len(tokens))), nll[n][None, :], tokens, "perplexity")[0, 0])
             for n in names}
    boot = {n: metric_on_resamples(counts, nll[n][None, :], tokens, "perplexity")[:, 0] for n in names}
    estimates = {n: Estimate(point[n], *(float(b) for b in percentile_interval(boot[n], level))) for n in names}
    verdicts = holm_verdicts([point[a] - point[b] for a, b in pairs], [boot[a] - boot[b] for a, b in pairs],
                             alpha=1 - level)
    return estimates, dict(zip([tuple(p) for p in pairs], verdicts))
