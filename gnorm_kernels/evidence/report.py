"""Tables and figures that summarise pruning runs: what `gnorm compare` and `gnorm ablate` write.

* `comparison_table`: one row per method, the metric unpruned, at fixed fractions of heads pruned
  and the area under the curve (medians and ranges for methods run with several seeds);
  `markdown_table` and `write_csv` render it.
* `evidence_markdown`: the same numbers with their 95% intervals and the differences from a
  reference method, resolved or not (the rows of `gnorm_kernels.evidence.comparison.Comparison.table`).
* `findings`: one generated sentence per compared pair and column, each with its interval and
  its verdict under Holm's correction: what a notebook says about a comparison.
* `masks_figure`: the kept-head grid of every method at one pruning ratio, side by side.
* `ablation_table` and `write_ablation_csv`: single-head ablation drops as a layers x heads table.

Plain functions of `Trajectory` records and grids, so a notebook can build the same report from
its own runs.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from gnorm_kernels.data.tasks import LOG_METRICS
from gnorm_kernels.extras import require

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from gnorm_kernels.engine.trajectory import Trajectory

__all__ = [
    "TABLE_FRACTIONS",
    "comparison_table",
    "markdown_table",
    "evidence_markdown",
    "findings",
    "key_label",
    "write_csv",
    "masks_figure",
    "ablation_table",
    "write_ablation_csv",
    "save_figure",
]

TABLE_FRACTIONS = (0.25, 0.5, 0.75)

def comparison_table(
    runs: Mapping[str, Sequence[Trajectory]], *, metric: str = "accuracy", fractions: Sequence[float] = TABLE_FRACTIONS
) -> list[dict[str, Any]]:
    """One row per method: `metric` unpruned, at each fraction of heads pruned, and the area under
    the curve (its mean over the fraction range covered). Methods with several runs give the
    median, with the lowest and highest runs in `<column>_min` / `<column>_max`."""
    rows = []
    for name, trajectories in runs.items():
        columns: dict[str, list[float]] = {"unpruned": [], **{f"at_{f * 100:g}%": [] for f in fractions}, "auc": []}
        for t in trajectories:
            columns["unpruned"].append(t.metric_at(0.0, metric))
            for f in fractions:
                columns[f"at_{f * 100:g}%"].append(t.metric_at(f, metric))
            columns["auc"].append(t.area_under_curve(metric))
        row: dict[str, Any] = {"method": name, "runs": len(trajectories)}
        for key, values in columns.items():
            values = np.asarray(values, dtype=float)
            row[key] = float(np.median(values))
            if len(values) > 1:
                row[f"{key}_min"] = float(values.min())
                row[f"{key}_max"] = float(values.max())
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]], metric: str = "accuracy") -> str:
    """`comparison_table` rows as a markdown table: medians with [lowest, highest] where there are
    several runs, "n/a" where a run does not reach that fraction."""
    if not rows:
        raise ValueError("no rows to render: expected at least one method's row from comparison_table")
    keys = [k for k in rows[0] if k not in ("method", "runs") and not k.endswith(("_min", "_max"))]
    header = ["method", *[f"{metric} {k.replace('_', ' ')}" if k != "auc" else _header(k, metric) for k in keys]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(keys)) + "|"]
    for row in rows:
        cells = [row["method"] + (f" (median of {row['runs']})" if row["runs"] > 1 else "")]
        for k in keys:
            value = row[k]
            text = "n/a" if value != value else f"{value:.4f}"
            if f"{k}_min" in row and value == value:
                text += f" [{row[f'{k}_min']:.3f}, {row[f'{k}_max']:.3f}]"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _header(key: str, metric: str) -> str:
    if key.startswith("auc"):
        name = "AUC of log perplexity" if metric == "perplexity" else "AUC"
        return name + (f" {key[4:].replace('-', '–')}" if key != "auc" else "")
    return f"{metric} {key.replace('_', ' ')}"


def _interval_cell(row: Mapping[str, Any], key: str, signed: bool = False) -> str:
    """"value [low, high]" at a precision that shows each bound's side of 0 (`format_interval`);
    a resolved difference in bold with its correction and family size beside it."""
    from gnorm_kernels.evidence.statistics import format_interval

    value = row.get(key, float("nan"))
    if value != value:
        return "n/a"
    text = format_interval(value, row[f"{key}_lo"], row[f"{key}_hi"], digits=3, signed=signed)
    if f"{key}_calib_lo" in row:
        text += " calib " + format_interval(value, row[f"{key}_calib_lo"], row[f"{key}_calib_hi"], digits=3,
                                            signed=signed).split(" ", 1)[1]
    if not (signed and row.get(key.replace("_diff", "_resolved"))):
        return text
    family = f" ({row['correction']}, {row['comparisons']} comparisons)" if "comparisons" in row else ""
    return f"**{text}** resolved{family}"


def evidence_markdown(
    rows: Sequence[Mapping[str, Any]], *, metric: str, keys: Sequence[str], reference: str, caption: str = ""
) -> str:
    """`Comparison.table` rows as two markdown tables: each method's numbers with their intervals
    ("value [low, high]", and "calib [low, high]" over calibration draws), then each method's
    difference from `reference` over `keys` except "unpruned", in bold where resolved."""
    if not rows:
        raise ValueError("no rows to render: expected at least one method's row from Comparison.table")
    def label(row: Mapping[str, Any]) -> str:
        return row["method"] + (f" (median of {row['runs']})" if row["runs"] > 1 else "")

    lines = [caption, ""] if caption else []
    lines += ["| method | " + " | ".join(_header(k, metric) for k in keys) + " |",
              "|" + "|".join(["---"] + ["---:"] * len(keys)) + "|"]
    lines += ["| " + " | ".join([label(r), *[_interval_cell(r, k) for k in keys]]) + " |" for r in rows]
    diff_keys = [k for k in keys if k != "unpruned"]
    family = next((f", after {r['correction']}'s correction over {r['comparisons']} comparisons" for r in rows
                   if "comparisons" in r), "")
    lines += ["", f"Differences from {reference} (method minus {reference}; bold: resolved{family}, every interval "
              "excludes 0; plain: not resolved)", "",
              "| method | " + " | ".join(_header(k, metric) for k in diff_keys) + " |",
              "|" + "|".join(["---"] + ["---:"] * len(diff_keys)) + "|"]
    for r in rows:
        name = label(r) + (" (reference)" if r["method"] == reference else "")
        diffs = [_interval_cell(r, f"{k}_diff", signed=True) for k in diff_keys]
        lines.append("| " + " | ".join([name, *diffs]) + " |")
    return "\n".join(lines) + "\n"


def key_label(key: str) -> str:
    """A table column in words: "at_50%" -> "at 50% pruned", "auc_0-50%" -> "AUC over 0-50% pruned"."""
    if key == "auc":
        return "AUC over the whole run"
    if key.startswith("auc_"):
        return f"AUC over {key[4:]} pruned"
    return key.replace("at_", "at ") + " pruned" if key.startswith("at_") else key


def findings(comparison: Any, pairs: Sequence[tuple[str, str]] | None = None, *, keys: Sequence[str] | None = None,
             digits: int = 3) -> str:
    """Markdown bullets, one per pair (method, other) and column: which of the two did better, by how
    much, with the interval and the verdict of Holm's correction over the whole family of `pairs` x
    `keys` (default: every method against the reference, every column but "unpruned"). A comparison
    that is not resolved says so and names no winner. `comparison` is a `Comparison`."""
    ev = comparison.evidence
    keys = list(keys) if keys is not None else ev.keys[1:]
    verdicts = ev.verdicts(pairs)
    lower_is_better = ev.metric in LOG_METRICS
    lines = []
    for (method, other), by_key in verdicts.items():
        for key in keys:
            v = by_key[key]
            if v.value != v.value:
                lines.append(f"- {method} against {other}, {key_label(key)}: no value (a run stops before it).")
                continue
            if not v.resolved:
                lines.append(f"- {method} against {other}, {key_label(key)}: **not resolved**, {method} minus "
                             f"{other} = {v.text(digits)}.")
                continue
            higher = v.value > 0
            better = higher != lower_is_better
            lines.append(f"- {method} is **{'better' if better else 'worse'}** than {other}, {key_label(key)} "
                         f"({ev.metric} {'higher' if higher else 'lower'}): {method} minus {other} = {v.text(digits)}.")
    return "\n".join(lines)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """`comparison_table` rows as CSV; a column some rows lack (the ranges) is left empty there."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in fields})
    return Path(path)


def masks_figure(runs: Mapping[str, Sequence[Trajectory]], ratio: float = 0.5) -> Figure | None:
    """The heads each method keeps with `ratio` of them pruned (its first run), up to four panels a
    row; methods whose runs stop short of `ratio` are left out, and None if that leaves none."""
    plt = require("matplotlib.pyplot", "plots", "figures")

    from gnorm_kernels.evidence.viz import plot_head_grid

    masks = {}
    for method, trajectories in runs.items():
        try:
            masks[method] = trajectories[0].mask_at(ratio)
        except ValueError:  # this run pruned fewer heads than `ratio` asks for
            continue
    if not masks:
        return None
    cols = min(4, len(masks))
    rows = math.ceil(len(masks) / cols)
    num_layers = next(iter(masks.values())).shape[0]
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 0.5 + (0.35 * num_layers + 0.9) * rows),
                             layout="constrained", squeeze=False)
    for ax, (method, mask) in zip(axes.flat, masks.items()):
        plot_head_grid(mask, kind="mask", ax=ax, title=method, annotate=False)
    for ax in list(axes.flat)[len(masks):]:
        ax.set_visible(False)
    fig.suptitle(f"heads kept at {round(ratio * 100)}% pruned (blue: kept)")
    return fig


def ablation_table(drops: torch.Tensor | np.ndarray, base: float, metric: str = "accuracy") -> str:
    """Single-head ablation drops (fractions, [L, H], NaN for missing heads) as text, in points."""
    L, H = drops.shape
    rise = metric == "perplexity"  # lower is better: the drop is a rise, in the metric's own units
    change = "rise in perplexity" if rise else "drop in points"
    lines = [f"{metric} {base:.4f} with every head; {change} when one head is masked (positive: worse without it)",
             "layer " + "".join(f"{f'h{h}':>8}" for h in range(H))]
    scale = 1 if rise else 100
    for l in range(L):
        lines.append(f"{l:>5} " + "".join("     n/a" if v != v else f"{scale * v:8.2f}" for v in drops[l].tolist()))
    return "\n".join(lines) + "\n"


def write_ablation_csv(drops: torch.Tensor | np.ndarray, path: str | os.PathLike) -> Path:
    """Single-head ablation drops as CSV: one row per layer, one column per head, empty for NaN."""
    L, H = drops.shape
    with open(path, "w") as f:
        f.write("layer," + ",".join(f"head{h}" for h in range(H)) + "\n")
        for l in range(L):
            f.write(f"{l}," + ",".join("" if v != v else f"{v:.6f}" for v in drops[l].tolist()) + "\n")
    return Path(path)


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Write `fig` to `path` and close it (a command line draws many figures, shows none)."""
    plt = require("matplotlib.pyplot", "plots", "figures")

    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)
