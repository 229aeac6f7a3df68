"""The notebook widgets, driven without a browser: what they show must match the model and the
trajectories they read."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("ipywidgets")

from gnorm_kernels.engine.driver import greedy_prune, static_prune
from gnorm_kernels.engine.trajectory import Step, Trajectory
from gnorm_kernels.evaluation import evaluate
from gnorm_kernels.evidence.widgets import head_toggle_grid, pruning_explorer
from gnorm_kernels.heads.masking import mask_heads
from gnorm_kernels.heads.pruning import prune_heads
from gnorm_kernels.testing import random_batches, tiny_random_model


@pytest.fixture(scope="module")
def model():
    return tiny_random_model("bert", num_layers=2, num_heads=4, seed=3)


@pytest.fixture(scope="module")
def batches(model):
    return random_batches(model, num_batches=2, batch_size=8, seed=1)


# --------------------------------------------------------------------------- head toggles


def _masked_eval(model, batches, heads):
    gates = torch.ones(2, 4)
    for layer, head in heads:
        gates[layer, head] = 0.0
    with mask_heads(model, gates):
        return evaluate(model, batches)


def test_toggle_grid_starts_with_every_head_active(model, batches):
    grid = head_toggle_grid(model, batches)
    full = evaluate(model, batches)
    assert grid.shown["mask"].all()
    assert grid.shown["masked"] == []
    assert grid.shown["accuracy"] == full["accuracy"]
    assert grid.shown["loss"] == pytest.approx(full["loss"])
    assert grid.shown["change"] == 0.0
    assert len(grid.buttons) == 8


def test_toggling_a_head_shows_the_masked_models_metrics(model, batches):
    grid = head_toggle_grid(model, batches)
    base_loss = grid.shown["loss"]
    grid.toggle(1, 2)
    expected = _masked_eval(model, batches, [(1, 2)])
    assert grid.shown["masked"] == [(1, 2)]
    assert not grid.shown["mask"][1, 2] and int(grid.shown["mask"].sum()) == 7
    assert grid.shown["loss"] == pytest.approx(expected["loss"])
    assert grid.shown["loss"] != pytest.approx(base_loss)  # masking really changed the model's output
    assert grid.shown["accuracy"] == expected["accuracy"]
    assert grid.buttons[(1, 2)].button_style == "danger"

    # a click on the button itself (the widget's value) does the same as toggle()
    grid.buttons[(0, 0)].value = True
    expected = _masked_eval(model, batches, [(0, 0), (1, 2)])
    assert grid.shown["masked"] == [(0, 0), (1, 2)]
    assert grid.shown["loss"] == pytest.approx(expected["loss"])

    grid.reset()
    assert grid.shown["masked"] == [] and grid.shown["loss"] == pytest.approx(base_loss)
    assert grid.buttons[(1, 2)].button_style == ""


def test_set_mask_sets_every_button(model, batches):
    grid = head_toggle_grid(model, batches)
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    shown = grid.set_mask(mask)
    assert torch.equal(shown["mask"], mask)
    assert shown["masked"] == [(0, 1), (0, 3), (1, 0)]
    assert shown["loss"] == pytest.approx(_masked_eval(model, batches, [(0, 1), (0, 3), (1, 0)])["loss"])
    with pytest.raises(ValueError, match="shape"):
        grid.set_mask(torch.ones(3, 4))


def test_pruned_heads_are_disabled(batches):
    model = tiny_random_model("bert", num_layers=2, num_heads=4, seed=3)
    prune_heads(model, {0: [1]})
    grid = head_toggle_grid(model, batches)
    assert grid.buttons[(0, 1)].disabled
    assert not grid.shown["mask"][0, 1] and int(grid.shown["mask"].sum()) == 7
    with pytest.raises(ValueError, match="pruned"):
        grid.toggle(0, 1)
    with pytest.raises(ValueError, match="no head"):
        grid.toggle(2, 0)


def test_toggle_grid_controls_carry_stable_css_classes(model, batches):
    grid = head_toggle_grid(model, batches)
    for (layer, head), button in grid.buttons.items():
        assert set(button._dom_classes) == {"gnorm-head", f"gnorm-head-{layer}-{head}"}
    assert "gnorm-summary" in grid.status._dom_classes
    assert "masked" in grid.status.value


def test_toggle_grid_refuses_no_batches(model):
    with pytest.raises(ValueError, match="at least one batch"):
        head_toggle_grid(model, [])


# --------------------------------------------------------------------------- pruning explorer


def _handmade(name: str, order: list[tuple[int, int]], per_step: int = 1, evaluated_every: int = 1) -> Trajectory:
    """A trajectory with distinct, known numbers at every step."""
    steps = [Step(0, [], {"accuracy": 0.9}, params=1000, encoder_params=600, size_mb=4.0, seconds=0.0)]
    for index, start in enumerate(range(0, len(order), per_step), start=1):
        pruned = order[start : start + per_step]
        last = start + per_step >= len(order)
        metrics = {"accuracy": 0.9 - 0.01 * index} if (index % evaluated_every == 0 or last) else None
        steps.append(Step(index, pruned, metrics, params=1000 - 10 * index, encoder_params=600 - 10 * index,
                          size_mb=4.0 - 0.04 * index, seconds=0.1))
    return Trajectory(method=name, family="bert", num_layers=2, num_heads=4, greedy=True, prune_first="lowest",
                      settings={"metric": "accuracy"}, steps=steps, budget=len(order), complete=True)


ORDER = [(1, 3), (0, 0), (1, 1), (0, 2), (0, 1), (1, 0), (0, 3), (1, 2)]


def test_explorer_shows_what_the_trajectory_says_for_a_ratio():
    a = _handmade("a", ORDER)
    b = _handmade("b", ORDER[::-1])
    explorer = pruning_explorer({"a": a, "b": b}, draw=False)
    assert explorer.shown["step"] == 0 and explorer.shown["mask"].all()
    for ratio in (0.125, 0.5, 0.75, 1.0):
        shown = explorer.set_ratio(ratio)
        n = round(ratio * 8)
        assert shown["heads_pruned"] == n and shown["step"] == n
        assert torch.equal(shown["mask"], a.mask_at(ratio))
        assert shown["accuracy"] == pytest.approx(0.9 - 0.01 * n)
        assert shown["params"] == 1000 - 10 * n and shown["encoder_params"] == 600 - 10 * n
        assert shown["size_mb"] == pytest.approx(4.0 - 0.04 * n)
    # moving the slider widget itself updates the same way
    explorer.slider.value = 3 / 8
    assert explorer.shown["heads_pruned"] == 3 and torch.equal(explorer.shown["mask"], a.mask_at(3 / 8))
    # the dropdown switches trajectories at the same ratio
    explorer.dropdown.value = "b"
    assert explorer.shown["method"] == "b"
    assert torch.equal(explorer.shown["mask"], b.mask_at(3 / 8))
    assert not explorer.shown["mask"][1, 2] and explorer.shown["mask"][1, 3]
    assert "3 of 8" in explorer.summary.value


def test_explorer_controls_carry_stable_css_classes():
    explorer = pruning_explorer({"a": _handmade("a", ORDER)}, draw=False)
    assert "gnorm-ratio" in explorer.slider._dom_classes
    assert "gnorm-method" in explorer.dropdown._dom_classes
    assert "gnorm-summary" in explorer.summary._dom_classes
    assert "heads pruned" in explorer.summary.value


def test_explorer_with_several_heads_per_step_and_sparse_evaluation():
    traj = _handmade("pairs", ORDER, per_step=2, evaluated_every=2)  # steps of 2 heads; steps 1, 3 not evaluated
    explorer = pruning_explorer({"pairs": traj}, draw=False)
    shown = explorer.set_ratio(3 / 8)  # 3 heads wanted: the last step not past it has 2
    assert shown["step"] == 1 and shown["heads_pruned"] == 2
    assert torch.equal(shown["mask"], traj.mask_at(steps=1))
    assert not shown["evaluated"]
    assert shown["accuracy"] == pytest.approx(traj.metric_at(2 / 8))
    assert math.isclose(shown["accuracy"], 0.9 + (0.88 - 0.9) * 0.5)  # halfway between steps 0 and 2
    assert "interpolated" in explorer.summary.value
    shown = explorer.set_ratio(0.5)
    assert shown["step"] == 2 and shown["evaluated"] and shown["accuracy"] == pytest.approx(0.88)


def test_explorer_clips_the_slider_to_the_run_and_checks_input():
    full = _handmade("full", ORDER)
    half = _handmade("half", ORDER[:4])
    explorer = pruning_explorer({"full": full, "half": half}, method="full", ratio=0.75, draw=False)
    assert explorer.shown["heads_pruned"] == 6
    explorer.set_method("half")
    assert explorer.slider.max == pytest.approx(0.5)
    assert explorer.shown["heads_pruned"] == 4 and explorer.shown["method"] == "half"
    assert explorer.set_ratio(1.0)["heads_pruned"] == 4
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        explorer.set_ratio(1.5)
    with pytest.raises(ValueError, match="unknown method"):
        explorer.set_method("nope")
    with pytest.raises(ValueError, match="non-empty"):
        pruning_explorer({})
    with pytest.raises(TypeError, match="Trajectory"):
        pruning_explorer({"x": object()})


def test_explorer_on_real_runs_matches_the_pruned_model(model, batches):
    greedy = greedy_prune(model, batches, batches, progress=False)
    static = static_prune(model, batches, batches, scorer="entropy", prune_first="highest", progress=False)
    explorer = pruning_explorer({"greedy-gnorm": greedy, "entropy": static})
    shown = explorer.set_ratio(0.25)
    assert shown["step"] == 2 and torch.equal(shown["mask"], greedy.mask_at(0.25))
    # what the explorer shows is the pruned model's own accuracy and size
    pruned = prune_heads(tiny_random_model("bert", num_layers=2, num_heads=4, seed=3), greedy.pruned_heads_at(0.25))
    assert shown["accuracy"] == evaluate(pruned, batches)["accuracy"]
    assert shown["params"] == sum(p.numel() for p in pruned.parameters())
    assert explorer.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    explorer.set_method("entropy")
    assert torch.equal(explorer.shown["mask"], static.mask_at(0.25))
    assert explorer.image.value[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- still pictures without a kernel


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_displaying_a_widget_publishes_a_still_picture_and_text_beside_it(model, batches):
    import base64

    from IPython.core.formatters import DisplayFormatter

    grid = head_toggle_grid(model, batches)
    before = grid.still()
    grid.toggle(1, 2)
    after = grid.still()
    assert _png_size(after)[0] > 50 and after != before  # the picture follows the state
    data, _ = DisplayFormatter().format(grid)
    assert "application/vnd.jupyter.widget-view+json" in data
    assert base64.b64decode(data["image/png"]) == after
    assert "masked: (1, 2)" in data["text/plain"] and "points against" in data["text/plain"]

    explorer = pruning_explorer({"a": _handmade("a", ORDER), "b": _handmade("b", ORDER[::-1])}, draw=False)
    explorer.set_ratio(0.5)
    data, _ = DisplayFormatter().format(explorer)
    assert {"application/vnd.jupyter.widget-view+json", "image/png", "text/plain"} <= set(data)
    assert data["text/plain"].startswith("a: heads pruned: 4 of 8 (50.0%), step 4")
    explorer.set_method("b")
    assert base64.b64decode(DisplayFormatter().format(explorer)[0]["image/png"]) != base64.b64decode(data["image/png"])
