"""Scores and drivers on decoder LLMs (GPT-2, Llama, Qwen2, Mistral), for both units: the engine
against the plain reference (tests/reference_gnorm.py), causal entropy, gates, random, the
trajectory of a key/value-group run, and the errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from reference_gnorm import reference_decoder_greedy_order, reference_decoder_norms, reference_decoder_scores

from gnorm_kernels.engine.driver import greedy_prune, run_method, static_prune
from gnorm_kernels.engine.trajectory import Trajectory
from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.masking import mask_heads
from gnorm_kernels.heads.pruning import prune_heads, prune_kv_groups
from gnorm_kernels.scoring.baselines import attention_entropy, random_scores
from gnorm_kernels.scoring.gnorm import gnorm_scores, qkv_gradient_norms
from gnorm_kernels.scoring.registry import METHODS, get_scorer, taylor_importance
from gnorm_kernels.testing import DECODER_FAMILIES, random_batches, tiny_random_model

GROUPED = ("llama", "qwen2", "mistral")
CASES = [(f, u) for f in DECODER_FAMILIES for u in ("head", "kv_group") if f in GROUPED or u == "head"]
AGGREGATIONS = ("per_batch", "per_example", "accumulated")
TIE = 1e-4


def _model(family: str, attn: str = "eager", **kw):
    # a wider initialisation than the default gives gradients that differ by head
    return tiny_random_model(family, num_layers=2, num_heads=4, head_size=8, attn_implementation=attn,
                             initializer_range=0.2, **kw)


def _batches(model, n: int = 2, seed: int = 1):
    return random_batches(model, num_batches=n, batch_size=3, seq_len=9, seed=seed)


def _next_token_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    mask = batch["attention_mask"].bool()
    keep = mask[:, 1:] & mask[:, :-1]
    return F.cross_entropy(logits[:, :-1][keep], batch["input_ids"][:, 1:][keep])


# --------------------------------------------------------------------------- Gnorm against the reference


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family,unit", CASES)
def test_gnorm_equals_the_reference(family, unit, attn, aggregation):
    model = _model(family, attn)
    batches = _batches(model)
    norms = qkv_gradient_norms(model, batches, unit=unit, aggregation=aggregation)
    layout = head_layout(model)
    assert norms.shape == (2, 3, layout.num_heads if unit == "head" else layout.kv_heads)
    expected = reference_decoder_norms(model, batches, unit=unit, aggregation=aggregation)
    torch.testing.assert_close(norms, expected, rtol=1e-4, atol=1e-7)
    scores = gnorm_scores(model, batches, unit=unit, aggregation=aggregation)
    torch.testing.assert_close(scores, reference_decoder_scores(model, batches, unit=unit, aggregation=aggregation),
                               rtol=1e-4, atol=0)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("family,unit", CASES)
def test_a_pruned_model_scores_like_the_masked_reference(family, unit, aggregation):
    # layer 0 loses one query head (uneven groups), layer 1 a whole group (heads 2 and 3)
    model = _model(family, "sdpa")
    batches = _batches(model)
    pruned = {(0, 1), (1, 2), (1, 3)}
    work = prune_heads(copy.deepcopy(model), {0: [1], 1: [2, 3]})
    got = gnorm_scores(work, batches, unit=unit, aggregation=aggregation)
    expected = reference_decoder_scores(model, batches, pruned, unit=unit, aggregation=aggregation)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=0, equal_nan=True)


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_loss_objective_is_the_next_token_cross_entropy(family):
    model = _model(family)
    batches = _batches(model)
    got = qkv_gradient_norms(model, batches, objective="loss")
    expected = reference_decoder_norms(model, batches, objective=_next_token_loss)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-8)


def test_logits_norm_ignores_padding_and_a_callable_objective_serves():
    model = _model("llama")
    batch = _batches(model, n=1)[0]
    assert (batch["attention_mask"] == 0).any()
    changed = dict(batch, input_ids=torch.where(batch["attention_mask"].bool(), batch["input_ids"], 7))
    torch.testing.assert_close(gnorm_scores(model, [changed]), gnorm_scores(model, [batch]))  # pad tokens do not count
    by_hand = gnorm_scores(model, [batch], objective=lambda logits, b: logits[b["attention_mask"].bool()].norm())
    torch.testing.assert_close(by_hand, gnorm_scores(model, [batch]), rtol=1e-5, atol=0)


def test_dropout_scores_in_train_mode_and_restores_the_modes():
    model = _model("llama", attention_dropout=0.5)
    batches = _batches(model)
    eval_scores = gnorm_scores(model, batches)
    torch.manual_seed(0)
    a = gnorm_scores(model, batches, dropout=True)
    torch.manual_seed(0)
    b = gnorm_scores(model, batches, dropout=True)
    assert torch.equal(a, b) and not torch.allclose(a, eval_scores)
    assert not model.training and not any(m.training for m in model.modules())
    quiet = _model("llama")  # no dropout anywhere: train mode changes nothing
    torch.testing.assert_close(gnorm_scores(quiet, batches, dropout=True), gnorm_scores(quiet, batches))
    with pytest.raises(TypeError, match="dropout"):
        gnorm_scores(quiet, batches, dropout="yes")


# --------------------------------------------------------------------------- greedy against the reference


def _ties(scores: torch.Tensor, a, b) -> bool:
    x, y = scores[a].item(), scores[b].item()
    return abs(x - y) <= TIE * max(abs(x), abs(y))


@pytest.mark.parametrize("family,unit", CASES)
def test_greedy_picks_the_reference_order(family, unit):
    model = _model(family, "sdpa")
    batches = _batches(model)
    fast = greedy_prune(model, batches, unit=unit, progress=False)
    order, grids = reference_decoder_greedy_order(model, batches, unit=unit)
    assert fast.unit == unit and fast.shape == grids[0].shape and len(fast.order) == len(order)
    # each choice is a minimum of the reference's grid on the engine's state (up to ties); while the
    # orders agree the reference's own grids serve, after a tie-swap it is re-run on the engine's state
    layout = head_layout(model)
    size = layout.num_heads // layout.kv_heads
    pruned: set = set()
    same = True
    for i, (step, chosen) in enumerate(zip(fast.steps[1:], fast.order)):
        ref = grids[i] if same else reference_decoder_scores(model, batches, pruned, unit=unit)
        torch.testing.assert_close(step.scores, ref, rtol=1e-4, atol=0, equal_nan=True)
        best = min((ref[l, u].item(), (l, u)) for l, u in ref.isfinite().nonzero().tolist())[1]
        assert chosen == best or _ties(ref, chosen, best), f"step {i + 1}: engine {chosen}, reference {best}"
        same = same and chosen == order[i]
        l, u = chosen
        pruned |= {(l, u)} if unit == "head" else {(l, h) for h in range(u * size, (u + 1) * size)}


# --------------------------------------------------------------------------- entropy


class _Pattern:
    """A forward hook that replaces each attention module's weights [B, H, T, T]: head 0 attends
    to the first token only, every other head uniformly over its (causal, unpadded) prefix."""

    def __init__(self, mask: torch.Tensor):
        real = mask.bool()
        T = real.shape[1]
        allowed = torch.ones(T, T, dtype=torch.bool).tril()[None] & real[:, None, :]
        self.uniform = allowed.float() / allowed.sum(-1, keepdim=True).clamp_min(1)
        self.first = torch.zeros_like(self.uniform)
        self.first[..., 0] = 1.0

    def __call__(self, module, args, output):
        attn_out, weights = output
        fake = self.uniform[:, None].expand_as(weights).clone()
        fake[:, 0] = self.first
        return attn_out, fake


def test_causal_entropy_skips_one_token_prefixes_and_normalises_by_the_prefix():
    model = _model("llama")
    batches = _batches(model)
    hooks = []
    for batch in batches:  # one batch at a time, each with its own pattern
        pattern = _Pattern(batch["attention_mask"])
        hooks = [b.attention.register_forward_hook(pattern) for b in head_layout(model).blocks]
        try:
            ent = attention_entropy(model, [batch])
        finally:
            for h in hooks:
                h.remove()
        # first-token head: 0 up to the epsilon rectification; uniform heads: exactly their maximum
        assert (ent[:, 0] < 1e-4).all()
        torch.testing.assert_close(ent[:, 1:], torch.ones(2, 3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_a_uniform_decoder_head_has_entropy_one(family):
    model = _model(family, "sdpa")
    with torch.no_grad():
        for block in head_layout(model).blocks:  # zero queries: uniform attention over each prefix
            block.qkv_weights()[0].zero_()  # GPT-2: the query columns of c_attn
            bias = block.query.bias
            if bias is not None:
                bias[: bias.shape[0] // 3 if block.fused_qkv else None].zero_()
    batches = _batches(model)
    torch.testing.assert_close(attention_entropy(model, batches), torch.ones(2, 4), rtol=1e-5, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"


def test_group_entropy_averages_its_heads_also_when_groups_are_uneven():
    model = _model("llama", "sdpa")
    batches = _batches(model)
    heads = attention_entropy(model, batches)
    assert model.config._attn_implementation == "sdpa"
    groups = attention_entropy(model, batches, unit="kv_group")
    torch.testing.assert_close(groups, heads.view(2, 2, 2).mean(-1))
    mask = torch.ones(2, 4)
    mask[0, 1] = 0
    with mask_heads(model, mask):  # what pruning head (0, 1) leaves of the later layer's input
        masked = attention_entropy(model, batches)
    prune_heads(model, {0: [1]})  # uneven groups: entropy runs on the grouped eager variant
    after = attention_entropy(model, batches, unit="kv_group")
    assert model.config._attn_implementation == "gnorm_grouped_sdpa"
    torch.testing.assert_close(after[0], torch.stack([masked[0, 0], masked[0, 2:].mean()]), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(after[1], masked[1].view(2, 2).mean(-1), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- Taylor, random


@pytest.mark.parametrize("family,unit", CASES)
def test_taylor_works_through_masks_on_decoders(family, unit):
    model = _model(family)
    batches = _batches(model)
    got = taylor_importance(model, batches, unit=unit)
    layout = head_layout(model)
    expected = torch.zeros(layout.shape if unit == "head" else layout.kv_shape)
    for b in batches:
        gates = torch.ones(layout.shape, requires_grad=True)
        with mask_heads(model, gates):
            (grad,) = torch.autograd.grad(_next_token_loss(model, b), gates)
        if unit == "kv_group":
            grad = grad.view(2, layout.kv_heads, -1).sum(-1)
        expected += grad.abs()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-9)
    if unit == "head":
        prune_heads(model, {1: [3]})
        assert torch.isnan(taylor_importance(model, batches, unit=unit)[1, 3])


def test_random_scores_cover_the_unit_grid():
    model = _model("mistral")
    a = random_scores(model, seed=3, unit="kv_group")
    assert a.shape == (2, 2) and torch.equal(a, random_scores(model, seed=3, unit="kv_group"))
    prune_kv_groups(model, {0: [1]})
    b = random_scores(model, seed=3, unit="kv_group")
    assert torch.isnan(b[0, 1]) and b[1].isfinite().all() and torch.equal(b[1], a[1])
    assert get_scorer("random", unit="kv_group")(model, []).shape == (2, 2)


# --------------------------------------------------------------------------- drivers and trajectories


def _labelled(batches):
    """Verdict-labelled LM batches: the class is read at each row's last real token."""
    out = []
    for i, b in enumerate(batches):
        last = b["attention_mask"].sum(1) - 1
        out.append(dict(b, labels=torch.tensor([0, 1, 0])[: len(last)] ^ (i % 2), verdict_index=last,
                        label_token_ids=torch.tensor([5, 6])))
    return out


def test_a_kv_group_run_records_groups_and_expands_them_to_heads(tmp_path):
    model = _model("qwen2", "sdpa")
    calib = _batches(model)
    test = _labelled(_batches(model, seed=2))
    t = greedy_prune(model, calib, test, unit="kv_group", ratio=0.5, progress=False)
    assert t.unit == "kv_group" and t.shape == (2, 2) and t.num_heads == 4 and len(t.order) == 2
    assert all(s.scores.shape == (2, 2) for s in t.steps[1:])
    for step in t.steps:  # the task metric and perplexity side by side
        assert 0 <= step.accuracy <= 1 and step.perplexity > 1
    mask, heads = t.mask_at(0.5), t.head_mask_at(0.5)
    assert mask.shape == (2, 2) and heads.shape == (2, 4)
    assert torch.equal(heads, mask.repeat_interleave(2, dim=1))
    replayed = prune_heads(copy.deepcopy(model), t.pruned_heads_at(0.5))
    assert torch.equal(head_layout(replayed).kept_mask(), heads)
    grouped = prune_kv_groups(copy.deepcopy(model), t.pruned_units_at(0.5))
    assert torch.equal(head_layout(grouped).kept_kv_mask(), mask)
    curve = t.curve()
    assert list(curve[0]) == [0.0, 0.25, 0.5]
    back = Trajectory.load(t.save(tmp_path / "t.json"))
    assert back.to_dict() == t.to_dict() and back.unit == "kv_group"
    assert torch.equal(back.head_mask_at(steps=1), t.head_mask_at(steps=1))


def test_a_kv_group_run_on_a_partly_pruned_model_and_its_resume(tmp_path):
    model = prune_heads(_model("llama"), {0: [0]})  # group 0 of layer 0 is half present
    calib = _batches(model)
    whole = static_prune(model, calib, unit="kv_group", progress=False)
    assert whole.initially_pruned == [] and whole.initially_pruned_heads == [(0, 0)]
    assert not whole.head_mask_at(0.0)[0, 0] and whole.head_mask_at(0.0).sum() == 7
    ckpt = tmp_path / "run.json"
    static_prune(model, calib, unit="kv_group", checkpoint=ckpt, max_steps=2, progress=False)
    rest = static_prune(model, calib, unit="kv_group", checkpoint=ckpt, progress=False)
    assert rest.order == whole.order and rest.complete
    with pytest.raises(ValueError, match="unit: 'kv_group' saved, 'head' now"):
        static_prune(model, calib, checkpoint=ckpt, progress=False)


def test_a_trajectory_written_before_units_loads_as_a_head_run(tmp_path):
    model = _model("llama")
    t = greedy_prune(model, _batches(model), steps=2, progress=False)
    data = t.to_dict()
    for key in ("unit", "num_kv_heads", "initially_pruned_heads"):
        data.pop(key)
    data["version"] = 1
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    old = Trajectory.load(path)
    assert old.unit == "head" and old.shape == (2, 4) and old.order == t.order
    assert torch.equal(old.head_mask_at(steps=2), old.mask_at(steps=2))


def test_perplexity_runs_and_run_method_takes_the_unit():
    model = _model("mistral")
    calib, test = _batches(model), _batches(model, seed=2)
    with pytest.raises(ValueError, match="metric='perplexity'"):
        greedy_prune(model, calib, test, steps=1, progress=False)
    t = greedy_prune(model, calib, test, steps=2, metric="perplexity", progress=False)
    xs, ys = t.curve("perplexity")
    assert len(xs) == 3 and (ys > 1).all()
    for name in METHODS:
        run = run_method(name, model, calib, unit="kv_group", steps=1, progress=False)
        assert run.unit == "kv_group" and run.method == name and len(run.order) == 1
    inplace = copy.deepcopy(model)
    t = run_method("greedy-gnorm", inplace, calib, unit="kv_group", steps=2, inplace=True, progress=False)
    assert head_layout(inplace).pruned_kv_heads() == t.pruned_units_at(steps=2)


# --------------------------------------------------------------------------- errors


def test_unit_errors_are_clear():
    gpt2, llama = _model("gpt2"), _model("llama")
    batches = _batches(gpt2)
    for call in (lambda: gnorm_scores(gpt2, batches, unit="kv_group"),
                 lambda: attention_entropy(gpt2, batches, unit="kv_group"),
                 lambda: taylor_importance(gpt2, batches, unit="kv_group"),
                 lambda: random_scores(gpt2, unit="kv_group"),
                 lambda: greedy_prune(gpt2, batches, unit="kv_group", progress=False),
                 lambda: run_method("random", gpt2, batches, unit="kv_group", progress=False)):
        with pytest.raises(ValueError, match="one query head per key/value head.*use unit='head'"):
            call()
    for call in (lambda: gnorm_scores(llama, batches, unit="layer"),
                 lambda: static_prune(llama, batches, unit="layer", progress=False),
                 lambda: get_scorer("gnorm", unit="layer")):
        with pytest.raises(ValueError, match=r"unit must be one of \['head', 'kv_group'\], got 'layer'"):
            call()
    with pytest.raises(ValueError, match="not in scorer_options"):
        greedy_prune(llama, batches, scorer_options={"unit": "kv_group"}, progress=False)
    with pytest.raises(ValueError, match="steps=5 is more.*4 prunable key/value groups"):
        greedy_prune(llama, batches, unit="kv_group", steps=5, progress=False)


def test_the_cli_passes_the_unit():
    from gnorm_kernels.cli.commands import _driver_options, build_parser

    parser = build_parser()
    for command in ("prune", "compare"):
        assert parser.parse_args([command, "--out", "x"]).unit == "head"
        args = parser.parse_args([command, "--unit", "kv_group", "--out", "x"])
        assert _driver_options(args)["unit"] == "kv_group"
    with pytest.raises(SystemExit):
        parser.parse_args(["prune", "--unit", "layer", "--out", "x"])
