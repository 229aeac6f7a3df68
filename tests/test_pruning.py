import copy

import pytest
import torch

from gnorm_kernels.checkpoints.pruned import load_pruned, save_pruned
from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.masking import mask_heads
from gnorm_kernels.heads.pruning import prune_heads
from gnorm_kernels.testing import FAMILIES, random_batches, tiny_random_model


def _inputs(model, seed=0):
    batch = random_batches(model, num_batches=1, seed=seed)[0]
    return {k: v for k, v in batch.items() if k != "labels"}


def _mask_from(layout, heads):
    mask = torch.ones(layout.shape)
    for layer, hs in heads.items():
        mask[layer, hs] = 0
    return mask


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_masking_equals_pruning(family, impl):
    model = tiny_random_model(family, num_layers=3, attn_implementation=impl)
    inputs = _inputs(model)
    heads = {0: [1, 3], 1: [0, 1, 2, 3], 2: [2]}  # layer 1 becomes empty
    with torch.no_grad():
        with mask_heads(model, _mask_from(head_layout(model), heads)):
            masked = model(**inputs).logits
        prune_heads(model, heads)
        pruned = model(**inputs).logits
    torch.testing.assert_close(pruned, masked, rtol=1e-5, atol=1e-5)
    layout = head_layout(model)
    assert layout.pruned_heads() == heads
    assert [b.kept_heads for b in layout.blocks] == [(0, 2), (), (0, 1, 3)]
    assert layout.blocks[0].query.weight.shape == (16, 32)
    assert layout.blocks[0].output.weight.shape == (32, 16)
    assert layout.blocks[1].value.weight.shape == (0, 32)
    assert model.config.pruned_heads == {"0": [1, 3], "1": [0, 1, 2, 3], "2": [2]}


@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_in_steps_uses_original_indices(family):
    model = tiny_random_model(family)
    reference = copy.deepcopy(model)
    inputs = _inputs(model)
    prune_heads(model, {0: [2]})
    prune_heads(model, {0: [0, 2], 1: [3]})  # 2 again: a no-op
    prune_heads(reference, {0: [0, 2], 1: [3]})
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits)
    assert head_layout(model).blocks[0].kept_heads == (1, 3)
    # masks keep using the original grid after pruning
    mask = torch.ones(2, 4)
    mask[0, 3] = 0
    mask[0, 0] = 0  # already pruned: ignored
    with torch.no_grad(), mask_heads(model, mask):
        masked = model(**inputs).logits
    prune_heads(model, {0: [3]})
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, masked, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_empty_layer_contributes_only_its_output_bias(family):
    model = tiny_random_model(family)
    inputs = _inputs(model)
    layout = head_layout(model)
    with torch.no_grad():
        # zeroing the whole output weight leaves bias only: the same thing, done by masking
        with mask_heads(model, _mask_from(layout, {0: [0, 1, 2, 3]})):
            masked = model(**inputs).logits
        prune_heads(model, {0: [0, 1, 2, 3]})
        pruned = model(**inputs).logits
        pruned_sdpa = None
        model.set_attn_implementation("sdpa")
        pruned_sdpa = model(**inputs).logits
    torch.testing.assert_close(pruned, masked, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pruned_sdpa, masked, rtol=1e-5, atol=1e-5)
    assert head_layout(model).num_kept_heads == 4
    # gradients still flow through an empty layer
    model(**inputs).logits.sum().backward()


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip(family, tmp_path):
    model = tiny_random_model(family, num_layers=3)
    prune_heads(model, {0: [1], 2: [0, 1, 2, 3]})
    inputs = _inputs(model, seed=3)
    with torch.no_grad():
        expected = model(**inputs).logits
    save_pruned(model, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    loaded = load_pruned(tmp_path / "ckpt", attn_implementation="eager")
    assert type(loaded) is type(model)
    assert head_layout(loaded).pruned_heads() == {0: [1], 2: [0, 1, 2, 3]}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected, rtol=0, atol=0)


def test_round_trip_with_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "film"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]")
    model = tiny_random_model("bert")
    prune_heads(model, {1: [2]})
    save_pruned(model, tmp_path / "ck", tokenizer=tok)
    again = AutoTokenizer.from_pretrained(tmp_path / "ck")
    assert again("good film")["input_ids"] == tok("good film")["input_ids"]
    assert head_layout(load_pruned(tmp_path / "ck")).pruned_heads() == {1: [2]}


@pytest.mark.parametrize(
    "heads, error, match",
    [
        ({5: [0]}, ValueError, "layer 5 is out of range"),
        ({0: [4]}, ValueError, "head 4 of layer 0 is out of range"),
        ({0: [-1]}, ValueError, "out of range"),
        ({"x": [0]}, ValueError, "not an integer"),
        ({0: 1}, TypeError, "must be a list"),
        ({0: ["a"]}, TypeError, "not an integer"),
        ([(0, 1)], TypeError, "mapping"),
    ],
)
def test_bad_head_maps_leave_the_model_unchanged(heads, error, match):
    model = tiny_random_model("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        prune_heads(model, {1: [0], **heads} if isinstance(heads, dict) else heads)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert head_layout(model).pruned_heads() == {}


def test_failure_part_way_restores_the_model(monkeypatch):
    from gnorm_kernels.heads import pruning

    model = tiny_random_model("bert")
    inputs = _inputs(model)
    with torch.no_grad():
        expected = model(**inputs).logits
    calls = {"n": 0}
    real = pruning._prune_block

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(pruning, "_prune_block", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        prune_heads(model, {0: [0, 1, 2, 3], 1: [1]})
    assert head_layout(model).pruned_heads() == {}
    assert type(head_layout(model).blocks[0].attention).__name__ == "BertSelfAttention"
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=0, atol=0)


def test_load_pruned_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pruned(tmp_path)


def test_an_edited_pruned_head_map_is_refused(tmp_path):
    """Same count, other heads: shapes would fit, weights would land in the wrong heads."""
    import json

    model = prune_heads(tiny_random_model("bert"), {0: [1]})
    save_pruned(model, tmp_path / "ck")
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    config["pruned_heads"] = {"0": [2]}
    (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="was config.json edited"):
        load_pruned(tmp_path / "ck")


def test_stray_and_pickle_weight_files(tmp_path):
    """Only model.safetensors (or the shards its index names) is read; pickle is refused."""
    import shutil

    from safetensors.torch import save_file

    model = prune_heads(tiny_random_model("bert"), {1: [0, 3]})
    save_pruned(model, tmp_path / "ck")
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "ck" / "zz-backup.safetensors"))  # sorts after model.safetensors
    loaded = load_pruned(tmp_path / "ck")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    shutil.copytree(tmp_path / "ck", tmp_path / "pickle")
    (tmp_path / "pickle" / "model.safetensors").rename(tmp_path / "pickle" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="only pickle weights.*Convert"):
        load_pruned(tmp_path / "pickle")
    data = (tmp_path / "ck" / "model.safetensors").read_bytes()
    (tmp_path / "ck" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_pruned(tmp_path / "ck")


def test_a_broken_config_names_its_file(tmp_path):
    import json

    model = prune_heads(tiny_random_model("bert"), {0: [1]})
    save_pruned(model, tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_pruned(tmp_path / "ck")
    save_pruned(model, tmp_path / "list")
    config = json.loads((tmp_path / "list" / "config.json").read_text())
    config["pruned_heads"] = [[0, 1]]
    (tmp_path / "list" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="pruned_heads must be a mapping"):
        load_pruned(tmp_path / "list")
    config["pruned_heads"] = {"0": [1]}
    config["architectures"] = ["AutoModel"]
    (tmp_path / "list" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a transformers model class"):
        load_pruned(tmp_path / "list")
    (tmp_path / "list" / "gnorm_checkpoint.json").unlink()  # a folder saved without a manifest
    config["architectures"] = ["BertForSequenceClassification"]
    config["pruned_heads"] = {"0": [7]}
    (tmp_path / "list" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no gnorm_checkpoint.json"):  # pruned heads, no record of them: refused
        load_pruned(tmp_path / "list")
    with pytest.raises(ValueError, match="pruned_heads entry does not fit.*head 7 of layer 0 is out of range"):
        load_pruned(tmp_path / "list", allow_unverified=True)
