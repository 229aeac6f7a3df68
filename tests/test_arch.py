import pytest
import transformers

from gnorm_kernels.heads.families import Family, head_layout, register_family, supported_families
from gnorm_kernels.testing import FAMILIES, tiny_random_model


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_of_each_family(family):
    model = tiny_random_model(family, num_layers=3, num_heads=4, head_size=8)
    layout = head_layout(model)
    assert layout.family == family
    assert layout.shape == (3, 4)
    assert layout.head_size == 8 and layout.hidden_size == 32
    assert layout.kept_mask().all()
    assert layout.pruned_heads() == {}
    for block in layout.blocks:
        assert block.query.weight.shape == (32, 32)
        assert block.output.weight.shape == (32, 32)
    # ALBERT: three shared blocks, each run at two depths
    assert layout.shared_across_depth == (family == "albert")
    if family == "albert":
        assert [b.depths for b in layout.blocks] == [(0, 1), (2, 3), (4, 5)]


@pytest.mark.parametrize("family", FAMILIES)
def test_bare_model_and_task_head_agree(family):
    model = tiny_random_model(family)
    bare = model.base_model
    assert head_layout(bare).shape == head_layout(model).shape
    assert head_layout(bare).blocks[0].query is head_layout(model).blocks[0].query


@pytest.mark.parametrize("family", ["electra", "distilbert"])
def test_second_registered_families(family):
    layout = head_layout(tiny_random_model(family))
    assert layout.family == family and layout.shape == (2, 4)


def test_unsupported_model_names_supported_families():
    config = transformers.OPTConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=8, ffn_dim=16,
                                    word_embed_proj_dim=8, vocab_size=11)
    with pytest.raises(ValueError, match="supported families: .*bert"):
        head_layout(transformers.OPTModel(config))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        head_layout("bert-base-uncased")


def test_register_family_is_the_extension_point():
    gpt2 = Family(
        name="gpt2-like-test",
        model_types=("gpt2-like-test",),
        layers=lambda base: [],
        attention="attn", query="q", key="k", value="v", output="o",
        num_heads=lambda c: 1,
        empty_forward=lambda self, h, *a, **k: (h, None),
    )
    register_family(gpt2)
    assert "gpt2-like-test" in supported_families()
    config = transformers.BertConfig(hidden_size=8, num_attention_heads=2, num_hidden_layers=1,
                                     intermediate_size=8, vocab_size=11)
    model = transformers.BertModel(config)
    model.config.model_type = "gpt2-like-test"  # routed to the new entry, which finds no blocks
    try:
        with pytest.raises(ValueError, match="no attention blocks"):
            head_layout(model)
    finally:
        from gnorm_kernels.heads import families as arch
        arch._FAMILIES.pop("gpt2-like-test")
