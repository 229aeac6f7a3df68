"""Comparisons with uncertainty: the paired bootstrap, curves read like metric_at, per-example
records, the authors' preset, and `gnorm compare` with intervals and calibration draws."""

from __future__ import annotations

import copy
import csv
import json
import math

import numpy as np
import pytest
import torch

from gnorm_kernels.engine.trajectory import Step, Trajectory
from gnorm_kernels.evaluation import evaluate
from gnorm_kernels.evidence.comparison import bootstrap_evidence
from gnorm_kernels.evidence.statistics import metric_on_resamples, point_weights, range_weights, resample_counts


def run(name: str, per_step: list[int], predictions: list[list[int]], golds: list[int], *, draw: int = 0,
        metric_of=None) -> Trajectory:
    """A 2 x 4 grid pruned `per_step[i]` heads at step i + 1, every step evaluated, with the
    given per-example predictions; the recorded accuracy is the one they give."""
    heads = iter([(l, h) for l in range(2) for h in range(4)])
    steps = []
    for i, preds in enumerate(predictions):
        pruned = [] if i == 0 else [next(heads) for _ in range(per_step[i - 1])]
        value = float(np.mean(np.asarray(preds) == np.asarray(golds)))
        steps.append(Step(i, pruned, {"accuracy": value}, params=0, encoder_params=0, size_mb=0.0, seconds=0.0,
                          predictions=list(preds), golds=list(golds)))
    return Trajectory(method=name, family="bert", num_layers=2, num_heads=4, greedy=True, prune_first="lowest",
                      settings={"calibration_draw": draw}, steps=steps, budget=sum(per_step), complete=True)


def correct_on(golds: np.ndarray, count: int) -> list[int]:
    """Predictions right on the first `count` examples and wrong on the rest."""
    preds = golds.copy()
    preds[count:] = 1 - preds[count:]
    return preds.tolist()


# --------------------------------------------------------------------------- the numerics


def test_resample_counts_draw_n_examples_per_resample():
    counts = resample_counts(50, 200, np.random.default_rng(0))
    assert counts.shape == (200, 50) and (counts.sum(1) == 50).all()
    assert not (counts == 1).all()  # an actual resample, not the data
    assert np.array_equal(counts, resample_counts(50, 200, np.random.default_rng(0)))


def _textbook_f1(gold: np.ndarray, pred: np.ndarray) -> float:
    tp, fp, fn = ((gold == 1) & (pred == 1)).sum(), ((gold == 0) & (pred == 1)).sum(), ((gold == 1) & (pred == 0)).sum()
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _textbook_mcc(gold: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Gorodkin's R_K: the correlation of the one-hot gold and prediction matrices."""
    x, y = np.eye(k)[gold], np.eye(k)[pred]
    x, y = x - x.mean(0), y - y.mean(0)
    cov = lambda a, b: float((a * b).sum())  # noqa: E731
    return cov(x, y) / np.sqrt(cov(x, x) * cov(y, y))


def test_metrics_on_resamples_are_the_textbook_metrics_of_the_resampled_data():
    rng = np.random.default_rng(1)
    golds = rng.integers(0, 2, 300)
    preds = np.stack([np.where(rng.random(300) < p, golds, 1 - golds) for p in (0.9, 0.7, 0.5)])
    ones = np.ones((1, 300))
    acc = metric_on_resamples(ones, preds, golds, "accuracy")[0]
    assert np.allclose(acc, (preds == golds).mean(1))
    f1 = metric_on_resamples(ones, preds, golds, "f1")[0]
    mcc = metric_on_resamples(ones, preds, golds, "matthews")[0]
    for s in range(3):
        assert f1[s] == pytest.approx(_textbook_f1(golds, preds[s])) and mcc[s] == pytest.approx(_textbook_mcc(golds, preds[s], 2))
    # a resample's counts weigh examples as if they were repeated that many times
    counts = resample_counts(300, 3, np.random.default_rng(2))
    for r in range(3):
        idx = np.repeat(np.arange(300), counts[r].astype(int))
        assert metric_on_resamples(counts, preds, golds, "f1")[r][1] == pytest.approx(_textbook_f1(golds[idx], preds[1][idx]))
        assert metric_on_resamples(counts, preds, golds, "matthews")[r][2] == pytest.approx(
            _textbook_mcc(golds[idx], preds[2][idx], 2))
    three = rng.integers(0, 3, (2, 300))
    gold3 = rng.integers(0, 3, 300)
    assert metric_on_resamples(ones, three, gold3, "matthews")[0][1] == pytest.approx(_textbook_mcc(gold3, three[1], 3))
    with pytest.raises(ValueError, match="binary"):
        metric_on_resamples(ones, three, gold3, "f1")


def test_budgets_and_areas_read_the_curve_like_metric_at():
    golds = np.zeros(10, dtype=int)
    accuracies = [1.0, 0.9, 0.6, 0.5]
    t = run("m", [1, 3, 2], [correct_on(golds, round(10 * a)) for a in accuracies], golds.tolist())
    xs, ys = t.curve()
    for f in (0.0, 0.1, 0.125, 0.3, 0.5, 0.6, 0.75):
        assert point_weights(xs, f) @ ys == pytest.approx(t.metric_at(f))
    assert np.isnan(point_weights(xs, 0.8)).all() and math.isnan(t.metric_at(0.8))
    assert range_weights(xs, None, None) @ ys == pytest.approx(t.area_under_curve())
    dense = np.linspace(0, 0.5, 200001)
    assert range_weights(xs, 0.0, 0.5) @ ys == pytest.approx(np.interp(dense, xs, ys).mean(), abs=1e-5)
    assert np.isnan(range_weights(xs, 0.0, 0.9)).all()  # past the end of the run

    ev = bootstrap_evidence({"m": [t]}, budgets=(0.3, 0.5), ranges=((0.0, 0.5), (0.0, 0.75)), resamples=50)
    assert ev.keys == ["unpruned", "at_30%", "at_50%", "auc", "auc_0-50%", "auc_0-75%"]
    values = ev.estimates["m"]
    assert values["at_30%"].value == pytest.approx(t.metric_at(0.3))
    assert values["auc"].value == pytest.approx(t.area_under_curve())
    assert values["auc_0-75%"].value == pytest.approx(range_weights(xs, 0.0, 0.75) @ ys)
    grid, low, high = ev.bands["m"]
    assert np.allclose(grid, xs) and (low <= ys + 1e-12).all() and (ys <= high + 1e-12).all()


# --------------------------------------------------------------------------- the paired bootstrap


def test_identical_methods_differ_by_exactly_zero():
    rng = np.random.default_rng(2)
    golds = rng.integers(0, 2, 200)
    preds = [np.where(rng.random(200) < p, golds, 1 - golds).tolist() for p in (0.95, 0.8, 0.7, 0.6, 0.55)]
    a = run("a", [2, 2, 2, 2], preds, golds.tolist())
    ev = bootstrap_evidence({"a": [a], "b": [copy.deepcopy(a)]}, resamples=300)
    for key in ev.keys:
        diff = ev.difference("b", "a")[key]
        assert diff.value == diff.low == diff.high == 0.0 and not diff.resolved
        assert ev.estimates["a"][key].low < ev.estimates["a"][key].high or key == "unpruned"


def test_a_known_difference_is_recovered_and_pairing_narrows_its_interval():
    n = 1000
    golds = np.random.default_rng(3).integers(0, 2, n)
    good = run("good", [4, 4], [golds.tolist(), correct_on(golds, 900), correct_on(golds, 900)], golds.tolist())
    bad = run("bad", [4, 4], [golds.tolist(), correct_on(golds, 700), correct_on(golds, 700)], golds.tolist())
    ev = bootstrap_evidence({"good": [good], "bad": [bad]}, budgets=(0.5, 1.0), resamples=1000, seed=4)
    assert ev.reference == "good"
    assert ev.difference("bad")["auc_0-50%"].value == pytest.approx(-0.1)  # 1.0 -> 0.9 against 1.0 -> 0.7
    for key in ("at_50%", "at_100%"):
        diff = ev.difference("bad")[key]
        assert diff.value == pytest.approx(-0.2) and diff.low < -0.2 < diff.high and diff.resolved
        # the same resampled examples for both: the difference is far tighter than if they were independent
        widths = [ev.estimates[m][key].high - ev.estimates[m][key].low for m in ("good", "bad")]
        assert diff.high - diff.low < 0.85 * math.hypot(*widths)
        # se of a paired difference: sqrt(0.2 * 0.8 / n) = 0.0126, so the 95% interval is about 0.05 wide
        assert 0.035 < diff.high - diff.low < 0.065
    assert ev.difference("good", "bad")["at_50%"].value == pytest.approx(0.2)


def test_calibration_draws_give_their_own_spread_and_can_leave_a_difference_unresolved():
    golds = np.zeros(400, dtype=int)
    def method(name, per_draw):
        return [run(name, [4, 4], [golds.tolist(), correct_on(golds, c), correct_on(golds, c)], golds.tolist(), draw=d)
                for d, c in enumerate(per_draw)]
    ev = bootstrap_evidence({"a": method("a", [300, 340]), "b": method("b", [320, 320])}, resamples=200)
    assert ev.draws == 2
    est = ev.estimates["a"]["at_50%"]
    assert est.value == pytest.approx(0.8) and est.calib_low < 0.76 and est.calib_high > 0.84
    diff = ev.difference("b")["at_50%"]  # b - a: +0.05 in draw 0, -0.05 in draw 1
    assert diff.calib_low < 0 < diff.calib_high and not diff.resolved
    # a method run on one draw only (random reads no calibration data) is set against each draw of the others
    ev = bootstrap_evidence({"a": method("a", [300, 340]), "r": method("r", [200])}, resamples=200)
    assert ev.estimates["r"]["at_50%"].calib_low is None
    diff = ev.difference("r")["at_50%"]
    assert diff.value == pytest.approx(-0.3) and diff.calib_low < -0.3 < diff.calib_high and diff.resolved
    with pytest.raises(ValueError, match="calibration draws"):
        bootstrap_evidence({"a": method("a", [300, 340]), "b": method("b", [1, 2, 3])}, resamples=10)


def test_runs_without_per_example_records_or_on_other_examples_are_refused():
    golds = [0, 1, 1, 0]
    t = run("m", [4], [golds, golds], golds)
    bare = copy.deepcopy(t)
    for s in bare.steps:
        s.predictions = s.golds = None
    with pytest.raises(ValueError, match="per_example=True"):
        bootstrap_evidence({"m": [bare]})
    other = run("o", [4], [[0, 1, 1, 1], [0, 1, 1, 1]], [0, 1, 1, 1])
    with pytest.raises(ValueError, match="other examples"):
        bootstrap_evidence({"m": [t], "o": [other]})
    with pytest.raises(ValueError, match="reference"):
        bootstrap_evidence({"m": [t]}, reference="x")


# --------------------------------------------------------------------------- records and the preset


def test_steps_keep_per_example_records_compactly_and_old_json_still_loads(tmp_path):
    golds = [0, 1, 1, 0]
    t = run("m", [4], [golds, [1, 1, 1, 0]], golds)
    step = t.steps[1].to_dict()
    assert step["predictions"] == "1110" and step["golds"] == "0110"
    back = Trajectory.load(t.save(tmp_path / "t.json"))
    assert back.steps[1].predictions == [1, 1, 1, 0] and back.steps[1].golds == golds
    wide = Step(1, [], None, params=0, encoder_params=0, size_mb=0.0, seconds=0.0, predictions=[12, 3], golds=[3, 3])
    assert Step.from_dict(json.loads(json.dumps(wide.to_dict()))).predictions == [12, 3]
    old = t.to_dict()
    for s in old["steps"]:
        del s["predictions"], s["golds"]
    assert Trajectory.from_dict(old).steps[1].predictions is None
    bare = Step(0, [], None, params=0, encoder_params=0, size_mb=0.0, seconds=0.0).to_dict()
    assert "predictions" not in bare


def test_evaluate_per_example_and_the_driver_keep_predictions(tiny, tiny_calibration):
    from gnorm_kernels.engine.driver import run_method

    evaluation = tiny.task.batches("test", tiny.tokenizer, batch_size=64, limit=100)
    result = evaluate(tiny.model, evaluation, per_example=True)
    assert len(result["predictions"]) == len(result["golds"]) == 100
    assert np.mean(np.array(result["predictions"]) == np.array(result["golds"])) == pytest.approx(result["accuracy"])
    assert "predictions" not in evaluate(tiny.model, evaluation)
    t = run_method("random", tiny.model, tiny_calibration[:1], evaluation, steps=2, heads_per_step=8,
                   per_example=True, progress=False)
    assert all(len(s.predictions) == 100 and s.golds == result["golds"] for s in t.steps)
    assert t.steps[0].predictions == result["predictions"]


def test_the_authors_preset_scores_in_train_mode_z_scored_and_seeded():
    from gnorm_kernels.cli.commands import PRESET_DATA
    from gnorm_kernels.engine.driver import run_method
    from gnorm_kernels.scoring.gnorm import gnorm_scores
    from gnorm_kernels.scoring.presets import PRESETS, apply_preset, authors_gnorm_scores, zscore
    from gnorm_kernels.scoring.registry import get_method
    from gnorm_kernels.testing import tiny_random_model

    assert PRESET_DATA == {n: (p.calibration_size, p.batch_size) for n, p in PRESETS.items()}
    assert PRESET_DATA["authors"] == (1000, 128)
    grid = torch.tensor([[3.0, float("nan")], [1.0, 2.0]])
    z = zscore(grid)
    assert torch.isnan(z[0, 1]) and z[1, 0] < z[1, 1] < z[0, 0] and abs(float(z.nansum())) < 1e-6

    model = tiny_random_model("bert", hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    torch.manual_seed(0)
    batches = [{"input_ids": torch.randint(5, 99, (8, 12)), "attention_mask": torch.ones(8, 12, dtype=torch.long),
                "labels": torch.randint(0, 2, (8,))}]
    scorer, options, per_step = apply_preset("authors", get_method("greedy-gnorm"), {}, 5, seed=3)
    assert scorer is authors_gnorm_scores and options["dropout"] and per_step == 1  # the preset's, not 5
    assert apply_preset("authors", get_method("entropy"), {}, 2, keep_heads_per_step=True) == ("entropy", {}, 2)
    state = torch.random.get_rng_state()
    a, b = scorer(model, batches, **options), scorer(model, batches, **options)
    assert torch.equal(a, b) and torch.equal(state, torch.random.get_rng_state())  # seeded, global stream untouched
    assert not torch.allclose(a, zscore(gnorm_scores(model, batches)))  # dropout on: other scores
    assert model.training is False
    t = run_method("greedy-gnorm", model, batches, None, preset="authors", steps=1, progress=False)
    assert t.settings["scorer"].endswith("authors_gnorm_scores") and t.settings["scorer_options"]["dropout"]
    assert abs(float(t.steps[1].scores.nanmean())) < 1e-5  # the recorded grid is z-scored
    with pytest.raises(ValueError, match="unknown preset"):
        run_method("greedy-gnorm", model, batches, None, preset="nobody", steps=1, progress=False)


# --------------------------------------------------------------------------- the command line


def test_gnorm_compare_reports_intervals_and_calibration_draws(tiny, tmp_path, capsys):
    from gnorm_kernels.cli.commands import main

    out = tmp_path / "cmp"
    assert main(["compare", "--model", "tiny", "--task", "synthetic", "--methods", "greedy-gnorm,random",
                 "--random-seeds", "2", "--calib-draws", "2", "--calib-size", "32", "--eval-size", "96", "--heads-per-step", "8",
                 "--budgets", "0.1", "--resamples", "300", "--quiet", "--out", str(out)]) == 0
    names = sorted(p.name for p in (out / "trajectories").iterdir())
    # random reads no calibration data: it runs once per seed, not once per draw
    assert names == ["greedy-gnorm-calib0.json", "greedy-gnorm-calib1.json", "random-seed0.json", "random-seed1.json"]
    for f in ("accuracy.png", "masks.png", "table.md", "differences.csv"):
        assert (out / f).stat().st_size > 0
    first, second = (Trajectory.load(out / "trajectories" / f"greedy-gnorm-calib{d}.json") for d in (0, 1))
    assert first.settings["calibration_draw"] == 0 and second.settings["calibration_draw"] == 1
    assert first.settings["calibration_fingerprint"] != second.settings["calibration_fingerprint"]
    assert len(first.steps[-1].predictions) == 96

    rows = list(csv.DictReader(open(out / "table.csv")))
    assert [r["method"] for r in rows] == ["greedy-gnorm", "random"] and rows[0]["runs"] == rows[1]["runs"] == "2"
    for key in ("at_10%", "at_25%", "at_50%", "at_75%", "auc", "auc_0-50%", "auc_0-75%"):
        for suffix in ("", "_lo", "_hi", "_calib_lo", "_calib_hi", "_diff", "_diff_lo", "_diff_hi", "_resolved"):
            assert f"{key}{suffix}" in rows[0], f"{key}{suffix}"
        for r in rows:
            assert float(r[f"{key}_lo"]) <= float(r[key]) <= float(r[f"{key}_hi"])
        # greedy-gnorm is the reference: its interval against itself holds 0 (and is not resolved)
        assert float(rows[0][f"{key}_diff_lo"]) <= 0.0 <= float(rows[0][f"{key}_diff_hi"])
        assert rows[0][f"{key}_resolved"] == "False"
    pairs = list(csv.DictReader(open(out / "differences.csv")))
    assert [(p["method"], p["versus"]) for p in pairs] == [("greedy-gnorm", "random"), ("random", "greedy-gnorm")]
    assert float(pairs[0]["auc"]) == pytest.approx(-float(pairs[1]["auc"]))
    printed = capsys.readouterr().out
    assert "paired bootstrap" in printed and "calib [" in printed and "Differences from greedy-gnorm" in printed
    assert "| greedy-gnorm (median of 2) (reference) | +0.000 [+0.000, +0.000]" in printed


def test_accuracy_curves_shade_the_bootstrap_bands(tmp_path):
    import matplotlib.pyplot as plt

    from gnorm_kernels.evidence.viz import plot_accuracy_curves

    golds = np.random.default_rng(5).integers(0, 2, 300)
    a = run("a", [4, 4], [golds.tolist(), correct_on(golds, 270), correct_on(golds, 200)], golds.tolist())
    seeds = [run("r", [4, 4], [golds.tolist(), correct_on(golds, c), correct_on(golds, 150)], golds.tolist())
             for c in (180, 210)]
    ev = bootstrap_evidence({"a": [a], "r": seeds}, resamples=100)
    fig = plot_accuracy_curves({"a": [a], "r": seeds}, bands=ev.bands, x="percent")
    ax = fig.axes[0]
    assert len(ax.collections) == 2  # one shaded band per method; the seed range is dotted lines
    (path,) = ax.collections[0].get_paths()
    xs = path.vertices[:, 0]
    assert xs.min() == pytest.approx(0.0) and xs.max() == pytest.approx(100.0)
    assert "bootstrap" in ax.get_legend().get_title().get_text()
    assert sum(line.get_linestyle() == ":" for line in ax.lines) == 2
    assert "dotted: lowest and highest run" in ax.get_legend().get_title().get_text()
    fig.savefig(tmp_path / "bands.png")
    plt.close(fig)
    with pytest.raises(ValueError, match="not among the runs"):
        plot_accuracy_curves({"a": [a]}, bands={"zzz": ev.bands["a"]})


def test_gnorm_prune_with_the_authors_preset(model_dir, tmp_path):
    from gnorm_kernels.cli.commands import main

    common = ["prune", "--model", model_dir, "--task", "synthetic", "--preset", "authors", "--steps", "1",
              "--eval-size", "32", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    t = Trajectory.load(tmp_path / "a" / "trajectory.json")
    assert (t.settings["calibration_examples"], t.settings["calibration_batches"]) == (1000, 8)
    assert t.settings["scorer"].endswith("authors_gnorm_scores") and t.settings["preset"] == "authors"
    assert t.settings["scorer_options"]["dropout"] is True and t.settings["heads_per_step"] == 1
    assert main([*common, "--calib-size", "64", "--batch-size", "32", "--out", str(tmp_path / "b")]) == 0
    t = Trajectory.load(tmp_path / "b" / "trajectory.json")
    assert (t.settings["calibration_examples"], t.settings["calibration_batches"]) == (64, 2)


def _per_example_on_a_shard(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from gnorm_kernels.parallel import distributed
    from gnorm_kernels.testing import tiny_random_model

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=3)
    try:
        model = tiny_random_model("bert")
        torch.manual_seed(1)
        batches = [{"input_ids": torch.randint(5, 99, (n, 6)), "labels": torch.randint(0, 2, (n,))} for n in (4, 3)]
        mine = distributed.shard(batches, "evaluation batches", allow_empty=True)  # rank 2 holds none
        result = evaluate(model, mine, per_example=True)
        torch.save({k: result[k] for k in ("predictions", "golds", "accuracy")}, f"{out}/rank{rank}.pt")
        dist.barrier()  # leave together: a rank that tears gloo down while a peer still talks to it can abort
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_per_example_predictions_are_gathered_across_ranks_in_batch_order(tmp_path):
    import torch.multiprocessing as mp

    from gnorm_kernels.testing import tiny_random_model

    mp.spawn(_per_example_on_a_shard, args=(f"file://{tmp_path}/init", str(tmp_path)), nprocs=3, join=True)
    model = tiny_random_model("bert")
    torch.manual_seed(1)
    batches = [{"input_ids": torch.randint(5, 99, (n, 6)), "labels": torch.randint(0, 2, (n,))} for n in (4, 3)]
    alone = evaluate(model, batches, per_example=True)
    for rank in range(3):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["predictions"] == alone["predictions"] and got["golds"] == alone["golds"]
        assert got["accuracy"] == pytest.approx(alone["accuracy"])


def test_interval_curves_draw_each_method_through_its_points_with_a_band():
    import matplotlib.pyplot as plt

    from gnorm_kernels.evidence.viz import plot_interval_curves

    fig = plot_interval_curves({"greedy": [(50, 0.8, 0.7, 0.9), (0, 1.0, 1.0, 1.0), (25, 0.9, 0.85, 0.95)],
                                "random": [(0, 1.0, 1.0, 1.0), (50, 0.6, 0.4, 0.75)]}, ylabel="agreement")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["greedy", "random"]
    assert ax.lines[0].get_xdata().tolist() == [0, 25, 50]  # sorted by x
    assert ax.lines[0].get_ydata().tolist() == [1.0, 0.9, 0.8]
    assert len(ax.collections) == 2 and ax.get_ylabel() == "agreement"
    (path,) = ax.collections[1].get_paths()
    assert path.vertices[:, 1].min() == pytest.approx(0.4)
    plt.close(fig)


def test_findings_name_the_better_method_only_where_resolved():
    from gnorm_kernels.evidence.comparison import Comparison
    from gnorm_kernels.evidence.report import findings, key_label

    n = 1000
    golds = np.random.default_rng(3).integers(0, 2, n)
    good = run("good", [4, 4], [golds.tolist(), correct_on(golds, 900), correct_on(golds, 900)], golds.tolist())
    bad = run("bad", [4, 4], [golds.tolist(), correct_on(golds, 700), correct_on(golds, 700)], golds.tolist())
    same = run("same", [4, 4], [golds.tolist(), correct_on(golds, 900), correct_on(golds, 900)], golds.tolist())
    ev = bootstrap_evidence({"good": [good], "bad": [bad], "same": [same]}, budgets=(0.5,), ranges=(), resamples=500,
                            seed=4)
    text = findings(Comparison(runs={}, evidence=ev))
    lines = text.splitlines()
    assert len(lines) == 2 * (len(ev.keys) - 1)  # two pairs against the reference, every column but "unpruned"
    assert "- bad is **worse** than good, at 50% pruned (accuracy lower): bad minus good = -0.200" in text
    assert all("resolved (Holm over 4)" in line for line in lines)
    assert all(line.startswith("- same against good") and "**not resolved**" in line and "better" not in line
               for line in lines if "same" in line)
    assert key_label("auc_0-50%") == "AUC over 0-50% pruned" and key_label("auc") == "AUC over the whole run"
