"""The tiny decoder default ("tiny-lm"): its batches, its quality, its heads, its cache."""

from __future__ import annotations

import json
import math
import warnings
from typing import Any, NamedTuple

import pytest
import torch

from gnorm_kernels.data.lm_tasks import VERDICTS, lm_batches, lm_text, lm_tokenizer, synthetic_lm_task
from gnorm_kernels.data.tasks import Example
from gnorm_kernels.evaluation import evaluate, single_head_ablation
from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.models import tiny_lm
from gnorm_kernels.models.shipped_models import shipped_folder, shipped_record
from gnorm_kernels.models.tiny_lm import LMRecipe, ensure_tiny_lm, load_tiny_lm, tiny_lm_cache_path, train_tiny_lm
from gnorm_kernels.models.training import TrainingStuck


class LMSetup(NamedTuple):
    model: Any
    tokenizer: Any
    task: Any


@pytest.fixture(scope="session")
def lm() -> LMSetup:
    """The default tiny LM (shipped with the package)."""
    model, tokenizer = load_tiny_lm(progress=False)
    # the test split is drawn first, so it does not depend on the train size
    return LMSetup(model, tokenizer, synthetic_lm_task(train_size=100))


@pytest.fixture(scope="session")
def lm_test(lm: LMSetup) -> list[dict[str, torch.Tensor]]:
    return lm.task.batches("test", lm.tokenizer, batch_size=500)


def reviews(n: int = 6) -> list[Example]:
    return synthetic_lm_task(train_size=10, calibration_size=1, test_size=n).splits["test"]


# --------------------------------------------------------------------------- batches


def test_lm_batches_hold_the_verdict_where_verdict_index_points() -> None:
    tokenizer = lm_tokenizer()
    examples = reviews(6)
    (batch,) = lm_batches(examples, tokenizer, VERDICTS, batch_size=6)
    assert sorted(batch) == ["attention_mask", "input_ids", "label_token_ids", "labels", "verdict_index"]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert tokenizer.convert_ids_to_tokens(batch["label_token_ids"].tolist()) == list(VERDICTS)
    assert batch["labels"].tolist() == [ex.label for ex in examples]
    rows = torch.arange(len(examples))
    assert torch.equal(ids[rows, batch["verdict_index"]], batch["label_token_ids"][batch["labels"]])
    assert (ids[:, 0] == tokenizer.bos_token_id).all()
    for row, ex in enumerate(examples):
        real = int(mask[row].sum())
        assert batch["verdict_index"][row] == real - 1  # the verdict is the last real token
        assert mask[row, :real].all() and not mask[row, real:].any()  # padded on the right
        assert (ids[row, real:] == tokenizer.pad_token_id).all()
        words = tokenizer.convert_ids_to_tokens(ids[row, 1:real].tolist())
        assert " ".join(words) == lm_text(ex).replace(",", " ,")
    assert lm_text(examples[0]).endswith(f"verdict : {VERDICTS[examples[0].label]}")


def test_text_only_batches_carry_no_labels_and_give_perplexity_only(lm: LMSetup) -> None:
    batches = lm_batches(reviews(8), lm.tokenizer, None, batch_size=4)
    assert all(sorted(b) == ["attention_mask", "input_ids"] for b in batches)
    result = evaluate(lm.model, batches, metric="perplexity")
    assert "accuracy" not in result and math.isfinite(result["perplexity"]) and result["perplexity"] > 1


@pytest.mark.parametrize("verdicts", [("negative", "very positive"), ("negative", "meh"), ("positive", "positive")])
def test_a_verdict_that_is_not_one_distinct_known_token_is_refused(verdicts) -> None:
    with pytest.raises(ValueError, match="verdict"):
        lm_batches(reviews(2), lm_tokenizer(), verdicts, batch_size=2)


def test_text_pairs_are_refused() -> None:
    with pytest.raises(ValueError, match="text_pair"):
        lm_batches([Example("the film was good", "the plot was dull", 1)], lm_tokenizer(), batch_size=1)


def test_a_row_longer_than_max_length_is_an_error_not_a_cut_verdict() -> None:
    examples = reviews(4)
    longest = max(len(lm_tokenizer()(lm_text(ex))["input_ids"]) for ex in examples)
    lm_batches(examples, lm_tokenizer(), batch_size=4, max_length=longest)
    with pytest.raises(ValueError, match="max_length"):
        lm_batches(examples, lm_tokenizer(), batch_size=4, max_length=longest - 1)


def test_the_task_is_the_synthetic_reviews_named_by_verdict() -> None:
    from gnorm_kernels.data.synthetic import synthetic_task
    from gnorm_kernels.data.tasks import Task

    task = synthetic_lm_task(train_size=50, calibration_size=10, test_size=20)
    base = synthetic_task(train_size=50, calibration_size=10, test_size=20)
    assert isinstance(task, Task) and task.name == "synthetic-lm" and task.label_names == list(VERDICTS)
    assert task.splits == base.splits


def test_the_task_batches_its_splits_as_lm_batches() -> None:
    task = synthetic_lm_task(train_size=50, calibration_size=10, test_size=20)
    tokenizer = lm_tokenizer()
    for labelled, verdicts in ((True, VERDICTS), (False, None)):
        got = task.batches("calibration", tokenizer, batch_size=4, labelled=labelled, shuffle=True, seed=3)
        want = lm_batches(task.splits["calibration"], tokenizer, verdicts, batch_size=4, shuffle=True, seed=3)
        assert len(got) == len(want) == 3
        assert all(sorted(g) == sorted(w) and all(torch.equal(g[k], w[k]) for k in g) for g, w in zip(got, want))
    with pytest.raises(KeyError, match="validation"):
        task.batches("validation", tokenizer)


def test_the_tokenizer_reloads_the_same(tmp_path) -> None:
    from transformers import AutoTokenizer

    tokenizer = lm_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = lm_text(reviews(1)[0])
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert again.padding_side == "right" and again.pad_token_id == tokenizer.pad_token_id
    assert "token_type_ids" not in again(text)


# --------------------------------------------------------------------------- the trained model


def test_tiny_lm_is_a_grouped_llama(lm: LMSetup) -> None:
    layout = head_layout(lm.model)
    assert layout.family == "llama" and layout.causal
    assert layout.shape == (4, 8) and layout.grouped and layout.kv_heads == 2
    assert not lm.model.training


def test_tiny_lm_reaches_95_percent_verdict_accuracy_with_a_low_perplexity(lm: LMSetup, lm_test) -> None:
    result = evaluate(lm.model, lm_test)
    assert result["n"] == 2_000
    assert result["accuracy"] >= 0.95
    # a model that knew nothing of the grammar would be near the vocabulary size (107)
    assert math.isfinite(result["perplexity"]) and 1 < result["perplexity"] < 10
    recorded = shipped_record("tiny-lm")
    assert recorded["accuracy"] == pytest.approx(result["accuracy"])
    assert recorded["perplexity"] == pytest.approx(result["perplexity"], rel=1e-4)
    assert recorded["torch_threads"] == LMRecipe().threads


@pytest.mark.slow
def test_tiny_lm_heads_are_worth_pruning(lm: LMSetup, lm_test) -> None:
    """One head the model cannot do without, and many it barely uses (33 evaluations).

    On the 2,000 test reviews the shipped model (seed 0) loses 20.9 points without head (0, 2),
    6.4 without (0, 4), and under 0.5 points without 30 of its 32 heads.
    """
    drops = single_head_ablation(lm.model, lm_test, progress=False)
    assert drops.shape == (4, 8)
    assert drops.max().item() >= 0.05
    assert (drops < 0.005).float().mean().item() >= 0.30


def test_the_shipped_folder_reloads_to_identical_logits(lm: LMSetup) -> None:
    again, tokenizer = load_tiny_lm(progress=False)
    (batch,) = lm_batches(reviews(4), tokenizer, batch_size=4)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, lm.model(**inputs).logits)


# --------------------------------------------------------------------------- recipe and training

SHORT = dict(train_size=300, steps=6, warmup_steps=100, batch_size=16, min_accuracy=0.0)


def test_the_key_names_the_recipe_and_the_grammar(monkeypatch) -> None:
    base = LMRecipe().key()
    assert base == LMRecipe().key()
    assert len({base, LMRecipe(seed=LMRecipe().seed + 1).key(), LMRecipe(kv_heads=4).key()}) == 3
    assert tiny_lm_cache_path().name == f"tiny-lm-{base}"
    monkeypatch.setattr(tiny_lm, "synthetic_fingerprint", lambda: "another grammar")
    assert LMRecipe().key() != base


def test_training_is_deterministic_for_a_recipe() -> None:
    first, _, _ = train_tiny_lm(LMRecipe(**SHORT), progress=False)
    second, _, _ = train_tiny_lm(LMRecipe(**SHORT), progress=False)
    other, _, _ = train_tiny_lm(LMRecipe(**SHORT, seed=1), progress=False)
    pairs = list(zip(first.state_dict().values(), second.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in pairs)
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values()))


def test_training_runs_on_the_recipe_thread_count_and_restores_it(monkeypatch) -> None:
    seen = {}

    def stop_at_the_loop(*args, **kwargs):
        seen["threads"] = torch.get_num_threads()
        raise RuntimeError("stopped before training")

    monkeypatch.setattr(tiny_lm, "_train_loop", stop_at_the_loop)
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="stopped before training"):
        train_tiny_lm(LMRecipe(**SHORT, threads=before + 1), progress=False)
    assert seen["threads"] == before + 1
    assert torch.get_num_threads() == before


def test_a_run_stuck_at_chance_is_reported() -> None:
    stuck = LMRecipe(**{**SHORT, "steps": 20, "warmup_steps": 2}, lr=0.0)
    with pytest.raises(TrainingStuck, match="chance"):
        train_tiny_lm(stuck, progress=False)


# --------------------------------------------------------------------------- the cache


def fake_training(calls: list):
    from gnorm_kernels.testing import tiny_random_model

    def train(recipe, *, progress=True):
        calls.append(recipe)
        tokenizer = lm_tokenizer()
        model = tiny_random_model("llama", vocab_size=len(tokenizer), num_kv_heads=2, seed=recipe.seed)
        return model, tokenizer, {"accuracy": 0.5}

    return train


OTHER = LMRecipe(seed=7)  # not the shipped recipe: trained on first use and cached


def test_the_cache_trains_once_per_recipe_and_leaves_no_temporary_folders(tmp_path, monkeypatch) -> None:
    calls: list = []
    monkeypatch.setattr(tiny_lm, "train_tiny_lm", fake_training(calls))
    first = ensure_tiny_lm(OTHER, cache=tmp_path, progress=False)
    assert ensure_tiny_lm(OTHER, cache=tmp_path, progress=False) == first
    assert len(calls) == 1
    ensure_tiny_lm(LMRecipe(seed=8), cache=tmp_path, progress=False)
    assert ensure_tiny_lm(LMRecipe(), cache=tmp_path, progress=False) == shipped_folder("tiny-lm")  # never trained
    assert len(calls) == 2
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([first.name, tiny_lm_cache_path(LMRecipe(seed=8), tmp_path).name])
    assert json.loads((first / "training.json").read_text())["accuracy"] == 0.5


@pytest.mark.parametrize("damage", ["truncate weights", "drop weights", "drop record", "drop tokenizer"])
def test_a_broken_cache_entry_is_noticed_and_rebuilt(tmp_path, monkeypatch, damage) -> None:
    calls: list = []
    monkeypatch.setattr(tiny_lm, "train_tiny_lm", fake_training(calls))
    folder = ensure_tiny_lm(OTHER, cache=tmp_path, progress=False)
    weights = folder / "model.safetensors"
    if damage == "truncate weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        name = {"drop weights": "model.safetensors", "drop record": "training.json", "drop tokenizer": "tokenizer.json"}
        (folder / name[damage]).unlink()
    with pytest.warns(UserWarning, match="broken"):
        assert ensure_tiny_lm(OTHER, cache=tmp_path, progress=False) == folder
    assert len(calls) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, _ = load_tiny_lm(OTHER, cache=tmp_path, progress=False)  # whole again: no warning, no training
    assert len(calls) == 2 and head_layout(model).grouped
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_failed_training_leaves_no_cache_entry(tmp_path, monkeypatch) -> None:
    def broken(recipe, *, progress=True):
        raise TrainingStuck("stuck")

    monkeypatch.setattr(tiny_lm, "train_tiny_lm", broken)
    with pytest.raises(TrainingStuck):
        ensure_tiny_lm(OTHER, cache=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
