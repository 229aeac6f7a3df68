"""How sure a comparison of pruning methods is: `compare` runs them, `bootstrap_evidence` weighs them.

Every number of a comparison (the metric at 25/50/75% of heads pruned, the area under the curve
over the whole run and over 0-50% and 0-75%) comes from a finite evaluation set and from one
calibration sample, so each gets a 95% interval:

* a paired bootstrap over the evaluation examples: every resample draws the same examples
  (with replacement) for every method and every step, so a method's curve, and the difference
  between two methods' curves, are recomputed on the same resampled set. Seeded with ``seed``,
  1000 resamples by default, computed as one matrix product per run (numpy). A method run with
  several seeds (random) is a sample of its seed distribution, and the claim "beats random" is
  about that distribution, not about the seeds drawn: each resample also redraws the method's
  runs with replacement (within each calibration draw: a two-stage bootstrap, seeds then
  examples), so its interval holds the seed-to-seed spread; the examples stay paired across
  methods, the seeds are independent between them. With few seeds this still understates that
  spread (2 seeds give 3 distinct medians): run more seeds for a tighter claim. Accuracy at a
  point also gets at least its Wilson interval (`with_wilson`), which keeps a width at 100%;
* with several disjoint calibration samples (``calib_draws``), the spread of each number over
  them (the central `level` of the per-draw values; with a few draws, about their min and max).
  A difference is then resolved only if this interval excludes 0 too.

A table's differences (every method against the reference, every key) are one family of tests:
`Evidence.verdicts` decides them with Holm's step-down correction at 1 - `level`, and shows each
interval at the level its test used, so a difference is *resolved* exactly when the interval
printed beside it excludes 0 (and the calibration spread does too).

Points along a curve are read as `Trajectory.metric_at` reads them (linear between evaluated
steps, NaN past the end of a run); the area over a sub-range is the integral of the same
piecewise-linear curve divided by the width of the range, and over the whole run it is
`Trajectory.area_under_curve`. A method run several times (random seeds, calibration draws) is
summarised, on the data and on every resample alike, by the median over its runs, as
`gnorm_kernels.evidence.report.comparison_table` does.

The bootstrap needs each evaluated step's per-example predictions: `compare` runs the methods
with ``per_example=True``; any trajectories that carry them can go to `bootstrap_evidence`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Sequence

import numpy as np

from gnorm_kernels.data.tasks import LOG_METRICS, auc_values
from gnorm_kernels.engine.trajectory import Trajectory, check_ratio
from gnorm_kernels.evidence.statistics import (
    Estimate,
    Evidence,
    Verdict,
    metric_on_resamples,
    point_weights,
    range_weights,
    resample_counts,
    resample_runs,
    with_wilson,
)

__all__ = [
    "DEFAULT_BUDGETS", "DEFAULT_RANGES", "RESAMPLES",
    "bootstrap_evidence", "budget_key", "range_key",
]

DEFAULT_BUDGETS = (0.25, 0.5, 0.75)
DEFAULT_RANGES = ((0.0, 0.5), (0.0, 0.75))
RESAMPLES = 1000
_EPS = 1e-9


def budget_key(fraction: float) -> str:
    """The table column of the metric at `fraction` of heads pruned ("at_25%"; 0 is "unpruned")."""
    return "unpruned" if fraction == 0 else f"at_{fraction * 100:g}%"


def range_key(low: float | None, high: float | None) -> str:
    """The column of the area under the curve over [low, high] ("auc_0-50%"; None: the whole run, "auc")."""
    return "auc" if low is None else f"auc_{low * 100:g}-{high * 100:g}%"


@dataclass
class _Run:
    """One trajectory's evaluated steps: positions, recorded metric, per-example predictions."""

    xs: np.ndarray
    ys: np.ndarray
    predictions: np.ndarray  # [steps, n]
    golds: np.ndarray  # [n]
    draw: int

    @classmethod
    def of(cls, t: Trajectory, metric: str) -> "_Run":
        xs, ys, preds, golds = [], [], [], None
        for n, s in zip(t.units_pruned, t.steps):
            if s.metrics is None or s.metrics.get(metric) is None:
                continue
            if s.predictions is None or s.golds is None:  # perplexity: each window's NLL sum and token count
                raise ValueError(f"{t.method!r} step {s.step} has no per-example predictions: run it with "
                                 "per_example=True (gnorm_kernels.evidence.comparison.compare does) to bootstrap it")
            if golds is not None and s.golds != golds:
                raise ValueError(f"{t.method!r} step {s.step} was evaluated on other examples than step 0")
            golds = s.golds
            xs.append(n / t.units_at_start)
            ys.append(float(s.metrics[metric]))
            preds.append(s.predictions)
        if golds is None:
            raise ValueError(f"{t.method!r} has no step evaluated with {metric!r}")
        return cls(np.asarray(xs), np.asarray(ys), np.asarray(preds), np.asarray(golds),
                   int(t.settings.get("calibration_draw", 0)))


def _interval(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail], axis=0)
    return low, high


def _estimates(point: np.ndarray, boot: np.ndarray, per_draw: np.ndarray, keys: list[str], level: float
               ) -> dict[str, Estimate]:
    low, high = _interval(boot, level)
    calib = _interval(per_draw, level) if len(per_draw) > 1 else None
    return {k: Estimate(float(point[i]), float(low[i]), float(high[i]),
                        None if calib is None else float(calib[0][i]),
                        None if calib is None else float(calib[1][i])) for i, k in enumerate(keys)}


def bootstrap_evidence(
    runs: Mapping[str, Sequence[Trajectory]],
    *,
    metric: str = "accuracy",
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    ranges: Sequence[tuple[float, float]] = DEFAULT_RANGES,
    reference: str | None = None,
    resamples: int = RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> Evidence:
    """Estimates and intervals for every method of `runs` ({method: trajectories}, all
    evaluated on the same examples, with per-example predictions) and for every pairwise
    difference; `reference` (default: the first method) is the one tables compare against.
    `budgets` are fractions of heads pruned, `ranges` (low, high) fractions for partial areas."""
    if not runs:
        raise ValueError("no runs to compare: expected {method: [trajectories]}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    methods = list(runs)
    reference = methods[0] if reference is None else reference
    if reference not in runs:
        raise ValueError(f"reference {reference!r} is not among the methods {methods}")
    budgets = [check_ratio(f) for f in dict.fromkeys([0.0, *budgets])]
    ranges = [(check_ratio(lo), check_ratio(hi)) for lo, hi in ranges]
    keys = [budget_key(f) for f in budgets] + [range_key(None, None)] + [range_key(lo, hi) for lo, hi in ranges]
    read = {m: [_Run.of(t, metric) for t in ts] for m, ts in runs.items()}
    if any(not rs for rs in read.values()):
        raise ValueError(f"every method needs at least one trajectory; got {[m for m, rs in read.items() if not rs]}")
    golds = next(iter(read.values()))[0].golds
    for m, rs in read.items():
        if any(r.golds.shape != golds.shape or (r.golds != golds).any() for r in rs):
            raise ValueError(f"{m!r} was evaluated on other examples: a paired bootstrap needs one evaluation set")
    rng = np.random.default_rng(seed)
    counts = resample_counts(len(golds), resamples, rng)

    point, boot, per_draw, bands = {}, {}, {}, {}
    for m, rs in read.items():
        points, boots, curves = [], [], []
        for r in rs:
            at = np.stack([point_weights(r.xs, f) for f in budgets], 1)
            over = np.stack([range_weights(r.xs, None, None)] + [range_weights(r.xs, lo, hi) for lo, hi in ranges], 1)
            missing = np.where(np.isnan(np.concatenate([at, over], 1)).any(0), np.nan, 0.0)  # keys past the run's end
            curves.append(metric_on_resamples(counts, r.predictions, r.golds, metric))  # [B, S]
            points.append(np.concatenate([r.ys @ np.nan_to_num(at), auc_values(metric, r.ys) @ np.nan_to_num(over)]) + missing)
            boots.append(np.concatenate([curves[-1] @ np.nan_to_num(at), auc_values(metric, curves[-1]) @ np.nan_to_num(over)],
                                        -1) + missing)
        picks = resample_runs([r.draw for r in rs], resamples, rng)  # seeds resampled too (module docstring)
        point[m], boot[m] = np.median(points, 0), np.median(np.stack(boots)[picks, np.arange(resamples)[:, None]], 1)
        draws = sorted({r.draw for r in rs})
        per_draw[m] = np.stack([np.median([p for p, r in zip(points, rs) if r.draw == d], 0) for d in draws])
        bands[m] = _band(rs, curves, level, picks)
    estimates = {m: _estimates(point[m], boot[m], per_draw[m], keys, level) for m in methods}
    if metric == "accuracy":  # a proportion at 0% or 100% keeps an interval as wide as n allows
        estimates = {m: {k: with_wilson(e, len(golds), level) if i < len(budgets) else e
                         for i, (k, e) in enumerate(est.items())} for m, est in estimates.items()}
    differences = {}
    for a in methods:
        for b in methods:
            # draw by draw; a method run on one draw only (random: it reads no calibration data) counts for each
            if len(per_draw[a]) != len(per_draw[b]) and 1 not in (len(per_draw[a]), len(per_draw[b])):
                raise ValueError(f"{a!r} and {b!r} ran on {len(per_draw[a])} and {len(per_draw[b])} calibration "
                                 "draws: expected the same draws (or one, for a method that reads none)")
            differences[(a, b)] = _estimates(point[a] - point[b], boot[a] - boot[b], per_draw[a] - per_draw[b],
                                             keys, level)
    return Evidence(metric=metric, methods=methods, reference=reference, keys=keys, estimates=estimates,
                    differences=differences, bands=bands, resamples=resamples, level=level, examples=len(golds),
                    draws=max(len(d) for d in per_draw.values()), budgets=budgets[1:], resampled=boot)


def _band(rs: list[_Run], curves: list[np.ndarray], level: float, picks: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pointwise interval of a method's (median) curve on the union of its evaluated positions,
    from each run's resampled curves [B, S] and the runs each resample draws (`picks` [B, runs])."""
    grid = np.unique(np.concatenate([r.xs for r in rs]))
    grid = grid[grid <= min(r.xs[-1] for r in rs) + _EPS]
    on_grid = [c @ np.stack([point_weights(r.xs, x) for x in grid], 1) for r, c in zip(rs, curves)]
    low, high = _interval(np.median(np.stack(on_grid)[picks, np.arange(len(picks))[:, None]], 1), level)
    return grid, low, high


# --------------------------------------------------------------------------- running a comparison


@dataclass
class Comparison:
    """What `compare` returns: every trajectory ({method: runs over seeds and calibration draws})
    and the `Evidence` on them; `table()` and `pairs()` are the rows that reports render."""

    runs: dict[str, list[Trajectory]]
    evidence: Evidence

    def table(self) -> list[dict[str, Any]]:
        """One row per method: `comparison_table`'s columns (medians, seed ranges), each number's
        interval (`<key>_lo`, `<key>_hi`, and `<key>_calib_lo`/`_calib_hi` with calibration draws),
        the areas over the sub-ranges, and the difference from the reference (`<key>_diff`, its
        interval at the Holm-adjusted level `<key>_diff_level`, `<key>_p_holm` and `<key>_resolved`;
        `comparisons`: how many differences the table's Holm family holds)."""
        from gnorm_kernels.evidence.report import comparison_table

        ev = self.evidence
        verdicts = ev.verdicts()
        rows = comparison_table(self.runs, metric=ev.metric, fractions=ev.budgets)
        for row in rows:
            method = row["method"]
            for key in ev.keys:
                row.update(_columns(key, ev.estimates[method][key]))
            for key in ev.keys[1:]:  # every method starts from the same model: no unpruned difference
                diff = verdicts.get((method, ev.reference), {}).get(key) or ev.difference(method)[key]
                row.update(_columns(f"{key}_diff", diff))
                row[f"{key}_resolved"] = diff.resolved
                if isinstance(diff, Verdict):
                    row.update({f"{key}_diff_level": diff.level, f"{key}_p_holm": diff.p_adjusted,
                                "comparisons": diff.comparisons, "correction": diff.correction})
        return rows

    def markdown(self) -> str:
        """The table as markdown (`gnorm_kernels.evidence.report.evidence_markdown`), with a caption that
        says what the intervals are."""
        from gnorm_kernels.evidence.report import evidence_markdown

        ev = self.evidence
        units = "evaluation windows" if ev.metric == "perplexity" else "evaluation examples"
        caption = (f"{ev.metric} on {ev.examples} {units}. [low, high]: {ev.level:.0%} interval of a "
                   f"paired bootstrap over those {units.split()[1]} ({ev.resamples} resamples, the same for every method)")
        if ev.draws > 1:
            caption += f"; calib [low, high]: the spread over {ev.draws} disjoint calibration samples"
        of = f"the natural log of {ev.metric}" if ev.metric in LOG_METRICS else "the curve"
        caption += (f". Lower {ev.metric} is better" if ev.metric in LOG_METRICS else "") + (
            f". AUC: the mean of {of} over the fractions pruned (the whole run, or the range named).")
        family = sum(v == v for d in ev.verdicts().values() for v in (x.value for x in d.values()))
        caption += (f" Differences: Holm's step-down correction over the table's {family} comparisons at family-wise "
                    f"error {1 - ev.level:.2g}; each interval is shown at the level its test used.")
        return evidence_markdown(self.table(), metric=ev.metric, keys=ev.keys, reference=ev.reference, caption=caption)

    def save(self, folder: str | os.PathLike, *, title: str | None = None) -> Path:
        """Write what `gnorm compare` writes besides the trajectories into `folder`: table.md,
        table.csv, differences.csv (`pairs`), accuracy.png (curves with their bootstrap bands) and
        masks.png (the heads each method keeps at 50% pruned, where the runs get that far)."""
        from gnorm_kernels.evidence.report import masks_figure, save_figure, write_csv
        from gnorm_kernels.evidence.viz import plot_accuracy_curves

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "table.md").write_text(self.markdown())
        write_csv(self.table(), folder / "table.csv")
        write_csv(self.pairs(), folder / "differences.csv")
        metric = self.evidence.metric
        save_figure(plot_accuracy_curves(self.runs, metric=metric, bands=self.evidence.bands,
                                         title=title or f"{metric} as heads are pruned"), folder / "accuracy.png")
        masks = masks_figure(self.runs, ratio=0.5)
        if masks is not None:
            save_figure(masks, folder / "masks.png")
        return folder

    def pairs(self) -> list[dict[str, Any]]:
        """One row per ordered pair of different methods: the difference (method minus versus)
        of every key with its interval and whether it is resolved, under Holm's correction over
        every unordered pair and key (both orders of a pair share one test)."""
        ev = self.evidence
        verdicts = ev.verdicts([(a, b) for i, a in enumerate(ev.methods) for b in ev.methods[i + 1:]])
        verdicts.update({(b, a): {k: v.negated() for k, v in d.items()} for (a, b), d in list(verdicts.items())})
        rows = []
        for (a, b), diffs in ((pair, verdicts[pair]) for pair in ev.differences if pair[0] != pair[1]):
            row: dict[str, Any] = {"method": a, "versus": b}
            for key in ev.keys[1:]:
                row.update(_columns(key, diffs[key]))
                row[f"{key}_resolved"] = diffs[key].resolved
            rows.append(row)
        return rows


def _columns(key: str, e: Estimate) -> dict[str, Any]:
    out = {key: e.value, f"{key}_lo": e.low, f"{key}_hi": e.high}
    if e.calib_low is not None:
        out.update({f"{key}_calib_lo": e.calib_low, f"{key}_calib_hi": e.calib_high})
    return out


def compare(
    model: Any,
    calibration: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
    evaluation: Sequence[Mapping[str, Any]],
    *,
    methods: Sequence[str] | None = None,
    reference: str | None = None,
    metric: str = "accuracy",
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    ranges: Sequence[tuple[float, float]] = DEFAULT_RANGES,
    random_seeds: int = 5,
    seed: int = 0,
    preset: str | None = None,
    scorer_options: Mapping[str, Mapping[str, Any]] | None = None,
    resamples: int = RESAMPLES,
    level: float = 0.95,
    checkpoint_dir: str | os.PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    around: Callable[[Path], ContextManager[Any]] | None = None,
    uniform: bool = False,
    **driver_options: Any,
) -> Comparison:
    """Run pruning methods on one model and one evaluation set, and say how sure the comparison is.

    `calibration` is one set of batches, or a list of several disjoint ones (calibration draws,
    see `calibration_draws`): every method runs on each. `methods` (default: all of
    `gnorm_kernels.scoring.registry.METHODS`) run through `run_method` with ``per_example=True``; seeded
    ones (random) run with seeds seed..seed+random_seeds-1. `preset` (e.g. "authors") and
    `driver_options` (ratio, steps, heads_per_step, ...) go to every run, `scorer_options[method]`
    to that method's scorer. Each trajectory is tagged with its seed and calibration draw (and
    `settings`) and, with `checkpoint_dir`, written there as it runs. The random baseline's
    order does not read the calibration data: it runs once per seed, on the first draw, and its
    differences from other methods take each of their draws against it. The `Evidence` uses the
    paired bootstrap with `resamples` resamples seeded with `seed` (see the module docstring).
    `around(path)`, given with `checkpoint_dir`, is a context manager wrapped around each
    checkpointed run (the command line says there where a resumed run picks up). `uniform=True`
    prunes every layer alike in every run (see `greedy_prune`).
    """
    from gnorm_kernels.engine.driver import run_method
    from gnorm_kernels.parallel import distributed
    from gnorm_kernels.scoring.registry import METHODS, get_method

    methods = list(METHODS) if methods is None else list(methods)
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"expected distinct method names, got {methods}")
    if random_seeds < 1 or resamples < 1:
        raise ValueError(f"random_seeds and resamples must be >= 1, got {random_seeds} and {resamples}")
    if not all(isinstance(f, (int, float)) and 0 <= f <= 1 for f in [*budgets, *(x for r in ranges for x in r)]):
        raise ValueError(f"budgets and ranges are fractions of heads pruned, in [0, 1]; got {list(budgets)}, {list(ranges)}")
    calibration = list(calibration)
    draws = [calibration] if not calibration or isinstance(calibration[0], Mapping) else [list(c) for c in calibration]
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    def reads_calibration(m: str) -> bool:  # a random order never does: run it once, use it for every draw
        return get_method(m).scorer != "random"

    jobs = [(m, s, d) for m in methods for d in range(len(draws) if reads_calibration(m) else 1)
            for s in (range(seed, seed + random_seeds) if get_method(m).seeded else [seed])]
    runs: dict[str, list[Trajectory]] = {m: [] for m in methods}
    for i, (method, s, d) in enumerate(jobs, 1):
        seeded, drawn = get_method(method).seeded, len(draws) > 1 and reads_calibration(method)
        label = method + (f"-seed{s}" if seeded else "") + (f"-calib{d}" if drawn else "")
        if log is not None:
            log(f"[{i}/{len(jobs)}] {method}" + (f" (seed {s})" if seeded else "")
                + (f" (calibration draw {d})" if drawn else ""))
        path = None if folder is None else folder / f"{label}.json"
        with around(path) if around is not None and path is not None else contextlib.nullcontext():
            trajectory = run_method(method, model, draws[d], evaluation, seed=s, metric=metric,
                                    scorer_options=(scorer_options or {}).get(method), checkpoint=path,
                                    preset=preset, per_example=True, uniform=uniform,
                                    **driver_options)
        trajectory.settings.update(dict(settings or {}), seed=s, calibration_draw=d,
                                   **({"preset": preset} if preset is not None else {}))
        if path is not None and distributed.is_main():  # under torchrun rank 0 writes
            trajectory.save(path)
        runs[method].append(trajectory)
    evidence = bootstrap_evidence(runs, metric=metric, budgets=budgets, ranges=ranges, reference=reference,
                                  resamples=resamples, level=level, seed=seed)
    return Comparison(runs=runs, evidence=evidence)
