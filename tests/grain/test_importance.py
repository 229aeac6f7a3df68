"""GRAIN's unit importance, moving average, structure regulariser, ranking, schedule and distillation."""

from __future__ import annotations

import pytest
import torch
from grain_helpers import small_model

import gnorm_kernels.grain
from gnorm_kernels.grain import (
    DensitySchedule,
    HiddenStateMaps,
    ImportanceEMA,
    Units,
    hidden_state_mse,
    mask_units,
    select_units,
    separated_backward,
    soft_cross_entropy,
    structure_regularize,
    unit_layout,
    unit_taylor_importance,
)
from gnorm_kernels.grain.distill import distill_layers
from gnorm_kernels.testing import random_batches

# --------------------------------------------------------------------------- importance


def test_unit_taylor_importance_is_the_gradient_of_the_unit_masks():
    model = small_model("bert", num_layers=2)
    layout = unit_layout(model)
    batch = random_batches(model, batch_size=4)[0]
    gates = Units.full(layout).map(lambda t: t.float().requires_grad_())
    with mask_units(model, gates):
        loss = model(**batch).loss
    loss.backward()
    scores = unit_taylor_importance(layout, reads="official")
    torch.testing.assert_close(scores.query, gates.query.grad.abs(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores.value, gates.value.grad.abs(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores.ffn, gates.ffn.grad.abs(), atol=1e-5, rtol=1e-4)
    everything = unit_taylor_importance(layout, reads="all")
    assert not torch.allclose(everything.query, scores.query)
    assert not hasattr(gnorm_kernels.grain, "taylor_importance")  # no clash with the head score


def test_ema_and_structure_regulariser():
    layout = unit_layout(small_model("bert", num_layers=2))
    ema = ImportanceEMA(beta=0.5)
    ones = Units.zeros(layout).map(lambda t: t + 1.0)
    ema.update(ones)
    avg = ema.update(ones.map(lambda t: 3 * t))
    assert torch.allclose(avg.ffn, torch.full_like(avg.ffn, 0.5 * 0.5 + 0.5 * 3))
    masks = Units.full(layout)
    masks.value[0, 0, 2:] = False  # head (0, 0) keeps 2 of 8 value units
    reg = structure_regularize(ones, masks, alpha=0.3)
    assert torch.allclose(reg.value[0, 0], torch.full((8,), torch.tanh(torch.tensor(0.25 / 0.3)).item()))
    assert torch.allclose(reg.value[0, 1], torch.full((8,), torch.tanh(torch.tensor(1 / 0.3)).item()))
    assert torch.equal(reg.query, ones.query) and torch.equal(reg.ffn, ones.ffn)


def test_select_units_ranks_globally_shrinks_only_and_drops_orphan_queries():
    layout = unit_layout(small_model("bert", num_layers=2))
    g = torch.Generator().manual_seed(0)
    scores = Units.zeros(layout).map(lambda t: torch.rand(t.shape, generator=g))
    scores.ffn += 10.0  # every FFN neuron beats every attention unit
    masks = Units.full(layout)
    masks.ffn[0, :3] = False  # already pruned: must stay pruned despite top scores
    kept = select_units(scores, masks, 0.6)  # a budget larger than the FFN neurons left
    assert abs(kept.density() - 0.6) <= 1 / kept.total
    assert not kept.ffn[0, :3].any()
    assert kept.ffn.sum() == masks.ffn.sum()  # the FFN neurons won the global ranking
    assert torch.all(kept.flat() <= masks.flat())
    # a head whose value units all lose keeps no query units; their budget goes elsewhere
    scores2 = scores.clone()
    scores2.ffn -= 10.0
    scores2.query[0, 0] = 100.0
    scores2.value[0, 0] = -1.0
    kept2 = select_units(scores2, Units.full(layout), 0.5)
    assert not kept2.value[0, 0].any() and not kept2.query[0, 0].any()
    assert abs(kept2.density() - 0.5) <= 1 / kept2.total
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        select_units(scores, masks, 0.0)


def test_structure_regulariser_empties_heads_faster():
    layout = unit_layout(small_model("bert", num_layers=1, num_heads=4))
    g = torch.Generator().manual_seed(0)
    scores = Units.zeros(layout).map(lambda t: torch.rand(t.shape, generator=g))
    scores.ffn += 10.0  # keep the competition inside attention

    def prune(regularise):
        masks = Units.full(layout)
        for density in torch.linspace(0.95, 0.6, 15).tolist():
            ranked = structure_regularize(scores, masks, 0.3) if regularise else scores
            masks = select_units(ranked, masks, density)
        return masks

    plain, reg = prune(False), prune(True)
    assert reg.heads_kept().sum() < plain.heads_kept().sum()


# --------------------------------------------------------------------------- schedule


def test_density_schedule_shape():
    s = DensitySchedule(0.1, 100)
    assert s(0) == 1.0 and s(19) == 1.0
    assert 0.1 < s(20) < 1.0
    assert s(39) == pytest.approx(0.1) and s(40) == pytest.approx(0.1) and s(99) == pytest.approx(0.1)
    values = [s(i) for i in range(100)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    # cubic: halfway through the ramp, (1 - 0.5)^3 of the way is left
    assert s(29) == pytest.approx(0.1 + 0.9 * 0.5**3)
    assert [i for i in range(100) if s.pruning(i)] == list(range(20, 40))


@pytest.mark.parametrize("density", [0.0, -0.5, 1.5])
def test_density_schedule_rejects_bad_density(density):
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        DensitySchedule(density, 100)


def test_density_schedule_needs_room_for_both_phases():
    with pytest.raises(ValueError, match="no distillation-only phase"):
        DensitySchedule(0.5, 2)
    with pytest.raises(ValueError, match="no step for the pruning ramp"):
        DensitySchedule(0.5, 3, prune_start=0.3, prune_end=0.4)
    DensitySchedule(1.0, 1)  # nothing to prune, nothing to fit


# --------------------------------------------------------------------------- distillation


def test_soft_cross_entropy_and_hidden_mse():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    expected = -(torch.softmax(t / 8, -1) * torch.log_softmax(s / 8, -1)).sum(-1).mean()
    torch.testing.assert_close(soft_cross_entropy(s, t), expected)
    assert distill_layers(4) == [0, 2, 4] and distill_layers(5) == [0, 2, 4, 5]
    maps = HiddenStateMaps([0, 2], 6)
    states = [torch.randn(2, 5, 6) for _ in range(3)]
    assert hidden_state_mse(states, states, torch.ones(2, 5), maps).item() == pytest.approx(0.0, abs=1e-12)
    other = [x.clone() for x in states]
    mask = torch.ones(2, 5)
    mask[1, 3:] = 0
    for x in other:
        x[1, 3:] += 5.0  # differences only at padding positions
    assert hidden_state_mse(states, other, mask, maps).item() == pytest.approx(0.0, abs=1e-12)
    assert hidden_state_mse(states, other, None, maps).item() > 1.0


def test_separated_backward_reads_the_ce_gradient_alone():
    w = torch.nn.Parameter(torch.randn(3))
    loss_ce = (w**2).sum()
    loss_hidden = (3 * w).sum()
    seen = separated_backward(loss_ce, loss_hidden, lambda: w.grad.clone())
    torch.testing.assert_close(seen, 2 * w.detach())
    torch.testing.assert_close(w.grad, 2 * w.detach() + 3)
