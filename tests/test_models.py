"""The tiny default model (quality, caching, its heads) and loading of local checkpoints."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from gnorm_kernels.data.synthetic import synthetic_tokenizer
from gnorm_kernels.evaluation import evaluate, single_head_ablation
from gnorm_kernels.models import tiny_bert as models
from gnorm_kernels.models.loading import load_model
from gnorm_kernels.models.shipped_models import shipped_record
from gnorm_kernels.models.tiny_bert import TinyRecipe, tiny_cache_path
from gnorm_kernels.models.training import TrainingStuck


def logits(model, tokenizer, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(texts, return_tensors="pt", padding=True)).logits


# --------------------------------------------------------------------------- the tiny model


def test_tiny_reaches_95_percent_on_the_test_split(tiny, tiny_test) -> None:
    assert not tiny.model.training
    assert tiny.model.config.num_hidden_layers == 4 and tiny.model.config.num_attention_heads == 8
    assert tiny.model.config.hidden_size == 64 and tiny.model.config.intermediate_size == 256
    assert evaluate(tiny.model, tiny_test)["accuracy"] >= 0.95


def test_tiny_gets_contrast_and_negation_right(tiny) -> None:
    cases = {
        "the plot was good but the popcorn was bad": 1,
        "the popcorn was good but the plot was bad": 0,
        "the acting was not great": 0,
        "the acting was never boring": 1,
        "the ending was awful but the cast was not bad": 1,
        "the ending was not awful but the cast was bad": 0,
        "the music was very dull but honestly, the film was superb but my seat was terrible": 1,
        "the music was superb but the film was hardly clever but my coffee was great": 0,
    }
    predicted = logits(tiny.model, tiny.tokenizer, list(cases)).argmax(-1).tolist()
    assert dict(zip(cases, predicted)) == cases


def test_tiny_is_the_shipped_model_whatever_the_cache(tiny, tmp_path, monkeypatch) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("load_model trained the shipped model")

    from gnorm_kernels.models import loading

    monkeypatch.setattr(models, "train_tiny", no_training)
    monkeypatch.setattr(loading, "ensure_tiny", no_training)
    model, tokenizer = load_model("tiny", cache=tmp_path, recipe=TinyRecipe(), progress=False)
    text = ["the plot was not good but the coffee was great"]
    assert torch.equal(logits(model, tokenizer, text), logits(tiny.model, tiny.tokenizer, text))
    assert set(tokenizer(text)) >= {"input_ids", "token_type_ids", "attention_mask"}
    assert list(tmp_path.iterdir()) == []


def test_training_runs_on_the_recipe_thread_count_and_restores_it(monkeypatch) -> None:
    seen = {}

    def stop_at_the_loop(*args, **kwargs):
        seen["threads"] = torch.get_num_threads()
        raise RuntimeError("stopped before training")

    monkeypatch.setattr(models, "_train_loop", stop_at_the_loop)
    before = torch.get_num_threads()
    recipe = TinyRecipe(threads=before + 1, train_size=2_000)
    with pytest.raises(RuntimeError, match="stopped before training"):
        models.train_tiny(recipe, progress=False)
    assert seen["threads"] == before + 1
    assert torch.get_num_threads() == before


def test_progress_false_silences_the_loading_bars(tiny, capfd) -> None:
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    capfd.readouterr()
    load_model("tiny", progress=False)
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err
    assert hf_logging.is_progress_bar_enabled()  # the global setting is restored


@pytest.mark.slow
def test_tiny_heads_are_worth_pruning(tiny) -> None:
    """One head the model cannot do without, and many it barely uses (33 evaluations).

    On the 2,000 test reviews the shipped model loses 18.1 points without head (0, 2) and under
    0.5 points without each of the other 31 heads (its record, `shipped_record("tiny")`, holds
    the whole grid).
    """
    batches = tiny.task.batches("test", tiny.tokenizer, batch_size=500)  # as `shipped_models.behaviour`
    drops = single_head_ablation(tiny.model, batches, progress=False)
    assert drops.shape == (4, 8)
    recorded = torch.tensor(shipped_record("tiny")["behaviour"]["head_drops"])
    assert torch.allclose(drops, recorded, atol=1.5e-3)  # up to 3 of 2,000 verdicts may round the other way
    assert divmod(int(drops.argmax()), 8) == (0, 2) and drops.max().item() >= 0.15
    assert (drops < 0.005).float().mean().item() >= 0.9


# --------------------------------------------------------------------------- caching mechanics


def fake_training(calls: list):
    from gnorm_kernels.testing import tiny_random_model

    def train(recipe, *, progress=True):
        calls.append(recipe)
        tokenizer = synthetic_tokenizer()
        model = tiny_random_model("bert", vocab_size=len(tokenizer), seed=recipe.seed)
        return model, tokenizer, {"recipe": asdict(recipe)}

    return train


OTHER = TinyRecipe(seed=7)  # not the shipped recipe: trained on first use and cached


def test_cache_trains_once_per_recipe_and_leaves_no_temporary_folders(tmp_path, monkeypatch) -> None:
    calls: list = []
    monkeypatch.setattr(models, "train_tiny", fake_training(calls))
    first, _ = load_model("tiny", cache=tmp_path, recipe=OTHER, progress=False)
    second, _ = load_model("tiny", cache=tmp_path, recipe=OTHER, progress=False)
    assert len(calls) == 1
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    load_model("tiny", cache=tmp_path, recipe=TinyRecipe(seed=8), progress=False)
    load_model("tiny", cache=tmp_path, progress=False)  # the shipped model: no training, no entry
    assert len(calls) == 2
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert entries == sorted([tiny_cache_path(OTHER, tmp_path).name, tiny_cache_path(TinyRecipe(seed=8), tmp_path).name])


@pytest.mark.parametrize("damage", ["truncate weights", "drop tokenizer", "record without a hash"])
def test_a_broken_tiny_entry_is_set_aside_and_trained_again(tmp_path, monkeypatch, damage) -> None:
    calls: list = []
    monkeypatch.setattr(models, "train_tiny", fake_training(calls))
    load_model("tiny", cache=tmp_path, recipe=OTHER, progress=False)
    folder = tiny_cache_path(OTHER, tmp_path)
    record = json.loads((folder / "training.json").read_text())
    weights = folder / "model.safetensors"
    assert len(record["weights_sha256"]) == 64
    if damage == "truncate weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "drop tokenizer":
        (folder / "tokenizer.json").unlink()
    else:  # an entry cached before weights were hashed
        (folder / "training.json").write_text(json.dumps({k: v for k, v in record.items() if k != "weights_sha256"}))
    with pytest.warns(UserWarning, match="tiny cache entry .* is broken"):
        model, _ = load_model("tiny", cache=tmp_path, recipe=OTHER, progress=False)
    assert len(calls) == 2 and model.config.num_hidden_layers > 0
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]
    assert json.loads((folder / "training.json").read_text())["weights_sha256"] == record["weights_sha256"]


def test_failed_training_leaves_no_cache_entry(tmp_path, monkeypatch) -> None:
    def broken(recipe, *, progress=True):
        raise TrainingStuck("stuck")

    monkeypatch.setattr(models, "train_tiny", broken)
    with pytest.raises(TrainingStuck):
        load_model("tiny", cache=tmp_path, recipe=OTHER, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cache_key_covers_every_setting(monkeypatch) -> None:
    from gnorm_kernels.data import synthetic

    base = TinyRecipe()
    base_key = base.key()
    with monkeypatch.context() as patch:
        patch.setattr(synthetic, "P_NEGATION", synthetic.P_NEGATION + 0.1)
        assert TinyRecipe().key() != base_key  # the grammar is part of the key
    assert base.key() == TinyRecipe().key()
    others = [TinyRecipe(seed=base.seed + 1), TinyRecipe(lr=1e-3), TinyRecipe(steps=10), TinyRecipe(length_pool=8)]
    assert len({base.key(), *(r.key() for r in others)}) == 5


def test_training_that_stays_at_chance_is_reported() -> None:
    recipe = TinyRecipe(lr=0.0, warmup_steps=1, steps=10, train_size=640)
    with pytest.raises(TrainingStuck, match="chance"):
        models.train_tiny(recipe, progress=False)


def test_tiny_rejects_other_label_counts(tmp_path) -> None:
    with pytest.raises(ValueError, match="2 labels"):
        load_model("tiny", num_labels=3, cache=tmp_path)


# --------------------------------------------------------------------------- local checkpoints


def test_local_folder_loads_like_a_hub_checkpoint(tmp_path) -> None:
    from gnorm_kernels.testing import tiny_random_model

    tokenizer = synthetic_tokenizer()
    saved = tiny_random_model("bert", vocab_size=len(tokenizer), num_labels=2)
    saved.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, loaded_tokenizer = load_model(tmp_path, attn_implementation="eager")
    assert not model.training
    assert model.config._attn_implementation == "eager"
    text = ["the film was good", "my seat was not comfortable"]
    assert torch.allclose(logits(model, loaded_tokenizer, text), logits(saved, tokenizer, text), atol=1e-6)

    relabelled, _ = load_model(str(tmp_path), num_labels=5, new_head=True)  # a new classifier, asked for
    assert relabelled.classifier.out_features == 5


def test_pruned_folder_goes_through_load_pruned(tmp_path) -> None:
    from gnorm_kernels.checkpoints.pruned import save_pruned
    from gnorm_kernels.heads.families import head_layout
    from gnorm_kernels.heads.pruning import prune_heads
    from gnorm_kernels.testing import tiny_random_model

    tokenizer = synthetic_tokenizer()
    model = tiny_random_model("bert", vocab_size=len(tokenizer), num_layers=2, num_heads=4)
    prune_heads(model, {0: [1], 1: [0, 3]})
    save_pruned(model, tmp_path, tokenizer)
    loaded, loaded_tokenizer = load_model(tmp_path)
    assert head_layout(loaded).pruned_heads() == {0: [1], 1: [0, 3]}
    text = ["the plot was not bad but the bus was noisy"]
    assert torch.allclose(logits(loaded, loaded_tokenizer, text), logits(model, tokenizer, text), atol=1e-6)


def test_folder_without_a_checkpoint_says_what_was_expected(tmp_path) -> None:
    with pytest.raises(OSError, match="config.json"):
        load_model(tmp_path)


def test_a_folder_without_its_tokenizer_is_refused(tmp_path) -> None:
    from gnorm_kernels.data.synthetic import synthetic_tokenizer
    from gnorm_kernels.testing import tiny_random_model

    model = tiny_random_model("bert", vocab_size=len(synthetic_tokenizer()))
    model.save_pretrained(tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_model(tmp_path / "bare", progress=False)
    loaded, tokenizer = load_model(tmp_path / "bare", tokenizer=synthetic_tokenizer(), progress=False)
    assert len(tokenizer) == len(synthetic_tokenizer())
    small = tiny_random_model("bert", vocab_size=10)
    small.save_pretrained(tmp_path / "small")
    synthetic_tokenizer().save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match="do not belong together"):
        load_model(tmp_path / "small", progress=False)


def test_a_class_count_mismatch_needs_new_head(model_dir) -> None:
    with pytest.raises(ValueError, match="2 classes but the task has 1001.*new_head=True"):
        load_model(model_dir, num_labels=1001, progress=False)
    model, _ = load_model(model_dir, num_labels=3, new_head=True, progress=False)
    assert model.config.num_labels == 3


def test_local_looking_typos_fail_at_once_and_pickle_is_refused(tmp_path, model_dir, monkeypatch) -> None:
    import shutil
    import time

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    start = time.perf_counter()
    for typo in (tmp_path / "typo", "./no-such-run", "runs/typo"):  # runs/ exists here: a local path
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load_model(typo, progress=False)
    assert time.perf_counter() - start < 5  # nothing went to the hub
    (tmp_path / "x.csv").write_text("text,label\n")
    with pytest.raises(FileNotFoundError, match="is a file"):
        load_model(tmp_path / "x.csv", progress=False)
    shutil.copytree(model_dir, tmp_path / "pickle")
    from safetensors.torch import load_file

    torch.save(load_file(str(tmp_path / "pickle" / "model.safetensors")), tmp_path / "pickle" / "pytorch_model.bin")
    (tmp_path / "pickle" / "model.safetensors").unlink()
    with pytest.raises((OSError, ValueError), match="safetensors only"):
        load_model(tmp_path / "pickle", progress=False)


def test_path_like_names_are_no_such_folder_and_hub_ids_stay_hub_ids(tmp_path, monkeypatch) -> None:
    """Names written like paths never reach the hub; "org/name" does, and when the hub cannot
    provide it the error says there is no such folder here and states the rule."""
    import socket

    import transformers

    from gnorm_kernels.models.loading import _looks_local

    def no_network(*args, **kwargs):
        raise AssertionError("a local path went to the network")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for name in ("./x", "../x", "~/no-such-gnorm-model", "mymodels/bert/", "a/b/c", "my models/bert", "a\\b"):
        with pytest.raises(FileNotFoundError, match="does not exist: no such folder .*otherwise \"name\" or \"org/name\""):
            load_model(name, progress=False)
    assert not _looks_local("org/name") and not _looks_local("bert-base-uncased")
    (tmp_path / "mymodels").mkdir()
    assert _looks_local("mymodels/bert")  # its parent folder is here: a path
    with pytest.raises(FileNotFoundError, match="mymodels/bert does not exist: no such folder"):
        load_model("mymodels/bert", progress=False)

    tried = []

    def offline_hub(name, **kwargs):
        tried.append(name)
        raise OSError(f"{name} is not a model on the hub (offline)")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline_hub)
    with pytest.raises(OSError, match="'othermodels/bert' \\(no such folder here, so it was tried as a hub id"):
        load_model("othermodels/bert", progress=False)
    assert tried == ["othermodels/bert"]


def test_a_damaged_tiny_cache_says_to_delete_it(tmp_path, monkeypatch) -> None:
    from gnorm_kernels.models import loading

    folder = tmp_path / "tiny-broken"
    folder.mkdir()
    (folder / "training.json").write_text("{}")
    (folder / "config.json").write_text("{}")
    monkeypatch.setattr(loading, "ensure_tiny", lambda recipe, cache, progress: folder)
    with pytest.raises(RuntimeError, match="delete that folder"):
        load_model("tiny", recipe=OTHER, progress=False)


def test_loading_a_decoder_folder_prints_no_tensor_parallel_warning(tmp_path):
    """transformers 5.24 checks its tensor-parallel plan, and warns "layers were not sharded",
    exactly when its loading logger is at WARNING or above, which the quiet load report sets."""
    import logging

    from gnorm_kernels.testing import tiny_random_model

    tokenizer = synthetic_tokenizer()
    model = tiny_random_model("llama", vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("transformers.distributed.tensor_parallel")
    logger.addHandler(handler)
    try:
        load_model(str(tmp_path), progress=False)
    finally:
        logger.removeHandler(handler)
    assert not [r.getMessage() for r in records if "not sharded" in r.getMessage()]
