"""Figures for pruning runs: accuracy curves, head-grid heatmaps, rank changes across greedy steps.

Every function returns a matplotlib `Figure` (draw into an existing axis with ``ax=``), sized to
read well at notebook width. Outside a notebook, with no display, the Agg backend is used.
"""

from __future__ import annotations

import math
import os
import sys
from typing import TYPE_CHECKING, Iterable, Literal, Mapping, Sequence

from gnorm_kernels.extras import require

matplotlib = require("matplotlib", "plots", "figures (gnorm_kernels.evidence.viz)")
require("seaborn", "plots", "figures (gnorm_kernels.evidence.viz)")

if not os.environ.get("MPLBACKEND") and not os.environ.get("DISPLAY") and "ipykernel" not in sys.modules:
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap, LogNorm, SymLogNorm, TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from gnorm_kernels.engine.trajectory import Trajectory  # noqa: E402

if TYPE_CHECKING:
    from gnorm_kernels.evidence.timing import Timings

__all__ = ["plot_accuracy_curves", "plot_head_grid", "plot_drop_grid", "plot_interval_curves", "plot_rank_changes",
           "plot_order_against_static", "plot_parameter_split", "group_runs", "unit_name", "plot_time_ratios"]

Runs = Trajectory | Sequence[Trajectory] | Mapping[str, Trajectory | Sequence[Trajectory]]
# {method: (fraction of heads pruned, lower, upper)}, e.g. gnorm_kernels.evidence.comparison.Evidence.bands
Bands = Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def _axis(ax: plt.Axes | None, size: tuple[float, float]) -> tuple[Figure, plt.Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    return fig, ax


def group_runs(runs: Runs) -> dict[str, list[Trajectory]]:
    """{method: [trajectories]}: one trajectory, a list (grouped by `method`), or a mapping."""
    if isinstance(runs, Trajectory):
        return {runs.method: [runs]}
    if isinstance(runs, Mapping):
        return {str(k): [v] if isinstance(v, Trajectory) else list(v) for k, v in runs.items()}
    groups: dict[str, list[Trajectory]] = {}
    for t in runs:
        if not isinstance(t, Trajectory):
            raise TypeError(f"expected Trajectory objects, got {type(t).__name__}")
        groups.setdefault(t.method, []).append(t)
    return groups


def unit_name(trajectories: Iterable[Trajectory]) -> str:
    """What the runs pruned, for axis labels: "heads", "KV groups", or "units" when they differ."""
    units = {t.unit for t in trajectories}
    return {frozenset({"head"}): "heads", frozenset({"kv_group"}): "KV groups"}.get(frozenset(units), "units")


def _x_scale(t: Trajectory, x: str) -> float:
    return 100.0 if x == "percent" else float(t.units_at_start)


def plot_accuracy_curves(
    runs: Runs,
    *,
    metric: str = "accuracy",
    x: Literal["heads", "percent"] = "heads",
    ax: plt.Axes | None = None,
    title: str | None = None,
    bands: Bands | None = None,
    bands_label: str = "95% bootstrap interval",
) -> Figure:
    """`metric` against heads pruned, one line per method; a method with several runs (random
    seeds) is drawn as the median with a band from the lowest to the highest run.

    `bands` ({method: (fractions pruned, lower, upper)}, such as `Evidence.bands` of
    `gnorm_kernels.evidence.comparison`) shades each named method's interval instead; the seed range of a
    method with several runs is then drawn as thin dotted lines."""
    if x not in ("heads", "percent"):
        raise ValueError(f"x must be 'heads' or 'percent', got {x!r}")
    groups = group_runs(runs)
    if not groups:
        raise ValueError("no trajectories to plot")
    bands = dict(bands or {})
    unknown = sorted(set(bands) - set(groups))
    if unknown:
        raise ValueError(f"bands given for {unknown}, which are not among the runs {sorted(groups)}")
    fig, ax = _axis(ax, (8, 4.5))
    colors = sns.color_palette("tab10", n_colors=max(len(groups), 3))
    for color, (name, trajectories) in zip(colors, groups.items()):
        if name in bands:
            grid, low, high = (np.asarray(a, dtype=float) for a in bands[name])
            scale = _x_scale(trajectories[0], x)
            ax.fill_between(grid * scale, low, high, color=color, alpha=0.18, linewidth=0)
        curves = []
        for t in trajectories:
            xs, ys = t.curve(metric)
            curves.append((xs * _x_scale(t, x), ys))
        curves = [c for c in curves if len(c[0])]
        if not curves:
            continue
        if len(curves) == 1:
            ax.plot(*curves[0], color=color, marker="." if len(curves[0][0]) <= 40 else None, label=name)
            continue
        grid = np.unique(np.concatenate([c[0] for c in curves]))
        grid = grid[grid <= min(c[0][-1] for c in curves) + 1e-9]
        stack = np.stack([np.interp(grid, *c) for c in curves])
        ax.plot(grid, np.median(stack, axis=0), color=color, label=f"{name} (median of {len(curves)})")
        if name in bands:
            for edge in (stack.min(axis=0), stack.max(axis=0)):
                ax.plot(grid, edge, color=color, linewidth=0.7, linestyle=":")
        else:
            ax.fill_between(grid, stack.min(axis=0), stack.max(axis=0), color=color, alpha=0.2, linewidth=0)
    units = unit_name(t for ts in groups.values() for t in ts)
    ax.set_xlabel(f"{units} pruned" if x == "heads" else f"{units} pruned (%)")
    ax.set_ylabel(f"{metric} (log scale; lower is better)" if metric == "perplexity" else metric)
    if metric == "perplexity":  # grows by orders of magnitude as heads go
        ax.set_yscale("log")
    ax.set_title(title or f"{metric} as {units} are pruned (no fine-tuning)")
    ax.grid(True, alpha=0.3)
    legend_title = None
    if bands:
        several = any(len(groups[name]) > 1 for name in bands)
        legend_title = f"shaded: {bands_label}" + ("\ndotted: lowest and highest run" if several else "")
    if len(groups) > 3:  # many curves: keep the legend off them
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False,
                  title=legend_title, title_fontsize="small")
    else:
        ax.legend(loc="best", fontsize="small", title=legend_title, title_fontsize="small")
    return fig


def plot_interval_curves(
    curves: Mapping[str, Sequence[tuple[float, float, float, float]]],
    *,
    ax: plt.Axes | None = None,
    title: str | None = None,
    xlabel: str = "heads pruned (%)",
    ylabel: str = "value",
) -> Figure:
    """One line per method through its points (x, value, low, high), the interval as a band:
    for measurements taken at a few budgets, e.g. `statistics.compare_means` estimates."""
    fig, ax = _axis(ax, (6.0, 4.0))
    for i, (method, points) in enumerate(curves.items()):
        xs, values, lows, highs = (np.asarray(c, dtype=float) for c in zip(*sorted(points)))
        color = "0.45" if method.startswith("random") else f"C{i}"
        ax.plot(xs, values, "o-", color=color, label=method)
        ax.fill_between(xs, lows, highs, color=color, alpha=0.2, linewidth=0)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize="small")
    return fig


def _as_array(grid: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(grid, torch.Tensor):
        grid = grid.detach().cpu()
        grid = grid.float() if grid.dtype != torch.bool else grid
        grid = grid.numpy()
    grid = np.asarray(grid)
    if grid.ndim != 2:
        raise ValueError(f"expected a [layers, heads] grid, got shape {list(grid.shape)}")
    return grid


def plot_head_grid(
    grid: torch.Tensor | np.ndarray,
    *,
    kind: Literal["mask", "scores", "ablation"] = "scores",
    ax: plt.Axes | None = None,
    title: str | None = None,
    annotate: bool | None = None,
    log: bool | None = None,
    prune_first: Literal["lowest", "highest"] = "lowest",
) -> Figure:
    """A layers x heads heatmap: a kept mask, a score grid (pruned heads blank) or single-head
    ablation drops (diverging around zero). `log` (default: automatic for positive scores that
    span more than two decades) uses a logarithmic colour scale. For scores, dark always marks
    the heads pruned first: `prune_first="highest"` (attention entropy) reverses the colours."""
    if prune_first not in ("lowest", "highest"):
        raise ValueError(f"prune_first must be 'lowest' or 'highest', got {prune_first!r}")
    if kind not in ("mask", "scores", "ablation"):
        raise ValueError(f"kind must be 'mask', 'scores' or 'ablation', got {kind!r}")
    values = _as_array(grid)
    L, H = values.shape
    fig, ax = _axis(ax, (min(3.0 + 0.6 * H, 10.0), min(1.4 + 0.45 * L, 8.0)))
    annotate = (L * H <= 96) if annotate is None else annotate
    common = dict(ax=ax, linewidths=0.5, linecolor="white", square=H <= 16 and L <= 16)
    if kind == "mask":
        kept = values.astype(bool)
        sns.heatmap(kept.astype(float), cmap=ListedColormap(["#d9d9d9", "#2b8cbe"]), vmin=0, vmax=1, cbar=False,
                    annot=np.where(kept, "", "x") if annotate else False, fmt="", **common)
        default = f"kept heads: {int(kept.sum())} of {L * H}"
    else:
        data = values.astype(float)
        finite = data[np.isfinite(data)]
        norm = None
        if kind == "ablation":
            span = float(np.abs(finite).max()) if finite.size else 1.0
            norm = TwoSlopeNorm(vcenter=0.0, vmin=-span or -1.0, vmax=span or 1.0)
            cmap = "RdBu_r"
        else:
            cmap = "viridis" if prune_first == "lowest" else "viridis_r"
            positive = finite.size and (finite > 0).all()
            wide = positive and finite.max() / finite.min() > 100
            if log or (log is None and wide):
                if not positive:
                    raise ValueError("log=True needs positive scores")
                norm = LogNorm(vmin=finite.min(), vmax=finite.max())
        sns.heatmap(np.ma.masked_invalid(data), cmap=cmap, norm=norm, annot=annotate, fmt=".2g",
                    annot_kws={"fontsize": 7}, cbar_kws={"label": "accuracy drop" if kind == "ablation" else
                                                         "score (dark: pruned first)"}, **common)
        ax.set_facecolor("#eeeeee")
        default = "drop when one head alone is masked" if kind == "ablation" else "head scores"
        if np.isnan(data).any():
            default += " (blank: pruned)"
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(np.arange(H) + 0.5, [str(h) for h in range(H)], rotation=0)
    ax.set_yticks(np.arange(L) + 0.5, [str(l) for l in range(L)], rotation=0)
    ax.set_title(title or default)
    return fig


def plot_drop_grid(
    drops: torch.Tensor | np.ndarray,
    *,
    resolved: np.ndarray | None = None,
    ax: plt.Axes | None = None,
    title: str | None = None,
    label: str = "accuracy drop (points)",
) -> Figure:
    """Accuracy drops in points on the [layers, heads] grid, annotated to one decimal: diverging
    and centred on 0 (red: worse without the head, blue: better), symmetric and logarithmic
    beyond +-1 point so one large drop does not wash out the small ones. `resolved` (bool grid)
    frames the drops whose interval excludes 0."""
    points = _as_array(drops).astype(float)
    L, H = points.shape
    fig, ax = _axis(ax, (min(3.0 + 0.8 * H, 11.0), min(1.6 + 0.55 * L, 8.0)))
    finite = points[np.isfinite(points)]
    span = max(1.0, float(np.abs(finite).max()) if finite.size else 1.0)
    norm = SymLogNorm(linthresh=1.0, linscale=1.0, vmin=-span, vmax=span, base=10)
    sns.heatmap(np.ma.masked_invalid(points), ax=ax, cmap="RdBu_r", norm=norm, annot=True, fmt=".1f",
                annot_kws={"fontsize": 8}, linewidths=0.5, linecolor="white", square=H <= 16 and L <= 16,
                cbar_kws={"label": label + "; log beyond ±1"})
    ticks = [t for t in (-100, -30, -10, -3, -1, 0, 1, 3, 10, 30, 100) if abs(t) <= span]
    ax.collections[0].colorbar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    if resolved is not None:
        for layer, head in zip(*np.nonzero(np.asarray(resolved, dtype=bool))):
            ax.add_patch(Rectangle((head, layer), 1, 1, fill=False, edgecolor="black", lw=2))
    ax.set_facecolor("#eeeeee")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(np.arange(H) + 0.5, [str(h) for h in range(H)], rotation=0)
    ax.set_yticks(np.arange(L) + 0.5, [str(l) for l in range(L)], rotation=0)
    ax.set_title(title or "accuracy drop when one head alone is masked" +
                 ("\n(framed: interval excludes 0)" if resolved is not None else ""))
    return fig


def plot_rank_changes(
    trajectory: Trajectory, *, ax: plt.Axes | None = None, title: str | None = None, max_steps: int | None = None
) -> Figure:
    """How each head's rank moves across greedy steps: rows are heads in pruning order, columns
    steps, colour the head's rank among those left (0 = next to go); blank once pruned."""
    grids = [(s.step, s.scores) for s in trajectory.steps[1:] if s.scores is not None]
    if max_steps is not None:
        grids = grids[:max_steps]
    if len(grids) < 2:
        raise ValueError(
            f"{trajectory.method!r} has {len(grids)} score grid(s); rank changes need a greedy trajectory "
            "with at least two steps"
        )
    order = trajectory.order
    rows = {head: i for i, head in enumerate(order)}
    ranks = np.full((len(order), len(grids)), np.nan)
    sign = 1.0 if trajectory.prune_first == "lowest" else -1.0
    for c, (_, scores) in enumerate(grids):
        values = scores.double() * sign
        present = [(l, h) for l, h in order if math.isfinite(float(values[l, h]))]
        ranked = sorted(present, key=lambda lh: (float(values[lh]), lh))
        for r, head in enumerate(ranked):
            ranks[rows[head], c] = r
    fig, ax = _axis(ax, (min(3.0 + 0.25 * len(grids), 12.0), min(2.0 + 0.18 * len(order), 12.0)))
    sns.heatmap(np.ma.masked_invalid(ranks), cmap="magma_r", ax=ax, cbar_kws={"label": "rank among heads left (0: next)"})
    ax.set_facecolor("#eeeeee")
    every = max(1, math.ceil(len(order) / 40))
    ax.set_yticks(np.arange(0, len(order), every) + 0.5, [f"L{l}H{h}" for l, h in order[::every]], rotation=0, fontsize=7)
    xevery = max(1, math.ceil(len(grids) / 30))
    ax.set_xticks(np.arange(0, len(grids), xevery) + 0.5, [str(s) for s, _ in grids[::xevery]], rotation=0, fontsize=7)
    ax.set_xlabel("greedy step")
    ax.set_ylabel("head (layer, head), in pruning order")
    ax.set_title(title or f"{trajectory.method}: ranks across greedy steps")
    return fig


def plot_time_ratios(
    timings: "Timings", *, colors: Mapping[str, str] | None = None, ax: plt.Axes | None = None, title: str | None = None,
) -> Figure:
    """Each candidate's time over the reference's (`Timings.ratios`) as a point with its Holm-level
    bootstrap interval, on a log axis with a line at 1: left of it faster, right slower; hollow
    points are not resolved (the interval holds 1). `colors` maps a candidate to its colour."""
    names = [n for n in timings.names if n in timings.ratios]
    if not names:
        raise ValueError("no ratios to plot: the timings hold the reference alone")
    fig, ax = _axis(ax, (8, 0.9 + 0.42 * len(names)))
    for row, name in enumerate(names):
        v = timings.ratios[name]
        color = (colors or {}).get(name, "#1f77b4")
        ax.errorbar([v.value], [row], xerr=[[v.value - v.low], [v.high - v.value]], fmt="o", capsize=3, color=color,
                    markerfacecolor=color if v.resolved else "white")
    ax.axvline(1.0, color="0.45", lw=1)
    ax.set_xscale("log")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"time / {timings.reference}'s time, log scale (median of {len(timings.seconds)} rounds; bars: "
                  f"bootstrap interval, Holm over {len(names)}; hollow: not resolved)")
    ax.set_title(title or f"time per call against {timings.reference}")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    return fig


def plot_order_against_static(trajectory: Trajectory, *, title: str | None = None) -> Figure:
    """Two panels for a greedy run: where each greedy choice stood in the ranking of the full
    model's scores (the order a static method would follow; on the diagonal if re-scoring changed
    nothing), and the share of the first k heads the two orders have in common."""
    from gnorm_kernels.evidence.runs import order_against_static

    found = order_against_static(trajectory)
    steps = np.arange(1, len(found["static_rank"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.3), layout="constrained")
    axes[0].scatter(steps, found["static_rank"], s=30)
    axes[0].plot([1, len(steps)], [0, len(steps) - 1], color="grey", linestyle="--", label="no re-ranking")
    axes[0].set_xlabel("greedy step")
    axes[0].set_ylabel("rank in the full model's scores (0: first to go)")
    axes[0].set_title("Where each greedy choice stood in the static ranking")
    axes[0].legend()
    axes[1].plot(steps, found["overlap"], marker=".")
    axes[1].set_xlabel("k (heads pruned)")
    axes[1].set_ylabel("shared fraction of the first k")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_title("Overlap of the greedy and static orders")
    if title:
        fig.suptitle(title)
    return fig


def plot_parameter_split(model: torch.nn.Module, trajectory: Trajectory, ratios: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
                         *, ax: plt.Axes | None = None) -> Figure:
    """Stacked bars: the parameters in attention (Q, K, V, O) and in the rest of the model after
    pruning `trajectory`'s heads up to each of `ratios` (pruned for real, on copies of `model`)."""
    from gnorm_kernels.evidence.runs import parameter_split

    rows = parameter_split(model, trajectory, ratios)
    fig, ax = _axis(ax, (9, 3.2))
    labels = [f"{r['ratio']:.0%}" for r in rows]
    attention = [r["attention"] for r in rows]
    rest = [r["rest"] for r in rows]
    ax.barh(labels, attention, color="#2a7ab9", label="attention (Q, K, V, O)")
    ax.barh(labels, rest, left=attention, color="#c9c9c9", label="embeddings, feed-forward, norms, head")
    ax.invert_yaxis()
    ax.set_xlabel("parameters")
    ax.set_ylabel("heads pruned")
    ax.set_title(f"Where the parameters are, as {trajectory.method} prunes heads")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    return fig
