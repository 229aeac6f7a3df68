"""Head scores: Gnorm (three aggregations), attention entropy, Taylor gates, random; the method table."""

from __future__ import annotations

import math

import pytest
import torch
from reference_gnorm import reference_gnorm_scores

import gnorm_kernels.kernels as kernels
from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.masking import mask_heads
from gnorm_kernels.heads.pruning import prune_heads
from gnorm_kernels.scoring.baselines import attention_entropy, random_scores
from gnorm_kernels.scoring.gnorm import gnorm_scores, qkv_gradient_norms
from gnorm_kernels.scoring.objectives import NonFiniteGradientError
from gnorm_kernels.scoring.registry import METHODS, SCORERS, get_method, get_scorer, taylor_importance
from gnorm_kernels.testing import FAMILIES, random_batches, tiny_random_model


def _model(family: str = "bert", **kw):
    # a wider initialisation than the default gives attention patterns and gradients that differ by head
    return tiny_random_model(family, initializer_range=0.2, **kw)


def _full_grad_norms(model, batches, objective, *, bias: bool = False) -> torch.Tensor:
    """[L, 3, H] block norms of the summed gradient of `objective` over `batches`, with plain autograd."""
    layout = head_layout(model)
    params = [getattr(b, p).weight for b in layout.blocks for p in ("query", "key", "value")]
    if bias:
        params += [getattr(b, p).bias for b in layout.blocks for p in ("query", "key", "value")]
    total = sum(objective(model, batch) for batch in batches)
    grads = torch.autograd.grad(total, params)
    L, H, d = layout.num_layers, layout.num_heads, layout.head_size
    out = torch.zeros(L, 3, H)
    for i, g in enumerate(grads[: 3 * L]):
        sq = g.view(H, -1).square().sum(-1)
        if bias:
            sq = sq + grads[3 * L + i].view(H, d).square().sum(-1)
        out[i // 3, i % 3] = sq.sqrt()
    return out


def _logits_norm(model, batch):
    return model(**{k: v for k, v in batch.items() if k != "labels"}).logits.norm()


# --------------------------------------------------------------------------- Gnorm


@pytest.mark.parametrize("family", FAMILIES)
def test_per_batch_scores_match_the_paper_literal_reference(family):
    model = _model(family)
    batches = random_batches(model, num_batches=3)
    fast = gnorm_scores(model, batches)
    ref = reference_gnorm_scores(model, batches)
    assert fast.dtype == torch.float32 and fast.shape == head_layout(model).shape
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("bias", [False, True])
def test_per_example_norms_equal_one_pass_per_example(family, bias):
    # ALBERT runs its shared block at two depths: the per-example gradient must sum over both
    model = _model(family)
    batches = random_batches(model, num_batches=2, batch_size=3)
    got = qkv_gradient_norms(model, batches, aggregation="per_example", include_bias=bias)
    singles = [{k: v[i : i + 1] for k, v in b.items()} for b in batches for i in range(b["input_ids"].shape[0])]
    expected = torch.stack([_full_grad_norms(model, [s], _logits_norm, bias=bias) for s in singles]).mean(0)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("family", ["bert", "albert"])
def test_accumulated_norms_are_the_norms_of_the_summed_gradient(family):
    model = _model(family)
    batches = random_batches(model, num_batches=3)
    got = qkv_gradient_norms(model, batches, aggregation="accumulated")
    torch.testing.assert_close(got, _full_grad_norms(model, batches, _logits_norm), rtol=1e-4, atol=1e-12)


def test_per_batch_is_the_mean_of_each_batch_norm_and_loss_objective():
    model = _model()
    batches = random_batches(model, num_batches=3)

    def loss(model, batch):
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return torch.nn.functional.cross_entropy(logits, batch["labels"])

    expected = torch.stack([_full_grad_norms(model, [b], loss) for b in batches]).mean(0)
    got = qkv_gradient_norms(model, batches, objective="loss")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-12)


def test_combine_options_and_callable_objective():
    model = _model()
    batches = random_batches(model)
    norms = qkv_gradient_norms(model, batches)
    torch.testing.assert_close(gnorm_scores(model, batches), norms.prod(1))
    torch.testing.assert_close(gnorm_scores(model, batches, combine="sum"), norms.sum(1))
    torch.testing.assert_close(gnorm_scores(model, batches, combine="max"), norms.amax(1))
    # a callable giving one value per example is summed, which for logits_norm-per-row differs from
    # the Frobenius norm of the whole batch, so check against that directly
    rows = gnorm_scores(model, batches, objective=lambda logits, batch: logits.norm(dim=-1))
    expected = torch.stack(
        [_full_grad_norms(model, [b], lambda m, x: m(**{k: v for k, v in x.items() if k != "labels"}).logits.norm(dim=-1).sum())
         for b in batches]
    ).mean(0).prod(1)
    torch.testing.assert_close(rows, expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize("aggregation", ["per_batch", "per_example", "accumulated"])
def test_pruned_heads_are_nan_and_the_rest_match_a_masked_model(aggregation):
    model = _model(num_layers=3)
    batches = random_batches(model)
    gone = {0: [1], 2: [0, 1, 2, 3]}  # one head, and a whole layer
    masked_mask = torch.ones(3, 4)
    for l, hs in gone.items():
        masked_mask[l, hs] = 0
    with mask_heads(model, masked_mask):
        masked = gnorm_scores(model, batches, aggregation=aggregation)
    prune_heads(model, gone)
    scores = gnorm_scores(model, batches, aggregation=aggregation)
    kept = head_layout(model).kept_mask()
    assert torch.isnan(scores[~kept]).all()
    torch.testing.assert_close(scores[kept], masked[kept], rtol=1e-4, atol=0)


def test_scoring_freezes_all_but_qkv_weights_and_restores_the_model():
    model = _model()
    model.train()
    batches = random_batches(model)
    model.classifier.weight.requires_grad_(False)  # an unusual flag, to see it restored
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    seen = []

    def objective(logits, batch):
        seen.append(sorted(n for n, p in model.named_parameters() if p.requires_grad))
        return logits.norm()

    gnorm_scores(model, batches, objective=objective)
    qkv = sorted(n for n, _ in model.named_parameters()
                 if n.endswith(("query.weight", "key.weight", "value.weight")))
    assert seen and all(names == qkv for names in seen)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training and all(m.training for m in model.modules())


def test_entropy_and_taylor_restore_modes_and_flags():
    model = _model()
    model.train()
    model.bert.encoder.layer[0].eval()  # mixed modes, to see each module's own restored
    model.classifier.weight.requires_grad_(False)
    batches = random_batches(model)
    modes = [m.training for m in model.modules()]
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    attention_entropy(model, batches)
    taylor_importance(model, batches)
    assert [m.training for m in model.modules()] == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_the_scoring_face_exports_each_name_from_its_one_module():
    import gnorm_kernels.scoring as scoring
    import gnorm_kernels.scoring.baselines as baselines
    import gnorm_kernels.scoring.gnorm as gnorm
    import gnorm_kernels.scoring.objectives as objectives

    for name in ("gnorm_scores", "qkv_gradient_norms"):
        assert getattr(scoring, name) is getattr(gnorm, name)
    for name in ("NonFiniteGradientError", "scoring_mode"):
        assert getattr(scoring, name) is getattr(objectives, name)
    for name in ("attention_entropy", "taylor_importance", "random_scores"):
        assert getattr(scoring, name) is getattr(baselines, name)
    assert kernels.COMBINES == ("product", "sum", "max")


def test_gnorm_reduces_through_the_kernels_module(monkeypatch):
    model = _model()
    batches = random_batches(model)
    calls = []
    real = kernels.QKVGradientBuffer

    class Spy(real):
        def norms(self, **kw):
            calls.append(1)
            return super().norms(**kw)

    monkeypatch.setattr(kernels, "QKVGradientBuffer", Spy)
    gnorm_scores(model, batches)
    assert len(calls) == len(batches)


def test_bad_input_gives_clear_errors():
    model = _model()
    batches = random_batches(model)
    with pytest.raises(ValueError, match="empty"):
        gnorm_scores(model, [])
    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    with pytest.raises(ValueError, match="calibration batch 0 has no 'labels'"):
        gnorm_scores(model, unlabelled, objective="loss")
    with pytest.raises(ValueError, match="calibration batch 0 has no 'labels'"):
        taylor_importance(model, unlabelled)
    gnorm_scores(model, unlabelled)  # logits_norm needs no labels
    with pytest.raises(ValueError, match="aggregation"):
        gnorm_scores(model, batches, aggregation="per_token")
    with pytest.raises(ValueError, match="combine"):
        gnorm_scores(model, batches, combine="mean")
    with pytest.raises(ValueError, match="objective"):
        gnorm_scores(model, batches, objective="nope")


@pytest.mark.parametrize("aggregation", ["per_batch", "per_example", "accumulated"])
def test_nan_gradients_raise_naming_the_batch(aggregation):
    model = _model()
    batches = random_batches(model, num_batches=3)

    def objective(logits, batch):
        # finite value, NaN gradient on the third batch: d sqrt(x)/dx at 0 is inf, times 0
        value = logits.norm(dim=-1)
        if batch is batches[2]:
            value = value + torch.sqrt(logits.sum() * 0)
        return value

    with pytest.raises(NonFiniteGradientError, match="batch 2"):
        gnorm_scores(model, batches, aggregation=aggregation, objective=objective)


def test_nan_objective_raises():
    model = _model()
    batches = random_batches(model)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteGradientError, match="batch 0"):
        gnorm_scores(model, batches)


# --------------------------------------------------------------------------- entropy


def test_entropy_of_uniform_attention_is_log_of_the_length():
    model = _model()
    layout = head_layout(model)
    with torch.no_grad():
        for block in layout.blocks:  # zero queries: every row attends uniformly to the real tokens
            block.query.weight.zero_()
            block.query.bias.zero_()
    batches = random_batches(model, num_batches=2, seq_len=10)
    lengths = torch.cat([b["attention_mask"].sum(1) for b in batches]).double()
    expected = torch.log(lengths).mean().item()
    ent = attention_entropy(model, batches)
    torch.testing.assert_close(ent, torch.full(layout.shape, expected), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["bert", "albert"])
def test_entropy_matches_output_attentions_and_keeps_sdpa(family):
    model = _model(family, attn_implementation="sdpa")
    batches = random_batches(model, num_batches=2)
    ent = attention_entropy(model, batches)
    assert model.config._attn_implementation == "sdpa"
    eager = _model(family, attn_implementation="eager")
    layout = head_layout(eager)
    total = torch.zeros(layout.shape, dtype=torch.float64)
    n = 0
    with torch.no_grad():
        for b in batches:
            out = eager(**{k: v for k, v in b.items() if k != "labels"}, output_attentions=True)
            m = b["attention_mask"].double()
            for block in layout.blocks:
                per_depth = []
                for depth in block.depths:
                    a = out.attentions[depth].double()
                    e = -((a + 1e-7) * torch.log(a + 1e-7)).sum(-1)
                    per_depth.append((e * m[:, None]).sum(-1) / m.sum(-1)[:, None])
                total[block.index] += torch.stack(per_depth).mean(0).sum(0)
            n += b["input_ids"].shape[0]
    torch.testing.assert_close(ent, (total / n).float(), rtol=1e-5, atol=1e-6)


def test_entropy_on_a_pruned_model():
    model = _model()
    batches = random_batches(model)
    prune_heads(model, {0: [0, 1, 2, 3], 1: [2]})
    ent = attention_entropy(model, batches)
    kept = head_layout(model).kept_mask()
    assert torch.isnan(ent[~kept]).all() and torch.isfinite(ent[kept]).all()


# --------------------------------------------------------------------------- Taylor, random


def test_taylor_is_the_absolute_gate_gradient_summed_over_batches():
    model = _model()
    batches = random_batches(model, num_batches=3)
    got = taylor_importance(model, batches)
    expected = torch.zeros(head_layout(model).shape)
    for b in batches:
        gates = torch.ones_like(expected, requires_grad=True)
        with mask_heads(model, gates):
            logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits
            loss = torch.nn.functional.cross_entropy(logits, b["labels"])
        expected += torch.autograd.grad(loss, gates)[0].abs()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-9)
    prune_heads(model, {1: [3]})
    assert torch.isnan(taylor_importance(model, batches)[1, 3])


def test_random_scores_are_seeded_and_independent_of_pruning():
    model = _model()
    a, b, c = random_scores(model, seed=1), random_scores(model, seed=1), random_scores(model, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    prune_heads(model, {0: [2]})
    d = random_scores(model, seed=1)
    assert math.isnan(d[0, 2]) and torch.equal(d[~torch.isnan(d)], a[~torch.isnan(d)])


# --------------------------------------------------------------------------- registry


def test_registry_and_method_table():
    assert set(SCORERS) == {"gnorm", "entropy", "taylor", "random"}
    assert get_scorer("gnorm") is gnorm_scores
    with pytest.raises(ValueError, match="unknown scorer"):
        get_scorer("magnitude")
    assert list(METHODS) == ["greedy-gnorm", "static-gnorm", "inverse-gnorm", "entropy",
                             "inverse-entropy", "taylor", "random"]
    assert get_method("greedy-gnorm").greedy and get_method("greedy-gnorm").prune_first == "lowest"
    assert not get_method("static-gnorm").greedy
    assert get_method("inverse-gnorm").prune_first == "highest"
    assert get_method("entropy").prune_first == "highest"  # the paper's AE baseline
    assert get_method("inverse-entropy").prune_first == "lowest"
    assert get_method("random").seeded
    for m in METHODS.values():
        assert m.scorer in SCORERS
    with pytest.raises(ValueError, match="unknown method 'gnorm'"):
        get_method("gnorm")
