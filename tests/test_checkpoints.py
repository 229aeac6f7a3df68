"""Loading checkpoint folders with checks: strict weights, manifests that cannot be deleted away,
weight files confined to their folder, tokenizer files named when broken; and a hypothesis test
that edits, deletes and replaces the files of saved folders (plain, pruned, GRAIN)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from gnorm_kernels.checkpoints.formats import MANIFEST
from gnorm_kernels.checkpoints.pruned import load_pruned, save_pruned
from gnorm_kernels.data.synthetic import synthetic_tokenizer
from gnorm_kernels.grain import GrainStructure, Units, grain_structure_of, load_grain, save_grain, unit_layout
from gnorm_kernels.grain.shrink import shrink_model
from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.pruning import prune_heads
from gnorm_kernels.models.loading import load_model
from gnorm_kernels.testing import tiny_random_model

TOKENIZER = synthetic_tokenizer()


def small(seed: int = 0):
    return tiny_random_model("bert", num_layers=2, num_heads=4, head_size=4, vocab_size=len(TOKENIZER), seed=seed)


def save_plain(model, folder: Path, **options) -> Path:
    model.save_pretrained(folder, **options)
    TOKENIZER.save_pretrained(folder)
    return folder


def grain_model(seed: int, dropped: int):
    """A GRAIN-shrunk model: one query unit of head 0 (`dropped`) and some FFN neurons removed."""
    model = small(seed)
    masks = Units.full(unit_layout(model))
    masks.query[0, 0, dropped] = False
    masks.value[1, 2] = False
    masks.ffn[1, :5] = False
    return shrink_model(model, masks)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def drop_tensors(file: Path, *names: str) -> None:
    tensors = load_file(str(file))
    save_file({k: v for k, v in tensors.items() if k not in names}, str(file))


def run_gnorm(argv: list[str], capsys) -> tuple[int, str]:
    from gnorm_kernels.cli.commands import main

    capsys.readouterr()  # only what the command prints
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code, capsys.readouterr().err


# --------------------------------------------------------------------------- 1. strict loading of plain folders


QUERY = "bert.encoder.layer.1.attention.self.query"


def test_a_plain_folder_missing_tensors_is_refused_naming_them(tmp_path, capsys):
    folder = save_plain(small(), tmp_path / "ck")
    drop_tensors(folder / "model.safetensors", "classifier.weight", "classifier.bias", f"{QUERY}.weight", f"{QUERY}.bias")
    with pytest.raises(ValueError, match=rf"{folder}.*missing 4 \({QUERY}.bias, {QUERY}.weight, classifier.bias, "
                       r"classifier.weight\)"):
        load_model(folder, progress=False)
    # a new classifier may be missing, asked for; the query weights may not
    with pytest.raises(ValueError, match=rf"missing 2 \({QUERY}.bias, {QUERY}.weight\)"):
        load_model(folder, new_head=True, num_labels=2, progress=False)
    # the command line: one line naming the folder and the tensors, and no output (no manifest of random weights)
    code, err = run_gnorm(["prune", "--model", str(folder), "--steps", "1", "--calib-size", "8", "--eval-size", "8",
                           "--quiet", "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and err.count("\n") == 1 and str(folder) in err and "classifier.weight" in err
    assert not (tmp_path / "out" / "model" / MANIFEST).exists() and not list(tmp_path.glob("out/**/" + MANIFEST))


def test_a_plain_folder_with_unexpected_or_reshaped_tensors_is_refused(tmp_path):
    folder = save_plain(small(), tmp_path / "ck")
    tensors = load_file(str(folder / "model.safetensors"))
    save_file(dict(tensors, **{"bert.encoder.layer.0.attention.self.extra": torch.zeros(3)}),
              str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected 1 \(bert.encoder.layer.0.attention.self.extra\)"):
        load_model(folder, progress=False)
    save_file(dict(tensors, **{f"{QUERY}.weight": torch.zeros(8, 16)}), str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"{folder}.*of another shape 1 \({QUERY}.weight\)"):
        load_model(folder, progress=False)
    save_file(tensors, str(folder / "model.safetensors"))
    loaded, _ = load_model(folder, progress=False)
    assert same_state(state(loaded), tensors)


# --------------------------------------------------------------------------- 3. a broken pruned config, the manifest in place


def test_an_emptied_head_map_is_caught_by_the_manifest_in_one_line(tmp_path, capsys):
    folder = tmp_path / "ck"
    save_pruned(prune_heads(small(), {0: [1, 3]}), folder, TOKENIZER)
    config = json.loads((folder / "config.json").read_text())
    config["pruned_heads"] = {}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="was config.json edited"):
        load_model(folder, progress=False)
    code, err = run_gnorm(["prune", "--model", str(folder), "--steps", "1", "--calib-size", "8", "--eval-size", "8",
                           "--quiet", "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and err.count("\n") == 1 and str(folder / "config.json") in err and "Traceback" not in err
    del config["pruned_heads"]  # the key gone altogether
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="was config.json edited"):
        load_model(folder, progress=False)


def test_a_load_failure_of_torch_is_one_line_naming_the_folder(tmp_path, capsys, monkeypatch):
    import transformers

    folder = save_plain(small(), tmp_path / "ck")

    def broken(*args, **kwargs):
        raise RuntimeError("Error(s) in loading state_dict: size mismatch")

    monkeypatch.setattr(transformers.BertForSequenceClassification, "from_pretrained", broken)
    with pytest.raises(ValueError, match=rf"{folder}.*size mismatch"):
        load_model(folder, progress=False)
    code, err = run_gnorm(["prune", "--model", str(folder), "--steps", "1", "--quiet", "--out", str(tmp_path / "o")],
                          capsys)
    assert code == 1 and err.count("\n") == 1 and str(folder) in err and "safetensors" not in err


# --------------------------------------------------------------------------- 4. integrity that cannot be deleted away


def test_a_pruned_folder_without_its_manifest_is_refused_unless_asked(tmp_path):
    model = prune_heads(small(), {0: [1, 3]})
    folder = save_pruned(model, tmp_path / "ck", TOKENIZER)
    (folder / MANIFEST).unlink()
    for load in (lambda **kw: load_pruned(folder, **kw), lambda **kw: load_model(folder, progress=False, **kw)[0]):
        with pytest.raises(ValueError, match=f"no {MANIFEST}"):
            load()
        assert same_state(state(load(allow_unverified=True)), state(model))  # an old folder, trusted on purpose
    config = json.loads((folder / "config.json").read_text())
    config["pruned_heads"] = {"0": [1, 2]}  # the edit: same count, other heads
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"no {MANIFEST}"):
        load_model(folder, progress=False)


def test_a_grain_folder_carries_a_manifest_and_is_refused_without_it(tmp_path):
    shrunk = grain_model(0, dropped=1)
    folder = save_grain(shrunk, tmp_path / "ck", TOKENIZER)
    assert same_state(state(load_grain(folder)), state(shrunk))
    donor = save_grain(grain_model(1, dropped=1), tmp_path / "donor")
    shutil.copy(donor / "model.safetensors", folder / "model.safetensors")  # same shapes, other weights
    with pytest.raises(ValueError, match="differ from those saved with it"):
        load_model(folder, progress=False)
    shutil.copy(tmp_path / "donor" / MANIFEST, folder / MANIFEST)
    config = json.loads((folder / "config.json").read_text())
    (folder / MANIFEST).unlink()
    with pytest.raises(ValueError, match=f"no {MANIFEST}"):
        load_grain(folder)
    loaded = load_grain(folder, allow_unverified=True)
    assert grain_structure_of(loaded) == GrainStructure.from_dict(config["grain_structure"])


# --------------------------------------------------------------------------- 5. weight files stay inside the folder


def _sharded(folder: Path, name: str, tensors: dict) -> None:
    save_file(tensors, str(folder.parent / "outside" / "moved.safetensors"))
    index = {"metadata": {}, "weight_map": {k: name for k in tensors}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("kind", ["plain", "pruned", "grain"])
@pytest.mark.parametrize("how", ["dotdot", "absolute", "link"])
def test_shard_names_cannot_leave_the_folder(tmp_path, kind, how):
    model = {"plain": small, "pruned": lambda: prune_heads(small(), {1: [0]}), "grain": lambda: grain_model(0, 2)}[kind]()
    folder = tmp_path / "models" / "ck"
    {"plain": save_plain, "pruned": lambda m, f: save_pruned(m, f, TOKENIZER),
     "grain": lambda m, f: save_grain(m, f, TOKENIZER)}[kind](model, folder)
    (tmp_path / "models" / "outside").mkdir()
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    outside = tmp_path / "models" / "outside" / "moved.safetensors"
    name = {"dotdot": "../outside/moved.safetensors", "absolute": str(outside), "link": "shard.safetensors"}[how]
    _sharded(folder, name, tensors)
    if how == "link":
        os.symlink(outside, folder / "shard.safetensors")
    loaders = [lambda: load_model(folder, progress=False, allow_unverified=True)]
    if kind != "plain":
        loaders.append(lambda: load_pruned(folder, allow_unverified=True))
    for load in loaders:
        with pytest.raises(ValueError, match="outside"):
            load()


def test_a_single_weight_file_linked_from_outside_is_refused_but_the_hub_cache_layout_loads(tmp_path):
    model = small()
    folder = save_plain(model, tmp_path / "ck")
    (tmp_path / "elsewhere").mkdir()
    (folder / "model.safetensors").rename(tmp_path / "elsewhere" / "w.safetensors")
    os.symlink(tmp_path / "elsewhere" / "w.safetensors", folder / "model.safetensors")
    with pytest.raises(ValueError, match="outside the checkpoint folder"):
        load_model(folder, progress=False)
    snapshot = tmp_path / "models--x--y" / "snapshots" / "abc"  # the hub cache links into ../../blobs
    (tmp_path / "models--x--y" / "blobs").mkdir(parents=True)
    shutil.copytree(folder, snapshot, symlinks=True)
    (snapshot / "model.safetensors").unlink()
    (tmp_path / "elsewhere" / "w.safetensors").rename(tmp_path / "models--x--y" / "blobs" / "f00")
    os.symlink("../../blobs/f00", snapshot / "model.safetensors")
    loaded, _ = load_model(snapshot, progress=False)
    assert same_state(state(loaded), state(model))


# --------------------------------------------------------------------------- 6. broken tokenizer files are named


def test_a_corrupt_or_linked_tokenizer_json_is_named(tmp_path, capsys):
    folder = save_plain(small(), tmp_path / "ck")
    text = (folder / "tokenizer.json").read_text()
    (folder / "tokenizer.json").write_text(text[:19])
    with pytest.raises(ValueError, match=rf"{folder / 'tokenizer.json'} is not a readable JSON tokenizer file"):
        load_model(folder, progress=False)
    code, err = run_gnorm(["prune", "--model", str(folder), "--steps", "1", "--quiet", "--out", str(tmp_path / "o")],
                          capsys)
    assert code == 1 and err.count("\n") == 1 and str(folder / "tokenizer.json") in err
    (folder / "tokenizer.json").unlink()
    (tmp_path / "notes.txt").write_text("not json at all")
    os.symlink(tmp_path / "notes.txt", folder / "tokenizer.json")
    with pytest.raises(ValueError, match=rf"tokenizer.json \(a link to {tmp_path / 'notes.txt'}\) is not a readable JSON"):
        load_model(folder, progress=False)
    with pytest.raises(ValueError, match="tokenizer.json"):  # a tokenizer folder passed on its own
        load_model(save_plain(small(), tmp_path / "ok"), tokenizer=folder, progress=False)


# --------------------------------------------------------------------------- edits, deletions and swaps of saved folders

KINDS = ("plain", "pruned", "grain")
FORMAT_KEYS = {"pruned": ("pruned_heads", "pruned_kv_heads"), "grain": ("grain_structure",)}


def _build_sources(root: Path) -> dict[str, dict[str, tuple[Path, dict, object]]]:
    """kind -> {"orig", "donor"} -> (folder, state, head map): the donor has the same shapes, other
    weights and (pruned, GRAIN) another head map / structure."""
    sources: dict[str, dict] = {k: {} for k in KINDS}
    for which, seed in (("orig", 0), ("donor", 1)):
        plain = small(seed)
        folder = save_plain(plain, root / f"plain-{which}", max_shard_size="20KB")
        sources["plain"][which] = (folder, state(plain), None)
        pruned = prune_heads(small(seed), {0: [1, 3]} if which == "orig" else {0: [1, 2]})
        folder = save_pruned(pruned, root / f"pruned-{which}", TOKENIZER)
        sources["pruned"][which] = (folder, state(pruned), head_layout(pruned).pruned_heads())
        shrunk = grain_model(seed, dropped=1 if which == "orig" else 3)
        folder = save_grain(shrunk, root / f"grain-{which}", TOKENIZER)
        sources["grain"][which] = (folder, state(shrunk), grain_structure_of(shrunk))
    assert len(list((root / "plain-orig").glob("model-*.safetensors"))) > 1, "expected a sharded plain folder"
    return sources


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return _build_sources(tmp_path_factory.mktemp("sources"))


OPS = st.one_of(
    st.tuples(st.sampled_from(["delete", "replace"]), st.integers(0, 10)),  # which of the model's files
    st.tuples(st.sampled_from(["donor map", "drop format key", "empty map", "plain gets a map"]), st.just(0)),
    st.tuples(st.just("drop tensor"), st.integers(0, 40)),
)
INTEGRITY_FILES = ("config.json", MANIFEST, "model.safetensors", "model.safetensors.index.json")


def _model_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name in INTEGRITY_FILES or p.suffix == ".safetensors")


def _apply(op: tuple, folder: Path, donor: Path, kind: str) -> None:
    what, arg = op
    if what in ("delete", "replace"):
        names = _model_files(folder)
        if not names:
            return
        name = names[arg % len(names)]
        (folder / name).unlink()
        if what == "replace" and (donor / name).exists():
            shutil.copy(donor / name, folder / name)
        return
    if what == "drop tensor":
        files = sorted(folder.glob("*.safetensors"))
        keys = sorted(k for f in files for k in load_file(str(f)))
        if not keys:
            return
        key = keys[arg % len(keys)]
        for f in files:
            if key in load_file(str(f)):
                drop_tensors(f, key)
        return
    config_file = folder / "config.json"
    if not config_file.exists():
        return
    config = json.loads(config_file.read_text())
    if what == "donor map" and kind != "plain":
        donor_config = json.loads((donor / "config.json").read_text())
        for key in FORMAT_KEYS[kind]:
            if key in donor_config:
                config[key] = donor_config[key]
    elif what == "drop format key" and kind != "plain":
        for key in FORMAT_KEYS[kind]:
            config.pop(key, None)
    elif what == "empty map" and kind != "plain":
        config[FORMAT_KEYS[kind][0]] = {}
    elif what == "plain gets a map" and kind == "plain":
        config["pruned_heads"] = {"0": [1]}
    else:
        return
    config_file.write_text(json.dumps(config))


def _content(file: Path):
    if not file.exists():
        return None
    return json.loads(file.read_text()) if file.suffix == ".json" else file.read_bytes()


def _whose(folder: Path, candidates: dict[str, Path]) -> set[str]:
    """The saved folders whose model files the folder now holds, each file as that folder saved it."""
    names = set(_model_files(folder)) | {n for c in candidates.values() for n in _model_files(c)}
    return {which for which, saved in candidates.items()
            if all(_content(folder / n) == _content(saved / n) for n in names)}


def _head_map(model, kind: str):
    return head_layout(model).pruned_heads() if kind == "pruned" else grain_structure_of(model)


@settings(max_examples=45, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), ops=st.lists(OPS, min_size=1, max_size=3))
def test_edited_folders_load_what_was_saved_or_fail(sources, kind, ops):
    """Whatever is edited, deleted or swapped in: the folder loads the model that was saved (or,
    with every file swapped, the donor's), or a plain folder's weights exactly as its files now
    hold them, or fails with an error naming the folder; never random or mismatched weights."""
    orig, orig_state, orig_map = sources[kind]["orig"]
    donor = sources[kind]["donor"][0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ck"
        shutil.copytree(orig, folder)
        for op in ops:
            _apply(op, folder, donor, kind)
        try:
            model, _ = load_model(folder, progress=False)
        except (ValueError, OSError) as err:
            assert str(folder) in str(err), err
            return
        loaded = state(model)
        if kind == "plain":  # no manifest: the weights as the files now hold them, every tensor present
            on_disk = {}
            for f in folder.glob("*.safetensors"):
                on_disk.update(load_file(str(f)))
            assert same_state(loaded, on_disk), ops
            return
        whose = _whose(folder, {which: saved for which, (saved, _, _) in sources[kind].items()})
        assert whose, (ops, _model_files(folder))  # loaded, so every model file is one folder's as saved
        _, expected_state, expected_map = sources[kind][sorted(whose)[-1]]
        assert same_state(loaded, expected_state), ops
        assert _head_map(model, kind) == expected_map, ops
