"""Report tables and figures: the comparison table, its markdown and CSV, the mask panel, ablation tables."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from gnorm_kernels.engine.trajectory import Step, Trajectory
from gnorm_kernels.evidence.report import (
    ablation_table,
    comparison_table,
    markdown_table,
    masks_figure,
    save_figure,
    write_ablation_csv,
    write_csv,
)


def run(name: str, accuracies: list[float], order: list[tuple[int, int]] | None = None) -> Trajectory:
    """A 2 x 2 grid pruned one head a step, evaluated at every step with the given accuracies."""
    order = order or [(0, 0), (0, 1), (1, 0), (1, 1)][: len(accuracies) - 1]
    steps = [Step(i, [] if i == 0 else [order[i - 1]], {"accuracy": a}, params=100 - 10 * i, encoder_params=0,
                  size_mb=0.0, seconds=0.0) for i, a in enumerate(accuracies)]
    return Trajectory(method=name, family="bert", num_layers=2, num_heads=2, greedy=True, prune_first="lowest",
                      settings={}, steps=steps, budget=len(order), complete=True)


def test_comparison_table_reads_each_curve_and_gives_medians_and_ranges():
    runs = {
        "good": [run("good", [1.0, 1.0, 0.9, 0.8, 0.5])],
        "random": [run("random", [1.0, 0.6, 0.5, 0.5, 0.5]), run("random", [1.0, 0.8, 0.7, 0.5, 0.5]),
                   run("random", [1.0, 0.7, 0.6, 0.5, 0.5])],
        "short": [run("short", [1.0, 0.9])],  # stops at 25% pruned
    }
    rows = comparison_table(runs)
    assert [r["method"] for r in rows] == ["good", "random", "short"]
    good, random, short = rows
    assert good["runs"] == 1 and "auc_min" not in good
    assert (good["unpruned"], good["at_25%"], good["at_50%"], good["at_75%"]) == (1.0, 1.0, 0.9, 0.8)
    # trapezoids over [0, 1]: (1 + 1 + 1.9 + 1.7 + 1.3) / 8
    assert good["auc"] == pytest.approx(6.9 / 8)
    assert random["runs"] == 3 and random["at_25%"] == pytest.approx(0.7)
    assert (random["at_25%_min"], random["at_25%_max"]) == (0.6, 0.8)
    assert short["at_25%"] == pytest.approx(0.9) and math.isnan(short["at_50%"])
    assert comparison_table(runs, fractions=(0.5,))[0].keys() == {"method", "runs", "unpruned", "at_50%", "auc"}


def test_markdown_and_csv_render_the_rows(tmp_path):
    runs = {"good": [run("good", [1.0, 1.0, 0.9, 0.8, 0.5])],
            "random": [run("random", [1.0, 0.6, 0.5, 0.5, 0.5]), run("random", [1.0, 0.8, 0.7, 0.5, 0.5])],
            "short": [run("short", [1.0, 0.9])]}
    rows = comparison_table(runs)
    lines = markdown_table(rows, "accuracy").splitlines()
    assert lines[0] == "| method | accuracy unpruned | accuracy at 25% | accuracy at 50% | accuracy at 75% | AUC |"
    assert lines[1] == "|---|---:|---:|---:|---:|---:|"
    assert lines[2].startswith("| good | 1.0000 | 1.0000 | 0.9000 | 0.8000 |")
    assert lines[3].startswith("| random (median of 2) | 1.0000 [1.000, 1.000] | 0.7000 [0.600, 0.800] |")
    assert "| n/a |" in lines[4]
    with pytest.raises(ValueError, match="no rows"):
        markdown_table([], "accuracy")

    written = list(csv.DictReader(open(write_csv(rows, tmp_path / "table.csv"))))
    assert [r["method"] for r in written] == ["good", "random", "short"]
    assert written[0]["auc_min"] == "" and float(written[1]["at_25%_max"]) == pytest.approx(0.8)


def test_masks_figure_shows_the_methods_that_reach_the_ratio(tmp_path):
    runs = {"a": [run("a", [1.0, 0.9, 0.8])], "b": [run("b", [1.0, 0.9, 0.8], order=[(1, 1), (0, 1)])],
            "short": [run("short", [1.0, 0.9])]}
    fig = masks_figure(runs, ratio=0.5)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert titles == ["a", "b"]
    path = save_figure(fig, tmp_path / "masks.png")
    assert path.stat().st_size > 0
    assert masks_figure({"short": runs["short"]}, ratio=0.5) is None


def test_ablation_table_and_csv(tmp_path):
    drops = torch.tensor([[0.1, -0.005], [float("nan"), 0.0]])
    lines = ablation_table(drops, 0.95, "accuracy").splitlines()
    assert lines[0].startswith("accuracy 0.9500 with every head")
    assert lines[1].split() == ["layer", "h0", "h1"]
    assert lines[2].split() == ["0", "10.00", "-0.50"] and lines[3].split() == ["1", "n/a", "0.00"]
    text = write_ablation_csv(drops.numpy(), tmp_path / "ablation.csv").read_text().splitlines()
    assert text == ["layer,head0,head1", "0,0.100000,-0.005000", "1,,0.000000"]
    assert ablation_table(np.zeros((1, 3)), 1.0).splitlines()[1].split() == ["layer", "h0", "h1", "h2"]


def test_comparison_table_names_fractional_budgets_exactly():
    rows = comparison_table({"good": [run("good", [1.0, 1.0, 0.9, 0.8, 0.5])]}, fractions=(0.125, 0.5))
    assert list(rows[0]) == ["method", "runs", "unpruned", "at_12.5%", "at_50%", "auc"]
    assert rows[0]["at_12.5%"] == pytest.approx(1.0)


def test_evidence_markdown_shows_intervals_calibration_spread_and_resolved_differences():
    from gnorm_kernels.evidence.report import evidence_markdown

    def cells(value, lo, hi, calib=None):
        out = {"": value, "_lo": lo, "_hi": hi}
        if calib:
            out.update({"_calib_lo": calib[0], "_calib_hi": calib[1]})
        return out

    def row(method, runs, **columns):
        r = {"method": method, "runs": runs}
        for key, values in columns.items():
            key = key.replace("at50", "at_50%").replace("diff", "_diff")
            r.update({f"{key}{suffix}": v for suffix, v in values.items()})
        return r

    ref = row("a", 1, unpruned=cells(0.9, 0.88, 0.92), at50=cells(0.8, 0.78, 0.82, (0.79, 0.81)),
              at50diff=cells(0.0, 0.0, 0.0, (0.0, 0.0)))
    ref["at_50%_resolved"] = False
    other = row("b", 3, unpruned=cells(0.9, 0.88, 0.92), at50=cells(0.7, 0.68, 0.72, (0.69, 0.71)),
                at50diff=cells(-0.1, -0.12, -0.08, (-0.11, -0.09)))
    other["at_50%_resolved"] = True
    short = row("c", 1, unpruned=cells(0.9, 0.88, 0.92), at50=cells(float("nan"), float("nan"), float("nan")),
                at50diff=cells(float("nan"), float("nan"), float("nan")))
    short["at_50%_resolved"] = False
    text = evidence_markdown([ref, other, short], metric="accuracy", keys=["unpruned", "at_50%"], reference="a",
                             caption="what the brackets mean")
    lines = text.splitlines()
    assert lines[0] == "what the brackets mean"
    assert lines[2] == "| method | accuracy unpruned | accuracy at 50% |"
    assert lines[4] == "| a | 0.900 [0.880, 0.920] | 0.800 [0.780, 0.820] calib [0.790, 0.810] |"
    assert lines[5].startswith("| b (median of 3) |") and lines[6].endswith("| n/a |")
    diffs = lines[lines.index("| method | accuracy at 50% |"):]
    assert diffs[2] == "| a (reference) | +0.000 [+0.000, +0.000] calib [+0.000, +0.000] |"
    assert diffs[3] == "| b (median of 3) | **-0.100 [-0.120, -0.080] calib [-0.110, -0.090]** resolved |"
    assert diffs[4] == "| c | n/a |"
    with pytest.raises(ValueError, match="no rows"):
        evidence_markdown([], metric="accuracy", keys=[], reference="a")


def test_order_against_static_and_the_parameter_split(tiny, tiny_calibration):
    from gnorm_kernels.engine.driver import greedy_prune
    from gnorm_kernels.evaluation import parameter_count
    from gnorm_kernels.evidence.runs import order_against_static, parameter_split
    from gnorm_kernels.evidence.viz import plot_order_against_static, plot_parameter_split

    model = tiny.model
    t = greedy_prune(model, tiny_calibration[:1], steps=6, progress=False)
    found = order_against_static(t)
    first = t.scores_at(1)
    static = sorted([(l, h) for l in range(first.shape[0]) for h in range(first.shape[1])],
                    key=lambda lh: (float(first[lh]), lh))
    assert found["static_rank"][0] == 0 and found["static_rank"] == [static.index(h) for h in t.order]
    assert found["overlap"][0] == 1.0 and len(found["overlap"]) == 6
    assert all(rank > step - 1 for _, step, rank in found["jumps"])
    rows = parameter_split(model, t, (0.0, 6 / 32))
    assert rows[0]["attention"] + rows[0]["rest"] == parameter_count(model)
    assert rows[1]["attention"] < rows[0]["attention"] and rows[1]["rest"] == rows[0]["rest"]
    assert len(plot_order_against_static(t).axes) == 2 and plot_parameter_split(model, t, (0.0, 0.125)).axes
