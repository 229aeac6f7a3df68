"""The offline models ship trained: loading them trains nothing, gives the same weights on any
thread count, refuses changed files; the files are package data; the recipes still make them."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch

from gnorm_kernels.models import loading, shipped_models, tiny_bert, tiny_lm, training
from gnorm_kernels.models.loading import load_model
from gnorm_kernels.models.shipped_models import (
    RECORD,
    SHIPPED_MODELS,
    SHIPPED_SHA256,
    ShippedModelError,
    shipped_folder,
    shipped_record,
    shipped_root,
)
from gnorm_kernels.models.tiny_bert import ASPECTS_RECIPE, TinyRecipe
from gnorm_kernels.models.tiny_lm import LMRecipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"tiny": TinyRecipe(), "tiny-aspects": ASPECTS_RECIPE, "tiny-lm": LMRecipe()}


def refuse_training(monkeypatch) -> None:
    def trained(*args, **kwargs):
        raise AssertionError("a shipped model was trained instead of read")

    for module, name in ((tiny_bert, "train_tiny"), (tiny_lm, "train_tiny_lm"), (tiny_bert, "cached_model"),
                         (tiny_lm, "cached_model"), (training, "cached_model"), (loading, "ensure_tiny")):
        monkeypatch.setattr(module, name, trained)


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_loading_a_shipped_model_trains_nothing_and_writes_no_cache(name, tmp_path, monkeypatch) -> None:
    refuse_training(monkeypatch)
    monkeypatch.setenv("GNORM_CACHE", str(tmp_path / "cache"))
    model, tokenizer = load_model(name, progress=False)
    again, _ = load_model(name, cache=tmp_path / "other", progress=False)
    assert not model.training and model.config.num_hidden_layers == 4
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings
    assert list(tmp_path.iterdir()) == []  # the cache is for derived things: nothing was written


CHILD = """
import hashlib, json, sys, torch
from gnorm_kernels.models import loading, tiny_bert, tiny_lm
def trained(*args, **kwargs):
    sys.exit("a shipped model was trained")
tiny_bert.train_tiny = tiny_lm.train_tiny_lm = trained
digests = {}
for name in ("tiny", "tiny-aspects", "tiny-lm"):
    model, _ = loading.load_model(name, progress=False)
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    digests[name] = digest.hexdigest()
print(json.dumps({"threads": torch.get_num_threads(), "digests": digests}))
"""


def test_the_same_weights_whatever_the_thread_count(tmp_path) -> None:
    seen = {}
    for threads in (1, 2):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GNORM_CACHE": str(tmp_path / f"cache{threads}"),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        seen[threads] = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen[threads]["threads"] == threads
    assert seen[1]["digests"] == seen[2]["digests"]
    assert set(seen[1]["digests"]) == set(SHIPPED_MODELS)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the shipped folders that the loaders read instead of the package's."""
    copy = tmp_path / "shipped"
    shutil.copytree(shipped_root(), copy)
    monkeypatch.setattr(shipped_models, "shipped_root", lambda: copy)
    return copy


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_a_changed_weights_file_is_an_error_naming_it(name, shipped_copy, monkeypatch) -> None:
    refuse_training(monkeypatch)
    weights = shipped_copy / name / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ShippedModelError, match=rf"{weights}.*expected {SHIPPED_SHA256[name]['model.safetensors']}"):
        load_model(name, progress=False)


@pytest.mark.parametrize("file_name", ["model.safetensors", "tokenizer.json", "config.json"])
def test_a_missing_shipped_file_is_an_error_naming_it(file_name, shipped_copy, monkeypatch) -> None:
    refuse_training(monkeypatch)
    (shipped_copy / "tiny-lm" / file_name).unlink()
    with pytest.raises(ShippedModelError, match=rf"{shipped_copy / 'tiny-lm' / file_name} is missing"):
        load_model("tiny-lm", progress=False)


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_the_shipped_files_are_what_the_code_pins_and_the_recipe_made(name) -> None:
    record = shipped_record(name)
    assert shipped_folder(name) == shipped_root() / name
    assert record["sha256"] == SHIPPED_SHA256[name]  # the record and the code pin the same files
    assert "model.safetensors" in SHIPPED_SHA256[name] and "tokenizer.json" in SHIPPED_SHA256[name]
    assert sorted(p.name for p in (shipped_root() / name).iterdir()) == sorted([*SHIPPED_SHA256[name], RECORD])
    assert (shipped_root() / name / "model.safetensors").stat().st_size < 1 << 20  # under 1 MiB
    # a recipe or grammar change makes the shipped model stale: `make models` and pin the new hashes
    assert record["recipe_key"] == RECIPES[name].key()


def test_the_package_data_globs_take_every_shipped_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["gnorm_kernels"]
    package = ROOT / "gnorm_kernels"
    files = [p.relative_to(package).as_posix() for p in shipped_root().rglob("*") if p.is_file()]
    assert len(files) == sum(len(pinned) + 1 for pinned in SHIPPED_SHA256.values())
    assert all(any(fnmatch.fnmatch(f, pattern) for pattern in patterns) for f in files)


@pytest.mark.slow
@pytest.mark.retrain
@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_the_recipe_still_makes_a_model_that_behaves_like_the_shipped_one(name, tmp_path) -> None:
    """Retrains from the recipe (a minute or two) and compares behaviour, never bytes: another
    kind of CPU rounds differently and trains a different model of the same recipe."""
    shipped = shipped_record(name)["behaviour"]
    from gnorm_kernels.models.make_models import build_shipped

    made = build_shipped((name,), tmp_path, progress=False)[name]["behaviour"]
    assert made["test_accuracy"] == pytest.approx(shipped["test_accuracy"], abs=0.02)
    if name == "tiny-aspects":  # the tutorial's model: not saturated, and no single head decides it
        assert 0.85 <= made["test_accuracy"] <= 0.95 and made["largest_head_drop"] <= 0.10
        return
    assert made["test_accuracy"] >= 0.95
    assert made["largest_head_drop"] >= 0.03  # a head the model cannot do without
    assert made["share_of_heads_under_half_a_point"] >= 0.5  # and many it barely uses
    if "test_perplexity" in shipped:
        assert made["test_perplexity"] == pytest.approx(shipped["test_perplexity"], rel=0.1)
