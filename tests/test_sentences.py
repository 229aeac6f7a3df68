"""What notebooks 06 and 07 state, built in the package: seed-level differences, timing ratios
between any two candidates, the sentences made from them, per-example correctness, a GRAIN
structure's uniform twin and the figures' unit-aware axes."""

from __future__ import annotations

import numpy as np
import pytest
from test_statistics import FakeClock, run

from gnorm_kernels.evidence.sentences import difference_sentence, proportion_text, ratio_sentence
from gnorm_kernels.evidence.statistics import compare_means, seed_difference
from gnorm_kernels.evidence.timing import compare_timings


def test_one_run_per_arm_cannot_resolve_a_seed_difference():
    one = seed_difference([25], [27])
    assert one.value == -2 and not one.resolved and one.low != one.low  # NaN interval
    several = seed_difference([20, 21, 20, 22, 21], [27, 28, 27, 26, 28], resamples=500)
    assert several.resolved and several.high < 0
    overlapping = seed_difference([20, 27, 23], [21, 26, 24], resamples=500)
    assert not overlapping.resolved


def test_ratios_between_any_two_candidates_are_one_holm_family():
    clock, rng = FakeClock(), np.random.default_rng(1)
    fns = {"dense": clock.cost("dense", 1.0, 0.02, rng), "loop": clock.cost("loop", 0.3, 0.05, rng),
           "grouped": clock.cost("grouped", 0.3, 0.05, rng)}
    t = compare_timings(fns, rounds=12, clock=clock, resamples=500)
    pairs = [("loop", "grouped"), ("grouped", "dense")]
    found = t.ratio_verdicts(pairs)
    assert found[("grouped", "dense")].resolved and found[("grouped", "dense")].high < 1
    assert found[("grouped", "dense")].comparisons == 2
    assert ratio_sentence("grouped", "dense", found[("grouped", "dense")]).endswith(
        f"resolved, grouped is faster ({1 / found[('grouped', 'dense')].value:.2f}x the speed of dense).")
    assert "not resolved, the interval holds 1" in ratio_sentence("loop", "grouped", found[("loop", "grouped")])
    with pytest.raises(KeyError, match="timed candidates"):
        t.ratio_verdicts([("loop", "twin")])


def test_sentences_say_higher_only_when_resolved():
    assert proportion_text(300, 300).startswith("1.000 [0.987, 1.000] (Wilson 95%, n = 300)")
    rng = np.random.default_rng(0)
    a = (rng.random(500) < 0.9).astype(float)
    _, found = compare_means({"a": a, "b": np.zeros(500), "c": a}, [("a", "b"), ("c", "a")], resamples=200)
    assert difference_sentence("a", "b", found[("a", "b")]).endswith(": a higher.")
    assert difference_sentence("c", "a", found[("c", "a")]).endswith("the difference is exactly 0 on every resample.")
    b = a.copy()
    b[np.flatnonzero(a == 1)[:3]] = 0
    b[np.flatnonzero(a == 0)[:3]] = 1  # other examples right, the same accuracy
    tie = compare_means({"a": a, "b": b}, [("b", "a")], resamples=200)[1][("b", "a")]
    assert difference_sentence("b", "a", tie).endswith("these data do not say which is higher.")


def test_uniform_twin_keeps_heads_and_ffn_with_even_sizes():
    from gnorm_kernels.grain import GrainStructure, LayerStructure

    layer = LayerStructure(query=((0, 1, 2), (), (0,), ()), value=((0, 1, 2, 3), (), (0, 1), ()), ffn=(0, 5))
    empty = LayerStructure(query=((),) * 4, value=((),) * 4, ffn=(1,))
    twin = GrainStructure(4, 8, 16, (layer, empty)).uniform_twin()
    assert twin.layers[0].heads() == [0, 2] and twin.layers[0].ffn == (0, 5)
    assert [len(q) for q in twin.layers[0].query] == [2, 0, 2, 0]  # (3 + 1) / 2 query dims each
    assert [len(v) for v in twin.layers[0].value] == [3, 0, 3, 0]  # (4 + 2) / 2 value dims each
    assert twin.layers[1] == empty


def test_curves_of_kv_groups_say_so_on_their_axis():
    from gnorm_kernels.evidence.viz import plot_accuracy_curves, plot_time_ratios, unit_name

    golds = np.random.default_rng(0).integers(0, 2, 50)
    heads = run("greedy", [1.0, 0.9, 0.8], golds)
    groups = run("greedy", [1.0, 0.9, 0.8], golds)
    groups.unit, groups.num_kv_heads = "kv_group", 2
    assert unit_name([heads]) == "heads" and unit_name([groups]) == "KV groups" and unit_name([heads, groups]) == "units"
    ax = plot_accuracy_curves({"greedy": groups}, x="percent").axes[0]
    assert ax.get_xlabel() == "KV groups pruned (%)" and "KV groups" in ax.get_title()
    clock = FakeClock()
    t = compare_timings({"dense": clock.cost("dense", 1.0), "half": clock.cost("half", 0.5)}, rounds=4, clock=clock,
                        resamples=50)
    ax = plot_time_ratios(t).axes[0]
    assert ax.get_xscale() == "log" and [x.get_text() for x in ax.get_yticklabels()] == ["half"]


def test_correct_per_example_matches_the_accuracy():
    from gnorm_kernels.evaluation import correct_per_example, evaluate
    from gnorm_kernels.testing import random_batches, tiny_random_model

    model = tiny_random_model("bert", num_layers=1, num_heads=2, seed=0)
    batches = random_batches(model, num_batches=2, batch_size=8, seed=0)
    right = correct_per_example(model, batches)
    assert right.shape == (16,) and set(np.unique(right)) <= {0.0, 1.0}
    assert right.mean() == pytest.approx(evaluate(model, batches)["accuracy"])


def test_the_explorer_names_kv_groups_in_its_text_and_picture():
    from gnorm_kernels.engine.trajectory import Step, Trajectory
    from gnorm_kernels.evidence.widgets import pruning_explorer

    pytest.importorskip("ipywidgets")
    steps = [Step(i, pruned, {"accuracy": a}, params=10, encoder_params=8, size_mb=1.0, seconds=0.0)
             for i, (pruned, a) in enumerate([([], 1.0), ([(0, 1)], 0.9), ([(1, 0)], 0.8)])]
    groups = Trajectory(method="greedy", family="llama", num_layers=2, num_heads=4, greedy=True, prune_first="lowest",
                        settings={}, steps=steps, budget=2, complete=True, unit="kv_group", num_kv_heads=2)
    explorer = pruning_explorer({"greedy": groups}, ratio=0.5, draw=False)
    assert explorer.shown["unit"] == "kv_group" and explorer.summary_text().startswith("KV groups pruned: 2 of 4")
    from gnorm_kernels.evidence.stills import explorer_figure

    grid_ax, curve_ax = explorer_figure({"greedy": groups}, explorer.shown).axes[:2]
    assert grid_ax.get_xlabel() == "KV group" and curve_ax.get_xlabel() == "KV groups pruned (%)"
