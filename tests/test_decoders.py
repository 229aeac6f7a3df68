"""Decoder LLMs (GPT-2, Llama, Qwen2, Mistral): layout, masking = pruning for both units,
generation with the KV cache after pruning, and pruned checkpoints that reload exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from gnorm_kernels.checkpoints.pruned import load_pruned, save_pruned
from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.masking import mask_heads
from gnorm_kernels.heads.pruning import prune_heads, prune_kv_groups
from gnorm_kernels.testing import DECODER_FAMILIES, random_batches, tiny_random_model

IMPLEMENTATIONS = ("eager", "sdpa")
GROUPED = ("llama", "qwen2", "mistral")


def _model(family: str, attn: str = "eager", **kw):
    return tiny_random_model(family, num_layers=2, num_heads=4, head_size=8, attn_implementation=attn, **kw)


def _mask(layout, heads: dict[int, list[int]]) -> torch.Tensor:
    mask = torch.ones(layout.shape)
    for layer, hs in heads.items():
        mask[layer, hs] = 0.0
    return mask


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


# head maps: one head; a whole group of layer 0 plus one head of layer 1 (uneven groups);
# every head of layer 0 (an empty first layer); scattered heads in both layers
HEAD_MAPS = ({0: [1]}, {0: [0, 1], 1: [3]}, {0: [0, 1, 2, 3]}, {0: [2], 1: [0, 1, 2]})


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_layout_reports_query_and_key_value_heads(family):
    layout = head_layout(_model(family))
    assert layout.causal and layout.shape == (2, 4)
    if family in GROUPED:
        assert layout.grouped and layout.kv_shape == (2, 2)
        assert layout.kv_group_of().tolist() == [0, 0, 1, 1]
        assert [w.shape[0] for w in layout.blocks[0].qkv_weights()] == [32, 16, 16]
    else:
        assert not layout.grouped and layout.kv_group_of().tolist() == [0, 1, 2, 3]
        assert layout.blocks[0].fused_qkv  # GPT-2's c_attn
        assert [tuple(w.shape) for w in layout.blocks[0].qkv_weights()] == [(32, 32)] * 3


@pytest.mark.parametrize("attn", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", DECODER_FAMILIES)
@pytest.mark.parametrize("heads", HEAD_MAPS, ids=["one", "group+uneven", "empty-layer", "scattered"])
def test_masking_equals_pruning_and_generation_matches(family, attn, heads):
    model = _model(family, attn)
    batch = random_batches(model, num_batches=1, batch_size=3, seq_len=10)[0]
    assert "labels" not in batch
    mask = _mask(head_layout(model), heads)
    with mask_heads(model, mask):
        masked = _logits(model, batch)
        masked_tokens = model.generate(batch["input_ids"][:1], max_new_tokens=5, do_sample=False)
    pruned = prune_heads(copy.deepcopy(model), heads)
    assert head_layout(pruned).pruned_heads() == {k: sorted(v) for k, v in heads.items()}
    torch.testing.assert_close(_logits(pruned, batch), masked, atol=1e-5, rtol=1e-5)
    tokens = pruned.generate(batch["input_ids"][:1], max_new_tokens=5, do_sample=False)
    assert torch.equal(tokens, masked_tokens)


@pytest.mark.parametrize("family", GROUPED)
def test_a_kv_group_is_all_its_query_heads_and_shrinks_the_cache(family):
    model = _model(family, "sdpa")
    batch = random_batches(model, num_batches=1, batch_size=2, seq_len=8)[0]
    layout = head_layout(model)
    mask = torch.ones(layout.shape)
    mask[1, 2:4] = 0  # group 1 of layer 1 = query heads 2 and 3
    with mask_heads(model, mask):
        masked = _logits(model, batch)
    pruned = prune_kv_groups(copy.deepcopy(model), {1: [1]})
    after = head_layout(pruned)
    assert after.pruned_heads() == {1: [2, 3]} and after.pruned_kv_heads() == {1: [1]}
    assert pruned.config._attn_implementation == "sdpa"  # uniform groups need no special attention
    torch.testing.assert_close(_logits(pruned, batch), masked, atol=1e-5, rtol=1e-5)
    out = pruned(input_ids=batch["input_ids"], use_cache=True)
    layers = out.past_key_values.layers
    assert [int(layer.keys.shape[1]) for layer in layers] == [2, 1]  # KV heads cached per layer


@pytest.mark.parametrize("attn", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_pruned_decoder_round_trips_through_a_checkpoint(family, attn, tmp_path):

    model = prune_heads(_model(family, attn), {0: [1, 2], 1: [0, 1, 2, 3]})
    batch = random_batches(model, num_batches=1, batch_size=2, seq_len=9)[0]
    save_pruned(model, tmp_path / "ck")
    reloaded = load_pruned(tmp_path / "ck", attn_implementation=attn)
    torch.testing.assert_close(_logits(reloaded, batch), _logits(model, batch), atol=0, rtol=0)
    prompt = batch["input_ids"][:1]
    assert torch.equal(reloaded.generate(prompt, max_new_tokens=4, do_sample=False),
                       model.generate(prompt, max_new_tokens=4, do_sample=False))
    assert head_layout(reloaded).pruned_heads() == {0: [1, 2], 1: [0, 1, 2, 3]}


def test_bad_unit_input_is_refused_before_anything_changes():
    gpt2 = _model("gpt2")
    with pytest.raises(ValueError, match="one query head per key/value head.*prune_heads"):
        prune_kv_groups(gpt2, {0: [0]})
    llama = _model("llama")
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    with pytest.raises(ValueError, match="key/value group 2 of layer 0 is out of range"):
        prune_kv_groups(llama, {0: [2]})
    with pytest.raises(ValueError, match="not an integer layer index"):
        prune_heads(llama, {"1.5": [0]})
    assert head_layout(llama).pruned_heads() == {}
    assert all(torch.equal(v, before[k]) for k, v in llama.state_dict().items())


def test_uneven_groups_refuse_an_attention_without_a_grouped_variant():
    model = _model("llama")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="'sdpa' or 'eager'"):
        prune_heads(model, {0: [1]})
    assert head_layout(model).pruned_heads() == {}


@pytest.mark.parametrize("attn", IMPLEMENTATIONS)
def test_uneven_groups_decode_a_left_padded_batch_like_the_masked_model(attn):
    """One-token decoding packs each key/value head's query heads (no cache copy); padding
    in the prompt must reach every packed row."""
    model = tiny_random_model("llama", num_layers=2, num_heads=8, head_size=8, num_kv_heads=4, attn_implementation=attn)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 99, (3, 7), generator=gen)
    attention = torch.ones_like(ids)
    attention[1, :2] = 0
    heads = {0: [0, 3, 5], 1: [7]}  # groups of sizes 1, 1, 2, 2 in layer 0; 2, 2, 2, 1 in layer 1
    with mask_heads(model, _mask(head_layout(model), heads)):
        masked = model.generate(ids, attention_mask=attention, max_new_tokens=6, do_sample=False)
    pruned = prune_heads(copy.deepcopy(model), heads)
    assert pruned.config._attn_implementation.startswith("gnorm_grouped")
    assert torch.equal(pruned.generate(ids, attention_mask=attention, max_new_tokens=6, do_sample=False), masked)


@pytest.mark.parametrize("attn", IMPLEMENTATIONS)
@pytest.mark.parametrize("layer", [0, 1], ids=["first-layer", "middle-layer"])
@pytest.mark.parametrize("reload", [False, True], ids=["in-memory", "reloaded"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_an_emptied_layer_decodes_with_the_cache_like_without_it(family, attn, layer, reload, tmp_path):
    """Every KV group (GPT-2: every head) of one layer removed: the layer caches zero heads,
    which transformers' DynamicLayer took for an empty cache, so an emptied layer 0 reported
    length 0 and cached generation from left-padded prompts went wrong. Single and batched prompts must match the
    uncached run and the masked model, and the cache must report the real length."""
    from transformers import DynamicCache

    model = tiny_random_model(family, num_layers=3, num_heads=4, head_size=8, attn_implementation=attn)
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 99, (3, 7), generator=gen)
    attention = torch.ones_like(ids)
    attention[1, :2] = 0
    attention[2, :4] = 0  # left padding of different lengths
    mask = torch.ones(3, 4)
    mask[layer] = 0.0
    if family == "llama":  # every key/value group of the layer
        pruned = prune_kv_groups(copy.deepcopy(model), {layer: [0, 1]})
    else:
        pruned = prune_heads(copy.deepcopy(model), {layer: [0, 1, 2, 3]})
    if reload:
        save_pruned(pruned, tmp_path / "pruned")
        pruned = load_pruned(tmp_path / "pruned", attn_implementation=attn)
    assert head_layout(pruned).blocks[layer].kept_heads == ()
    for prompt, att in ((ids[:1], attention[:1]), (ids, attention)):  # single, then batched left-padded
        with mask_heads(model, mask):
            masked = model.generate(prompt, attention_mask=att, max_new_tokens=6, do_sample=False)
        cached = pruned.generate(prompt, attention_mask=att, max_new_tokens=6, do_sample=False)
        uncached = pruned.generate(prompt, attention_mask=att, max_new_tokens=6, do_sample=False, use_cache=False)
        assert torch.equal(cached, uncached) and torch.equal(cached, masked)
    cache = DynamicCache(config=pruned.config)
    with torch.no_grad():
        pruned(input_ids=ids, attention_mask=attention, cache=cache, use_cache=True)
    assert [cache.get_seq_length(i) for i in range(3)] == [7, 7, 7]
    lazy = DynamicCache()  # layers made on first use
    with torch.no_grad():
        pruned(input_ids=ids, attention_mask=attention, cache=lazy, use_cache=True)
    assert lazy.get_seq_length() == 7
    assert cache.layers[layer].keys.shape[1] == 0  # the emptied layer holds no key/value heads
