"""The uneven-head attention of shrunk models: every implementation against the per-head loop."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from grain_helpers import ONE_GROUP, attention

from gnorm_kernels.grain import UnevenSelfAttention, plan_groups
from gnorm_kernels.grain.plan import CPU_COSTS


def _masks(batch, seq, cut):
    """A boolean and an additive mask hiding the tail of some rows (padding)."""
    keep = torch.ones(batch, seq, dtype=torch.bool)
    for row, start in cut.items():
        keep[row, start:] = False
    bool_mask = keep[:, None, None, :].expand(batch, 1, seq, seq)
    float_mask = torch.zeros(batch, 1, seq, seq).masked_fill(~bool_mask, torch.finfo(torch.float32).min)
    return bool_mask, float_mask


@pytest.mark.parametrize("grouping", ["cost-model", "one-group"])
@pytest.mark.parametrize("gather", [False, True], ids=["zero-row-padding", "gathered-padding"])
@pytest.mark.parametrize("seq", [9, 70], ids=["short-matmul", "long-fused"])
def test_uneven_attention_matches_the_per_head_loop(grouping, gather, seq):
    # steer the cost model to each way of producing padded Q/K/V, and to one padded group per layer
    base = CPU_COSTS if grouping == "cost-model" else ONE_GROUP
    att = attention([3, 0, 8, 1, 8], [2, 5, 8, 1, 7])
    att.costs = dataclasses.replace(base, gather_per_element=0.0 if gather else 1e9)
    groups = att._plan(3, seq).groups
    assert all(g.padded_projection != gather for g in groups)
    assert grouping != "one-group" or len(groups) == 1
    x = torch.randn(3, seq, 24, requires_grad=True)
    bool_mask, float_mask = _masks(3, seq, {1: 6, 2: 3})
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
def test_default_is_grouped_and_every_variant_matches_the_loop(seq):
    att = attention([4, 4, 0, 6, 8], [6, 6, 3, 6, 8]).eval()
    assert att.impl == "grouped" and UnevenSelfAttention.costs is CPU_COSTS
    x = torch.randn(2, seq, 24)
    _, mask = _masks(2, seq, {1: 5})
    with torch.no_grad():
        ref = att._forward_loop(x, mask)
        # the loop with the fused kernel per head (the benchmark's "loop-sdpa")
        torch.testing.assert_close(att._forward_loop(x, mask, fused=True), ref, atol=1e-5, rtol=1e-5)
        # grouped with the fused kernel or matmul + softmax, cost-model groups or one padded group
        for base in (CPU_COSTS, ONE_GROUP):
            for fused_from in (0, 10**9):
                att.costs = dataclasses.replace(base, fused_min_seq_len=fused_from)
                out, _ = att(x, mask)
                torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        del att.costs  # back to the class's measured cost model
        out, _ = att(x, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # "auto" (a timing tuner) and "padded" are gone: each is an error that says why
    for gone in ("auto", "padded"):
        with pytest.raises(ValueError, match=f'"{gone}" was removed'):
            attention([4, 4, 0, 6, 8], [6, 6, 3, 6, 8], impl=gone)


def test_uneven_attention_honours_padding():
    att = attention([4, 2], [3, 6])
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
    att = attention([4, 2], [3, 6])
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
    one = plan_groups(q, v, tokens=4096, seq_len=128, hidden_size=768, costs=ONE_GROUP)
    assert len(one) == 1 and one[0].query_size == one[0].value_size == 64
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
    with pytest.raises(ValueError, match='"padded" was removed'):
        UnevenSelfAttention(8, [2], [1], scaling=1.0, impl="padded")
