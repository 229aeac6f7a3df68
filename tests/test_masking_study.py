"""Masking studies (gnorm_kernels.evidence.ablation) and rank correlations (gnorm_kernels.evidence.ranks):
contrasts of per-example verdicts with paired intervals and Holm's correction, on data built here and
on a small random BERT, and the figures the notebooks draw from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gnorm_kernels.evaluation import evaluate
from gnorm_kernels.evidence.ablation import (
    MaskingStudy,
    ablation_counts,
    accuracy_text,
    change_sentence,
    contrast_verdicts,
    correct_under_mask,
    drop_grid,
)
from gnorm_kernels.evidence.ranks import (
    average_ranks,
    correlation_sentence,
    prune_positions,
    rank_correlations,
    spearman,
    tied_heads,
)
from gnorm_kernels.heads.masking import mask_heads
from gnorm_kernels.testing import random_batches, tiny_random_model


def verdicts(n: int, right: int, seed: int) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[np.random.default_rng(seed).permutation(n)[:right]] = True
    return out


# --------------------------------------------------------------------------- contrasts


def test_contrasts_are_the_weighted_means_and_holm_counts_the_family():
    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.9
    worse = base & (rng.random(400) < 0.8)  # loses about 18 points, example by example
    same = base.copy()
    same[:2] = ~same[:2]  # two verdicts flipped: no resolvable change
    found = contrast_verdicts({"base": base, "worse": worse, "same": same},
                              {"drop worse": {"base": 1, "worse": -1}, "drop same": {"base": 1, "same": -1}},
                              resamples=500)
    assert found["drop worse"].value == pytest.approx(base.mean() - worse.mean())
    assert found["drop worse"].resolved and found["drop worse"].low > 0.1
    assert not found["drop same"].resolved
    assert {v.comparisons for v in found.values()} == {2}
    with pytest.raises(KeyError, match="nothing"):
        contrast_verdicts({"base": base}, {"x": {"nothing": 1}})


def test_paired_intervals_are_narrower_than_the_accuracies_own():
    base = verdicts(1000, 900, 1)
    other = base.copy()
    other[np.flatnonzero(base)[:30]] = False  # 30 examples lost, nothing else moves
    found = contrast_verdicts({"a": base, "b": other}, {"d": {"a": 1, "b": -1}}, resamples=1000)["d"]
    assert found.value == pytest.approx(0.03)
    assert found.resolved and found.high - found.low < 0.03  # an unpaired interval would be about 0.05 wide


def test_accuracy_text_uses_wilson_and_keeps_a_width_at_one():
    text = accuracy_text(np.ones(50, dtype=bool))
    assert text.startswith("1.000 [0.929, 1.000]") and "Wilson 95%, n = 50" in text


def test_change_sentences_name_what_the_interval_allows():
    base = verdicts(500, 450, 2)
    masked = base.copy()
    masked[np.flatnonzero(base)[:60]] = False
    found = contrast_verdicts({"b": base, "m": masked, "z": base.copy()},
                              {"big": {"b": 1, "m": -1}, "zero": {"b": 1, "z": -1}}, resamples=300)
    assert "**worse**" in change_sentence("head (0, 1)", found["big"])
    assert "changes no test verdict" in change_sentence("head (0, 2)", found["zero"])
    assert ablation_counts(found) == {"comparisons": 2, "worse": 1, "better": 0, "not resolved": 1,
                                      "no verdict changed": 1}


# --------------------------------------------------------------------------- on a model


@pytest.fixture(scope="module")
def setup():
    model = tiny_random_model("bert", num_layers=2, num_heads=4, seed=3)
    return model, random_batches(model, num_batches=3, batch_size=16, seed=1)


def test_correct_under_mask_matches_evaluate_with_the_same_mask(setup):
    model, batches = setup
    gates = torch.ones(2, 4)
    gates[0, 1] = gates[1, 3] = 0
    with mask_heads(model, gates):
        expected = evaluate(model, batches)["accuracy"]
    got = correct_under_mask(model, batches, [(0, 1), (1, 3)])
    assert got.dtype == bool and len(got) == 48 and got.mean() == pytest.approx(expected)
    assert correct_under_mask(model, batches).mean() == pytest.approx(evaluate(model, batches)["accuracy"])


def test_a_study_computes_drops_interactions_and_additivity_from_its_runs(setup):
    model, batches = setup
    study = MaskingStudy(model, batches, resamples=200)
    a, b = (0, 1), (1, 2)
    drops = study.single_drops([a, b])
    base = study.accuracy()
    assert drops[a].value == pytest.approx(base - study.accuracy([a]))
    gaps = study.joint_gaps({"one": [a], "pair": [a, b]})
    # one head: the prediction is its own measurement; a pair: its joint drop minus the single drops
    assert gaps["one"].value == pytest.approx(0.0) and gaps["one"].comparisons == 2
    assert gaps["pair"].value == pytest.approx((base - study.accuracy([a, b])) - drops[a].value - drops[b].value)
    layer = study.drops({"layer 0": [(0, h) for h in range(4)]})["layer 0"]
    assert layer.value == pytest.approx(base - study.accuracy([(0, h) for h in range(4)]))
    grid, resolved = drop_grid(drops, (2, 4))
    assert grid[0, 1] == drops[a].value and np.isnan(grid[0, 0]) and resolved.dtype == bool
    assert len(study.runs) == 5  # every set of masked heads evaluated once


# --------------------------------------------------------------------------- ranks


def test_average_ranks_share_ties():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 0.0])).tolist() == [2.5, 1.0, 2.5, 0.0]
    assert average_ranks(np.array([[1.0, 2.0], [5.0, 5.0]])).tolist() == [[0.0, 1.0], [0.5, 0.5]]


def test_spearman_ignores_missing_heads_and_matches_the_definition():
    a = torch.tensor([[1.0, 2.0, 3.0], [4.0, float("nan"), 6.0]])
    b = torch.tensor([[10.0, 30.0, 20.0], [40.0, 0.0, 60.0]])
    assert spearman(a, b) == pytest.approx(0.9)  # ranks 0..4 against 0,2,1,3,4: 1 - 6*2/(5*24)
    assert spearman(a, -b) == pytest.approx(-0.9)


def test_rank_correlations_resolve_a_strong_relation_and_not_noise():
    rng = np.random.default_rng(5)
    x = rng.random((4, 8))
    found = rank_correlations({"same": (x, x + 0.01 * rng.random((4, 8))), "noise": (x, rng.random((4, 8)))},
                              resamples=500)
    assert found["same"].resolved and found["same"].value > 0.9
    assert found["same"].comparisons == 2
    assert "positive" in correlation_sentence(found["same"])
    assert not found["noise"].resolved or abs(found["noise"].value) > 0.3
    assert "Holm over 2" in correlation_sentence(found["noise"])


def test_prune_positions_follow_the_direction_and_skip_pruned_heads():
    scores = torch.tensor([[0.3, float("nan")], [0.1, 0.2]])
    assert prune_positions(scores, [(1, 0), (0, 0)]) == {(1, 0): 1, (0, 0): 3}
    assert prune_positions(scores, [(1, 0), (0, 0)], prune_first="highest") == {(1, 0): 3, (0, 0): 1}
    with pytest.raises(KeyError):
        prune_positions(scores, [(0, 1)])


def test_tied_heads_counts_shared_values():
    assert tied_heads(np.array([[0.0, 0.0, 1.0], [2.0, 0.0, float("nan")]])) == 3


# --------------------------------------------------------------------------- figures


def test_drop_grid_figure_frames_resolved_heads():
    pytest.importorskip("seaborn")
    from gnorm_kernels.evidence.viz import plot_drop_grid

    drops = np.array([[12.0, 0.0], [-0.5, np.nan]])
    fig = plot_drop_grid(drops, resolved=np.array([[True, False], [False, False]]))
    ax = fig.axes[0]
    assert len(ax.patches) == 1 and "framed" in ax.get_title()
    assert [t.get_text() for t in ax.texts] == ["12.0", "0.0", "-0.5"]


def test_head_grid_colours_mean_pruned_first_in_both_directions():
    pytest.importorskip("seaborn")
    from gnorm_kernels.evidence.viz import plot_head_grid

    grid = np.array([[1.0, 2.0], [3.0, 4.0]])
    low = plot_head_grid(grid, prune_first="lowest").axes[0].collections[0]
    high = plot_head_grid(grid, prune_first="highest").axes[0].collections[0]
    # the head each run prunes first gets the same (dark) colour
    first_low = low.get_facecolors()[0]  # (0, 0) holds the lowest score
    first_high = high.get_facecolors()[3]  # (1, 1) holds the highest
    assert np.allclose(first_low, first_high)
    with pytest.raises(ValueError, match="prune_first"):
        plot_head_grid(grid, prune_first="middle")
