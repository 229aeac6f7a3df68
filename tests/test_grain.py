"""GRAIN: units and masks, importance, schedule, distillation, shrinking, uneven-head attention,
checkpoints and the grain_prune driver. Everything runs on tiny random models in seconds."""

from __future__ import annotations

import copy

import pytest
import torch

from gnorm_kernels.grain import (
    DensitySchedule,
    GrainStructure,
    HiddenStateMaps,
    ImportanceEMA,
    UnevenSelfAttention,
    Units,
    grain_prune,
    hidden_state_mse,
    load_grain,
    mask_units,
    plan_groups,
    save_grain,
    select_units,
    separated_backward,
    set_attention_impl,
    shrink_model,
    soft_cross_entropy,
    structure_regularize,
    taylor_importance,
    unit_layout,
)
from gnorm_kernels.grain.distill import distill_layers
from gnorm_kernels.pruning import prune_heads
from gnorm_kernels.testing import random_batches, tiny_random_model

IMPLS = ("auto", "grouped", "padded", "loop")


def _model(family="bert", attn="eager", **kw):
    # a larger init scale than the default 0.02 so that masking visibly changes the logits
    kw.setdefault("num_layers", 3)
    return tiny_random_model(family, attn_implementation=attn, initializer_range=0.2, **kw)


def _inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


def _hard_masks(layout, seed=1):
    """Random masks with the awkward cases: an empty head, a head without query units, a layer
    without attention and a layer without FFN."""
    g = torch.Generator().manual_seed(seed)
    masks = Units.full(layout).map(lambda t: torch.rand(t.shape, generator=g) < 0.5)
    masks.value[0, 1] = False
    masks.query[0, 2] = False
    masks.value[0, 2, 0] = True
    masks.value[1] = False
    masks.ffn[2] = False
    return masks


# --------------------------------------------------------------------------- masked == shrunk


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("seq_len", [11, 70], ids=["short", "long"])  # matmul / fused attention
def test_shrunk_model_matches_masked_model(family, attn, seq_len):
    model = _model(family, attn, max_position_embeddings=80)
    layout = unit_layout(model)
    masks = _hard_masks(layout)
    batch = _inputs(random_batches(model, batch_size=5, seq_len=seq_len)[0])
    with torch.no_grad():
        dense = model(**batch).logits
        with mask_units(model, masks):
            masked = model(**batch, output_hidden_states=True)
        shrunk = shrink_model(copy.deepcopy(model), masks)
        assert (dense - masked.logits).abs().max() > 1e-2  # the masks matter
        for impl in IMPLS:
            set_attention_impl(shrunk, impl)
            out = shrunk(**batch, output_hidden_states=True)
            torch.testing.assert_close(out.logits, masked.logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.hidden_states[-1], masked.hidden_states[-1], atol=1e-5, rtol=1e-5)
    # the removed weights are gone
    layer0 = shrunk.base_model.encoder.layer[0]
    assert layer0.attention.self.query.out_features == int(masks.query[0, masks.value[0].any(-1)].sum())
    assert layer0.attention.output.dense.in_features == int(masks.value[0].sum())
    assert shrunk.base_model.encoder.layer[1].attention.self.num_heads == 0
    assert shrunk.base_model.encoder.layer[2].intermediate.dense.out_features == 0


def test_masks_ignore_and_shrink_head_pruned_models():
    model = _model("bert")
    prune_heads(model, {0: [0, 3], 1: [1]})
    layout = unit_layout(model)
    masks = Units.full(layout)
    assert not masks.value[0, 0].any() and not masks.query[1, 1].any()
    g = torch.Generator().manual_seed(3)
    masks = masks.map(lambda t: t & (torch.rand(t.shape, generator=g) < 0.6))
    batch = _inputs(random_batches(model)[0])
    with torch.no_grad():
        with mask_units(model, masks):
            masked = model(**batch).logits
        shrunk = shrink_model(copy.deepcopy(model), masks)
        torch.testing.assert_close(shrunk(**batch).logits, masked, atol=1e-5, rtol=1e-5)


def test_mask_hooks_are_removed_on_exit_and_on_error():
    model = _model("bert")
    layout = unit_layout(model)
    batch = _inputs(random_batches(model)[0])
    with torch.no_grad():
        before = model(**batch).logits
        with pytest.raises(RuntimeError):
            with mask_units(model, Units.full(layout).map(torch.zeros_like)):
                raise RuntimeError("boom")
        torch.testing.assert_close(model(**batch).logits, before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_mask_shape_errors_are_clear():
    model = _model("bert")
    layout = unit_layout(model)
    bad = Units.full(layout)
    bad.ffn = bad.ffn[:, :5]
    with pytest.raises(ValueError, match="ffn mask must have shape"):
        with mask_units(model, bad):
            pass


def test_unsupported_family_is_refused():
    with pytest.raises(ValueError, match="GRAIN units are defined for"):
        unit_layout(tiny_random_model("albert"))


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_save_and_load_grain_round_trip(tmp_path, family):
    model = _model(family)
    masks = _hard_masks(unit_layout(model), seed=5)
    batch = _inputs(random_batches(model, batch_size=3)[0])
    with torch.no_grad():
        with mask_units(model, masks):
            masked = model(**batch).logits
    shrunk = shrink_model(copy.deepcopy(model), masks)
    save_grain(shrunk, tmp_path / "ckpt")
    for impl in IMPLS:
        loaded = load_grain(tmp_path / "ckpt", impl=impl)
        with torch.no_grad():
            torch.testing.assert_close(loaded(**batch).logits, masked, atol=1e-5, rtol=1e-5)
    assert GrainStructure.from_dict(loaded.config.grain_structure) == GrainStructure.from_masks(masks)


def test_grain_folders_load_through_load_pruned_and_load_model(tmp_path):
    from gnorm_kernels.data import synthetic_tokenizer
    from gnorm_kernels.models import load_model
    from gnorm_kernels.pruning import load_pruned

    tokenizer = synthetic_tokenizer()
    model = _model("bert", vocab_size=len(tokenizer))
    masks = _hard_masks(unit_layout(model), seed=3)
    batch = _inputs(random_batches(model, batch_size=3)[0])
    with torch.no_grad(), mask_units(model, masks):
        masked = model(**batch).logits
    save_grain(shrink_model(copy.deepcopy(model), masks), tmp_path / "ckpt", tokenizer)
    via_pruned = load_pruned(tmp_path / "ckpt")
    via_model, loaded_tokenizer = load_model(tmp_path / "ckpt")
    assert len(loaded_tokenizer) == len(tokenizer)
    for loaded in (via_pruned, via_model):
        assert GrainStructure.from_dict(loaded.config.grain_structure) == GrainStructure.from_masks(masks)
        with torch.no_grad():
            torch.testing.assert_close(loaded(**batch).logits, masked, atol=1e-5, rtol=1e-5)


def test_head_tools_refuse_a_shrunk_model_clearly():
    from gnorm_kernels.arch import head_layout

    model = _model("bert")
    shrunk = shrink_model(copy.deepcopy(model), _hard_masks(unit_layout(model), seed=2))
    for call in (lambda: head_layout(shrunk), lambda: prune_heads(shrunk, {0: [0]})):
        with pytest.raises(ValueError, match="GRAIN-shrunk"):
            call()


def test_load_grain_refuses_plain_checkpoints(tmp_path):
    model = _model("bert")
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no GRAIN structure"):
        load_grain(tmp_path)


def test_structure_round_trips_through_dict_and_masks():
    layout = unit_layout(_model("bert"))
    masks = _hard_masks(layout)
    structure = GrainStructure.from_masks(masks)
    assert GrainStructure.from_dict(structure.to_dict()) == structure
    back = structure.to_masks()
    # query units of heads without value units are not part of the structure
    expected_query = masks.query & masks.value.any(-1, keepdim=True)
    assert torch.equal(back.query, expected_query) and torch.equal(back.value, masks.value)
    assert torch.equal(back.ffn, masks.ffn)
    with pytest.raises(ValueError, match="sorted, distinct"):
        bad = structure.to_dict()
        bad["layers"][0]["ffn"] = [5, 5]
        GrainStructure.from_dict(bad)


def test_a_shrunk_model_cannot_be_shrunk_again():
    model = shrink_model(_model("bert"), Units.full(unit_layout(_model("bert"))))
    with pytest.raises(ValueError, match="already GRAIN-shrunk"):
        unit_layout(model)


def test_shrink_refuses_a_structure_of_another_shape():
    model = _model("bert")
    other = GrainStructure.from_masks(Units.full(unit_layout(_model("bert", num_layers=2))))
    with pytest.raises(ValueError, match="structure is for"):
        shrink_model(model, other)


# --------------------------------------------------------------------------- uneven-head attention


def _attention(q_sizes, v_sizes, seed=0, impl="grouped"):
    torch.manual_seed(seed)
    att = UnevenSelfAttention(24, q_sizes, v_sizes, scaling=0.125, impl=impl)
    with torch.no_grad():
        for p in att.parameters():
            p.normal_()
    return att


@pytest.mark.parametrize("impl", ["grouped", "padded"])
@pytest.mark.parametrize("gather", [False, True], ids=["zero-row-padding", "gathered-padding"])
@pytest.mark.parametrize("seq", [9, 70], ids=["short-matmul", "long-fused"])
def test_uneven_attention_matches_the_per_head_loop(impl, gather, seq, monkeypatch):
    import gnorm_kernels.grain.attention as attention

    # steer the cost model to each way of producing padded Q/K/V
    cpu = attention.COST_MODELS["cpu"]
    steered = attention.CostModel(cpu.group_overhead, 0.0 if gather else 1e9, cpu.fused_min_seq_len)
    monkeypatch.setitem(attention.COST_MODELS, "cpu", steered)
    att = _attention([3, 0, 8, 1, 8], [2, 5, 8, 1, 7], impl=impl)
    assert all(g.padded_projection != gather for g in att._plan(3, seq)["groups"])
    x = torch.randn(3, seq, 24, requires_grad=True)
    keep = torch.ones(3, seq, dtype=torch.bool)
    keep[1, 6:] = False
    keep[2, 3:] = False
    bool_mask = keep[:, None, None, :].expand(3, 1, seq, seq)
    float_mask = torch.zeros(3, 1, seq, seq).masked_fill(~bool_mask, torch.finfo(torch.float32).min)
    ref_att = copy.deepcopy(att)
    ref_att.impl = "loop"
    for mask in (None, bool_mask, float_mask):
        out, _ = att(x, mask)
        ref, _ = ref_att(x, mask)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # gradients agree too (training through the fast path)
    out, _ = att(x, float_mask)
    ref, _ = ref_att(x, float_mask)
    grads = torch.autograd.grad(out.square().sum(), [x, att.query.weight, att.value.weight])
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, ref_att.query.weight, ref_att.value.weight])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("seq", [9, 70])
def test_every_auto_candidate_matches_the_loop_and_auto_remembers_its_choice(seq):
    from gnorm_kernels.grain.attention import AUTO_CANDIDATES

    att = _attention([4, 4, 0, 6, 8], [6, 6, 3, 6, 8], impl="auto").eval()
    x = torch.randn(2, seq, 24)
    keep = torch.ones(2, seq, dtype=torch.bool)
    keep[1, 5:] = False
    mask = torch.zeros(2, 1, seq, seq).masked_fill(~keep[:, None, None, :], torch.finfo(torch.float32).min)
    with torch.no_grad():
        ref = att._run("loop", "math", x, mask)
        for candidate in AUTO_CANDIDATES:
            torch.testing.assert_close(att._run(*candidate, x, mask), ref, atol=1e-5, rtol=1e-5)
        out, _ = att(x, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert list(att.tuned.values())[0] in AUTO_CANDIDATES


def test_uneven_attention_honours_padding():
    att = _attention([4, 2], [3, 6])
    x = torch.randn(2, 7, 24)
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[:, 5:] = False
    mask = keep[:, None, None, :].expand(2, 1, 7, 7)
    out, _ = att(x, mask)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(2, 2, 24)  # change only the padded positions
    out2, _ = att(x2, mask)
    torch.testing.assert_close(out[:, :5], out2[:, :5])


def test_fused_weight_cache_follows_weight_updates():
    att = _attention([4, 2], [3, 6])
    x = torch.randn(2, 5, 24)
    with torch.no_grad():
        first, _ = att(x)
        att.value.weight.mul_(2.0)
        second, _ = att(x)
        att.impl = "loop"
        ref, _ = att(x)
    torch.testing.assert_close(second, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first, second)


def test_plan_groups_covers_every_head_once_and_splits_outliers():
    q = [64, 2, 3, 2, 1, 2]
    v = [64, 1, 2, 3, 2, 1]
    padded = plan_groups(q, v, tokens=4096, seq_len=128, hidden_size=768, impl="padded")
    assert len(padded) == 1 and padded[0].query_size == padded[0].value_size == 64
    grouped = plan_groups(q, v, tokens=4096, seq_len=128, hidden_size=768)
    assert sorted(h for g in grouped for h in g.heads) == list(range(6))
    big = next(g for g in grouped if 0 in g.heads)
    assert big.heads == (0,)  # the one big head does not inflate the small ones
    # with few tokens the fixed cost of a call dominates: similar heads share one padded call
    similar = plan_groups([8, 7, 8], [8, 8, 6], tokens=256, seq_len=16, hidden_size=64)
    assert len(similar) == 1 and similar[0].query_size == similar[0].value_size == 8
    # identical heads run together unpadded, with their own query and value sizes
    same = plan_groups([4, 4, 4], [6, 6, 6], tokens=4096, seq_len=128, hidden_size=768)
    assert [(g.heads, g.query_size, g.value_size) for g in same] == [((0, 1, 2), 4, 6)]


def test_uneven_attention_rejects_bad_sizes():
    with pytest.raises(ValueError, match="value sizes >= 1"):
        UnevenSelfAttention(8, [2, 2], [1, 0], scaling=1.0)
    with pytest.raises(ValueError, match="impl must be one of"):
        UnevenSelfAttention(8, [2], [1], scaling=1.0, impl="fast")


# --------------------------------------------------------------------------- importance


def test_taylor_importance_is_the_gradient_of_the_unit_masks():
    model = _model("bert", num_layers=2)
    layout = unit_layout(model)
    batch = random_batches(model, batch_size=4)[0]
    gates = Units.full(layout).map(lambda t: t.float().requires_grad_())
    with mask_units(model, gates):
        loss = model(**batch).loss
    loss.backward()
    scores = taylor_importance(layout, reads="official")
    torch.testing.assert_close(scores.query, gates.query.grad.abs(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores.value, gates.value.grad.abs(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores.ffn, gates.ffn.grad.abs(), atol=1e-5, rtol=1e-4)
    everything = taylor_importance(layout, reads="all")
    assert not torch.allclose(everything.query, scores.query)


def test_ema_and_structure_regulariser():
    layout = unit_layout(_model("bert", num_layers=2))
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
    layout = unit_layout(_model("bert", num_layers=2))
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
    layout = unit_layout(_model("bert", num_layers=1, num_heads=4))
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


# --------------------------------------------------------------------------- the driver


def test_grain_prune_end_to_end_on_a_tiny_model():
    teacher = _model("bert", num_layers=2)
    student = copy.deepcopy(teacher)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_state = {k: v.clone() for k, v in student.state_dict().items()}
    data = random_batches(teacher, num_batches=6, batch_size=4, seq_len=10)
    model, report = grain_prune(
        teacher, student, data, density=0.3, eval_data=data[:2], steps=30, lr=1e-3, progress=False,
        latency_batches=data[:1],
    )
    # the inputs are untouched
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k])
    for k, v in student.state_dict().items():
        assert torch.equal(v, student_state[k])
    assert report.density == pytest.approx(0.3, abs=0.01)
    assert report.masked_vs_shrunk < 1e-4
    assert report.encoder_params < 0.45 * report.encoder_params_dense
    assert report.accuracy is not None and report.latency_s is not None and report.speedup is not None
    assert any(isinstance(m, UnevenSelfAttention) for m in model.modules())
    assert report.structure.density() == pytest.approx(report.density)
    assert [h["step"] for h in report.history][-1] == 29
    # the student trained with dropout 0.1 (so the losses are not zero from the start) and the
    # shrunk model has the model's own dropout (0) back
    assert report.history[0]["loss_hidden"] > 0
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert "GRAIN at density 0.3" in str(report)


def test_grain_prune_without_dropout_a_copied_student_matches_its_teacher_exactly():
    teacher = _model("bert", num_layers=2)
    data = random_batches(teacher, num_batches=2)
    _, report = grain_prune(
        teacher, None, data, density=1.0, steps=1, dropout=None, progress=False, measure_speed=False
    )
    assert report.history[0]["loss_hidden"] == 0.0  # hence GRAIN's default: train the student with dropout


@pytest.mark.parametrize("density", [0, 1.5, -0.1, "0.5", True])
def test_grain_prune_rejects_bad_density(density):
    teacher = _model("bert", num_layers=2)
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        grain_prune(teacher, None, random_batches(teacher), density=density, steps=20, progress=False)


def test_grain_prune_rejects_mismatched_teacher_and_student():
    teacher = _model("bert", num_layers=2)
    data = random_batches(teacher)
    with pytest.raises(ValueError, match="same vocabulary size"):
        grain_prune(teacher, _model("bert", num_layers=2, vocab_size=50), data, density=0.5, steps=20)
    with pytest.raises(ValueError, match="same label count"):
        grain_prune(teacher, _model("bert", num_layers=2, num_labels=3), data, density=0.5, steps=20)


def test_grain_prune_rejects_schedules_that_do_not_fit():
    teacher = _model("bert", num_layers=2)
    data = random_batches(teacher, num_batches=2)
    with pytest.raises(ValueError, match="no distillation-only phase"):
        grain_prune(teacher, None, data, density=0.5, epochs=1)  # 2 steps
    with pytest.raises(ValueError, match="data is empty"):
        grain_prune(teacher, None, [], density=0.5, steps=20)


# --------------------------------------------------------------------------- scaled structures and the CLI


def test_scaled_structure_keeps_the_shape_and_density():
    layout = unit_layout(_model("bert", num_layers=2))
    structure = GrainStructure.from_masks(_two_layer_masks(layout))
    big = structure.scaled(4, 8, 16, 256)  # attention and FFN both grow 4x
    assert (big.num_layers, big.num_heads, big.head_size, big.ffn_size) == (4, 8, 16, 256)
    assert big.density() == pytest.approx(structure.density())
    assert big.heads_per_layer() == [2 * n for n in structure.heads_per_layer() for _ in range(2)]
    with pytest.raises(ValueError, match="whole factors"):
        structure.scaled(4, 8, 12, 256)


def _two_layer_masks(layout):
    g = torch.Generator().manual_seed(2)
    masks = Units.full(layout).map(lambda t: torch.rand(t.shape, generator=g) < 0.4)
    masks.value[1, 0] = False
    return masks


def test_cli_grain_prunes_reports_and_saves_a_reloadable_model(model_dir, tmp_path, capsys):
    import json

    from gnorm_kernels.cli import main

    out = tmp_path / "run"
    args = ["grain", "--model", model_dir, "--density", "0.5", "--steps", "10", "--train-size", "160",
            "--eval-size", "64", "--quiet", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "GRAIN at density 0.5" in text and "encoder parameters" in text and "speed-up" in text
    report = json.loads((out / "report.json").read_text())
    assert report["density"] == pytest.approx(0.5, abs=0.01)
    assert report["accuracy"] is not None and report["latency_s"] > 0
    model = load_grain(out / "model")
    assert GrainStructure.from_dict(model.config.grain_structure).density() == pytest.approx(report["density"])


@pytest.mark.parametrize(
    "extra, message",
    [(["--density", "0"], "--density must be in (0, 1]"), (["--density", "1.5"], "--density must be in (0, 1]"),
     (["--steps", "0"], "--steps must be >= 1")],
)
def test_cli_grain_rejects_bad_arguments_before_loading(extra, message, capsys):
    from gnorm_kernels.cli import main

    with pytest.raises(SystemExit) as err:
        main(["grain", "--model", "/nonexistent/model", *extra, "--quiet"])
    assert err.value.code == 1
    assert message in capsys.readouterr().err
