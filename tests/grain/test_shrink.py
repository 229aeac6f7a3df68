"""GRAIN units and masks, shrinking (masked == shrunk), structures and checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from grain_helpers import ONE_GROUP, hard_masks, inputs, set_costs, small_model

from gnorm_kernels.grain import (
    GrainStructure,
    UnevenSelfAttention,
    Units,
    load_grain,
    mask_units,
    save_grain,
    set_attention_impl,
    shrink_model,
    unit_layout,
)
from gnorm_kernels.grain.plan import CPU_COSTS
from gnorm_kernels.heads.pruning import prune_heads
from gnorm_kernels.testing import random_batches, tiny_random_model

IMPLS = ("grouped", "loop")


# --------------------------------------------------------------------------- masked == shrunk


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("seq_len", [11, 70], ids=["short", "long"])  # matmul / fused attention
def test_shrunk_model_matches_masked_model(family, attn, seq_len):
    dense_model = small_model(family, attn, max_position_embeddings=80)
    layout = unit_layout(dense_model)
    masks = hard_masks(layout)
    batch = inputs(random_batches(dense_model, batch_size=5, seq_len=seq_len)[0])
    with torch.no_grad():
        dense = dense_model(**batch).logits
        with mask_units(dense_model, masks):
            masked = dense_model(**batch, output_hidden_states=True)
        shrunk = shrink_model(copy.deepcopy(dense_model), masks)
        assert (dense - masked.logits).abs().max() > 1e-2  # the masks matter
        assert {m.impl for m in shrunk.modules() if isinstance(m, UnevenSelfAttention)} == {"grouped"}
        # every implementation, and the grouped path with all heads of a layer as one padded group
        for impl, costs in [*((i, CPU_COSTS) for i in IMPLS), ("grouped", ONE_GROUP)]:
            set_attention_impl(shrunk, impl)
            set_costs(shrunk, costs)
            out = shrunk(**batch, output_hidden_states=True)
            torch.testing.assert_close(out.logits, masked.logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.hidden_states[-1], masked.hidden_states[-1], atol=1e-5, rtol=1e-5)
        set_costs(shrunk, CPU_COSTS)
        set_attention_impl(shrunk, "grouped")
        torch.testing.assert_close(shrunk(**batch).logits, masked.logits, atol=1e-5, rtol=1e-5)
    # the removed weights are gone
    layer0 = shrunk.base_model.encoder.layer[0]
    assert layer0.attention.self.query.out_features == int(masks.query[0, masks.value[0].any(-1)].sum())
    assert layer0.attention.output.dense.in_features == int(masks.value[0].sum())
    assert shrunk.base_model.encoder.layer[1].attention.self.num_heads == 0
    assert shrunk.base_model.encoder.layer[2].intermediate.dense.out_features == 0


def test_removed_and_unknown_implementations_are_refused_clearly():
    shrunk = shrink_model(small_model("bert"), Units.full(unit_layout(small_model("bert"))))
    with pytest.raises(ValueError, match=r"impl must be one of \['grouped', 'loop'\], got 'padded' \(\"padded\" was removed"):
        set_attention_impl(shrunk, "padded")
    with pytest.raises(ValueError, match="impl must be one of"):
        shrink_model(small_model("bert"), Units.full(unit_layout(small_model("bert"))), impl="fast")


def test_masks_ignore_and_shrink_head_pruned_models():
    m = small_model("bert")
    prune_heads(m, {0: [0, 3], 1: [1]})
    layout = unit_layout(m)
    masks = Units.full(layout)
    assert not masks.value[0, 0].any() and not masks.query[1, 1].any()
    g = torch.Generator().manual_seed(3)
    masks = masks.map(lambda t: t & (torch.rand(t.shape, generator=g) < 0.6))
    batch = inputs(random_batches(m)[0])
    with torch.no_grad():
        with mask_units(m, masks):
            masked = m(**batch).logits
        shrunk = shrink_model(copy.deepcopy(m), masks)
        torch.testing.assert_close(shrunk(**batch).logits, masked, atol=1e-5, rtol=1e-5)


def test_mask_hooks_are_removed_on_exit_and_on_error():
    m = small_model("bert")
    layout = unit_layout(m)
    batch = inputs(random_batches(m)[0])
    with torch.no_grad():
        before = m(**batch).logits
        with pytest.raises(RuntimeError):
            with mask_units(m, Units.full(layout).map(torch.zeros_like)):
                raise RuntimeError("boom")
        torch.testing.assert_close(m(**batch).logits, before)
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


def test_mask_shape_errors_are_clear():
    m = small_model("bert")
    layout = unit_layout(m)
    bad = Units.full(layout)
    bad.ffn = bad.ffn[:, :5]
    with pytest.raises(ValueError, match="ffn mask must have shape"):
        with mask_units(m, bad):
            pass


@pytest.mark.parametrize(
    "family, reason",
    [("albert", "shared across depth"), ("distilbert", "holds its output projection")],
)
def test_unsupported_family_is_refused(family, reason):
    with pytest.raises(ValueError, match="GRAIN units are defined for") as err:
        unit_layout(tiny_random_model(family))
    assert reason in str(err.value) and family in str(err.value)


def test_units_come_from_the_family_registry():
    from gnorm_kernels.heads.families import head_layout

    m = small_model("bert")
    layout, heads = unit_layout(m), head_layout(m)
    for block, head_block in zip(layout.blocks, heads.blocks):
        assert block.layer is head_block.layer
        assert (block.ffn_in, block.ffn_out) == head_block.ffn


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_save_and_load_grain_round_trip(tmp_path, family):
    m = small_model(family)
    masks = hard_masks(unit_layout(m), seed=5)
    batch = inputs(random_batches(m, batch_size=3)[0])
    with torch.no_grad():
        with mask_units(m, masks):
            masked = m(**batch).logits
    shrunk = shrink_model(copy.deepcopy(m), masks)
    save_grain(shrunk, tmp_path / "ckpt")
    for impl in IMPLS:
        loaded = load_grain(tmp_path / "ckpt", impl=impl)
        with torch.no_grad():
            torch.testing.assert_close(loaded(**batch).logits, masked, atol=1e-5, rtol=1e-5)
    assert GrainStructure.from_dict(loaded.config.grain_structure) == GrainStructure.from_masks(masks)
    with pytest.raises(ValueError, match='"auto" was removed'):
        load_grain(tmp_path / "ckpt", impl="auto")


def test_grain_folders_load_through_load_pruned_and_load_model(tmp_path):
    from gnorm_kernels.checkpoints.pruned import load_pruned
    from gnorm_kernels.data.synthetic import synthetic_tokenizer
    from gnorm_kernels.models.loading import load_model

    tokenizer = synthetic_tokenizer()
    m = small_model("bert", vocab_size=len(tokenizer))
    masks = hard_masks(unit_layout(m), seed=3)
    batch = inputs(random_batches(m, batch_size=3)[0])
    with torch.no_grad(), mask_units(m, masks):
        masked = m(**batch).logits
    save_grain(shrink_model(copy.deepcopy(m), masks), tmp_path / "ckpt", tokenizer)
    via_pruned = load_pruned(tmp_path / "ckpt")
    via_model, loaded_tokenizer = load_model(tmp_path / "ckpt")
    assert len(loaded_tokenizer) == len(tokenizer)
    for loaded in (via_pruned, via_model):
        assert GrainStructure.from_dict(loaded.config.grain_structure) == GrainStructure.from_masks(masks)
        with torch.no_grad():
            torch.testing.assert_close(loaded(**batch).logits, masked, atol=1e-5, rtol=1e-5)


def test_head_tools_refuse_a_shrunk_model_clearly():
    from gnorm_kernels.heads.families import head_layout

    m = small_model("bert")
    shrunk = shrink_model(copy.deepcopy(m), hard_masks(unit_layout(m), seed=2))
    for call in (lambda: head_layout(shrunk), lambda: prune_heads(shrunk, {0: [0]})):
        with pytest.raises(ValueError, match="GRAIN-shrunk"):
            call()
    with pytest.raises(ValueError, match=r"inspect it with gnorm_kernels.grain.grain_structure_of\(model\)"):
        head_layout(shrunk)


def test_load_grain_refuses_plain_checkpoints(tmp_path):
    m = small_model("bert")
    m.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no GRAIN structure"):
        load_grain(tmp_path)


def test_structure_round_trips_through_dict_and_masks():
    layout = unit_layout(small_model("bert"))
    masks = hard_masks(layout)
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
    m = shrink_model(small_model("bert"), Units.full(unit_layout(small_model("bert"))))
    with pytest.raises(ValueError, match="already GRAIN-shrunk"):
        unit_layout(m)


def test_shrink_refuses_a_structure_of_another_shape():
    m = small_model("bert")
    other = GrainStructure.from_masks(Units.full(unit_layout(small_model("bert", num_layers=2))))
    with pytest.raises(ValueError, match="structure is for"):
        shrink_model(m, other)
