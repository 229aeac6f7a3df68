"""Fuzzing the public entry points with hypothesis (bounded: the file runs in well under a minute).

Masks, head maps, pruning budgets, calibration sets and data files, drawn at and beyond their
bounds: each call either works (and the result is checked against an independent expectation)
or raises a clear error (ValueError/TypeError/FileNotFoundError/IsADirectoryError/
FloatingPointError naming what was expected), and the model is unchanged after an error.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gnorm_kernels.data.loading import load_task
from gnorm_kernels.engine.driver import greedy_prune, static_prune
from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.masking import mask_heads
from gnorm_kernels.heads.pruning import prune_heads
from gnorm_kernels.testing import random_batches, tiny_random_model

L, H = 2, 2  # the fuzzed model: 2 layers of 2 heads
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLEAR = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, FloatingPointError)


@pytest.fixture(scope="module")
def model():
    return tiny_random_model("bert", num_layers=L, num_heads=H, head_size=4, vocab_size=40)


@pytest.fixture(scope="module")
def batches(model):
    return random_batches(model, num_batches=2, batch_size=3, seq_len=8, seed=1)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unchanged(model, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(
        after[k].shape == before[k].shape and torch.equal(after[k], before[k]) for k in before)


def _hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


# --------------------------------------------------------------------------- masks

DTYPES = [torch.bool, torch.uint8, torch.int64, torch.float16, torch.float32, torch.float64, torch.complex64]
# 1e39 is finite in float64 but not in the model's float32
GATES = st.one_of(st.floats(-100, 100), st.sampled_from([0.0, 1.0, math.nan, math.inf, -math.inf, 1e39]))


@st.composite
def masks(draw):
    shape = draw(st.one_of(st.just([L, H]), st.just([L, H]),
                           st.lists(st.integers(0, 3), min_size=0, max_size=3)))
    dtype = draw(st.sampled_from(DTYPES))
    count = math.prod(shape)
    if dtype.is_floating_point or dtype.is_complex:
        values = draw(st.lists(GATES, min_size=count, max_size=count))
    else:
        values = draw(st.lists(st.integers(0, 3), min_size=count, max_size=count))
    mask = torch.tensor(values, dtype=torch.float64).reshape(shape).to(dtype)
    return draw(st.sampled_from([mask, mask, mask.tolist(), None]))


@FAST
@given(mask=masks())
def test_masks_either_gate_the_heads_or_are_refused(model, batches, mask):
    before, hooks = _state(model), _hooks(model)
    inputs = {k: v for k, v in batches[0].items() if k != "labels"}
    valid = isinstance(mask, torch.Tensor) and list(mask.shape) == [L, H] and not mask.is_complex() and (
        not mask.is_floating_point() or bool(torch.isfinite(mask.to(torch.float32)).all()))
    try:
        with mask_heads(model, mask), torch.no_grad():
            logits = model(**inputs).logits
    except (ValueError, TypeError) as err:
        assert not valid and "mask" in str(err), err
    else:
        assert valid and torch.isfinite(logits).all()
        if isinstance(mask, torch.Tensor) and bool((mask == 1).all()):
            with torch.no_grad():
                torch.testing.assert_close(logits, model(**inputs).logits)
    assert _unchanged(model, before) and _hooks(model) == hooks


# --------------------------------------------------------------------------- head maps

KEYS = st.one_of(st.integers(-2, 3), st.sampled_from(["0", "1", "01", " 1", "x", "1.0", ""]),
                 st.floats(allow_nan=True), st.none(), st.booleans())
HEADS = st.one_of(st.integers(-2, 3), st.floats(-1, 3), st.booleans(), st.text(max_size=2), st.none())
HEAD_LISTS = st.one_of(st.lists(HEADS, max_size=4), st.lists(st.integers(0, H - 1), max_size=4),
                       st.integers(), st.text(max_size=2), st.none())
EVERY_HEAD = {layer: list(range(H)) for layer in range(L)}


def _expected_map(heads):
    """What prune_heads must remove for `heads`, by the documented rules; None: must refuse."""
    if not isinstance(heads, dict):
        return None
    out: dict[int, set[int]] = {}
    for key, value in heads.items():
        if isinstance(key, str) and key.isdecimal() and key.isascii():
            key = int(key)
        if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < L:
            return None
        if isinstance(value, (int, str)) or not isinstance(value, list):
            return None
        if any(isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < H for h in value):
            return None
        out.setdefault(key, set()).update(value)
    return {(layer, h) for layer, hs in out.items() for h in hs}


@FAST
@given(heads=st.one_of(st.dictionaries(KEYS, HEAD_LISTS, max_size=3),
                       st.dictionaries(st.integers(0, L - 1), st.lists(st.integers(0, H - 1), max_size=3), max_size=2),
                       st.just(EVERY_HEAD), st.lists(st.integers(0, 1), max_size=2), st.none()))
def test_head_maps_either_prune_exactly_or_change_nothing(model, batches, heads):
    work = copy.deepcopy(model)
    before = _state(work)
    expected = _expected_map(heads)
    try:
        prune_heads(work, heads)
    except (ValueError, TypeError) as err:
        assert expected is None, f"refused a valid map {heads!r}: {err}"
        assert any(w in str(err) for w in ("layer", "head")), err
        assert _unchanged(work, before) and head_layout(work).num_kept_heads == L * H
    else:
        assert expected is not None, f"accepted {heads!r}"
        gone = {(layer, h) for layer, hs in head_layout(work).pruned_heads().items() for h in hs}
        assert gone == expected
        with torch.no_grad():
            logits = work(**{k: v for k, v in batches[0].items() if k != "labels"}).logits
        assert torch.isfinite(logits).all()


# --------------------------------------------------------------------------- budgets

RATIOS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-1, 2), st.booleans(),
                   st.sampled_from([0.0, 1.0, -0.0, 0.25, 0.5, 0.75, 1.0000001, -1e-12, "half"]))
STEPS = st.one_of(st.none(), st.integers(-1, 6), st.booleans(), st.sampled_from([1.0, "2"]))
COUNTS = st.one_of(st.integers(-1, 5), st.booleans(), st.just(1.0))


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _expected_budget(ratio, steps, per_step, min_heads):
    """Heads the drivers must prune, by the documented rules; None: must refuse."""
    if not _is_int(per_step) or per_step < 1 or not _is_int(min_heads) or not 0 <= min_heads <= H:
        return None
    prunable = L * (H - min_heads)
    if ratio is not None and steps is not None:
        return None
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            return None
        wanted = round(float(ratio) * L * H)
        return wanted if wanted <= prunable else None
    if steps is not None:
        if not _is_int(steps) or steps < 0 or steps > math.ceil(prunable / per_step):
            return None
        return min(steps * per_step, prunable)
    return prunable


@settings(FAST, max_examples=80)
@given(driver=st.sampled_from([greedy_prune, static_prune]),
       budget=st.one_of(st.tuples(RATIOS, st.none()), st.tuples(st.none(), STEPS), st.tuples(RATIOS, STEPS)),
       per_step=st.one_of(st.integers(1, 5), COUNTS), min_heads=st.one_of(st.integers(0, 2), COUNTS))
def test_budgets_at_and_beyond_their_bounds(model, batches, driver, budget, per_step, min_heads):
    (ratio, steps), before = budget, _state(model)
    expected = _expected_budget(ratio, steps, per_step, min_heads)
    try:
        run = driver(model, batches, scorer="random", ratio=ratio, steps=steps, heads_per_step=per_step,
                     min_heads_per_layer=min_heads, progress=False)
    except (ValueError, TypeError) as err:
        assert expected is None, f"refused ratio={ratio!r} steps={steps!r} per_step={per_step!r}: {err}"
        assert any(w in str(err) for w in ("ratio", "steps", "heads_per_step", "min_heads_per_layer")), err
    else:
        assert expected is not None, f"accepted ratio={ratio!r} steps={steps!r} per_step={per_step!r}"
        assert len(run.order) == expected and run.complete
        assert all(len(s.pruned) <= per_step for s in run.steps)
        left = run.mask_at(steps=len(run.steps) - 1).sum(dim=1)
        assert bool((left >= min_heads).all())
    assert _unchanged(model, before)


# --------------------------------------------------------------------------- calibration sets

KINDS = ("normal", "one example", "all padding", "no input_ids", "no attention_mask", "empty", "no labels")


def _batch(model, kind: str, seed: int) -> dict:
    batch = random_batches(model, num_batches=1, batch_size=1 if kind == "one example" else 3, seq_len=6,
                           seed=seed)[0]
    if kind == "all padding":
        batch["input_ids"] = torch.zeros_like(batch["input_ids"])
        batch["attention_mask"] = torch.zeros_like(batch["attention_mask"])
    elif kind == "empty":
        batch = {k: v[:0] for k, v in batch.items()}
    else:
        batch.pop({"no input_ids": "input_ids", "no attention_mask": "attention_mask", "no labels": "labels"}.get(
            kind, "-"), None)
    return batch


@FAST
@given(kinds=st.lists(st.sampled_from(KINDS), max_size=3), scorer=st.sampled_from(["gnorm", "entropy", "taylor"]),
       as_dict=st.sampled_from([False, False, False, True]))
def test_calibration_sets_either_score_or_say_what_is_wrong(model, kinds, scorer, as_dict):
    calibration = [_batch(model, kind, seed) for seed, kind in enumerate(kinds)]
    if as_dict and calibration:
        calibration = calibration[0]
    before = _state(model)
    broken = as_dict and bool(kinds) or not kinds or any(k in ("no input_ids", "empty") for k in kinds) or (
        scorer == "taylor" and "no labels" in kinds) or (  # Taylor's objective is the task loss
        "all padding" in kinds)  # no real token: zero scores for every head
    try:
        run = greedy_prune(model, calibration, scorer=scorer, steps=1, progress=False)
    except CLEAR as err:
        assert broken, f"refused {kinds} for {scorer}: {err}"
        assert any(w in str(err) for w in ("calibration", "batch", "labels", "input_ids")), err
    else:
        assert not broken, f"accepted {kinds} (as a dict: {as_dict}) for {scorer}"
        assert len(run.order) == 1
    assert _unchanged(model, before)


# --------------------------------------------------------------------------- data files

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
TSV_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\r\n"), min_size=1, max_size=12)


def _write(path: Path, header: list[str], rows: list[list], encoding: str) -> None:
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(dict(zip(header, row))) + "\n" + ("\n" if i % 3 == 0 else "")
                       for i, row in enumerate(rows))
    elif path.suffix == ".tsv":
        text = "\n\n".join("\t".join(map(str, row)) for row in [header, *rows]) + "\n"
    else:
        buffer = io.StringIO()
        csv.writer(buffer).writerows([header, *rows])
        text = buffer.getvalue().replace("\r\n", "\n\n", 1)  # a blank line after the header
    path.write_bytes(text.encode(encoding, errors="replace"))


@st.composite
def tables(draw):
    suffix = draw(st.sampled_from([".csv", ".tsv", ".jsonl"]))
    texts = draw(st.lists(TSV_TEXT if suffix == ".tsv" else TEXT, min_size=draw(st.sampled_from([0, 3, 3])), max_size=12))
    labels = draw(st.sampled_from([st.integers(0, 2), st.sampled_from(["neg", "pos", "1.50"])]))
    rows = [[t, draw(labels), draw(TSV_TEXT)] for t in texts]
    header = draw(st.sampled_from([["text", "label", "extra"], ["label", "text", "extra"], ["text", "extra", "label"],
                                   ["sentence", "label", "extra"], ["text", "label", "extra"], ["body", "label", "extra"]]))
    order = {"text": 0, "sentence": 0, "body": 0, "label": 1, "extra": 2}
    rows = [[row[order[c]] for c in header] for row in rows]
    encoding = draw(st.sampled_from(["utf-8"] * 5 + ["utf-8-sig", "latin-1", "utf-16"]))
    return suffix, header, rows, encoding


@settings(max_examples=60, deadline=None)
@given(table=tables())
def test_data_files_read_back_what_was_written_or_say_why_not(table):
    suffix, header, rows, encoding = table
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(folder) / f"data{suffix}"
        _write(path, header, rows, encoding)
        text_column = header[[c in ("text", "sentence", "body") for c in header].index(True)]
        texts = [row[header.index(text_column)] for row in rows]
        distinct = {t for t in texts if t.strip()}
        try:
            path.read_bytes().decode("utf-8")
            readable = True
        except UnicodeDecodeError:
            readable = False
        exact = encoding.startswith("utf-8") or path.read_bytes().isascii()  # the texts as drawn
        try:
            task = load_task(path)
        except CLEAR as err:
            assert path.name in str(err), err
            assert not readable or text_column == "body" or len(distinct) < 3 or not exact, err
        else:
            assert readable and text_column != "body"
            seen = [ex.text for split in task.splits.values() for ex in split]
            assert len(seen) == len(set(seen)) >= 3
            if exact:
                assert sorted(seen) == sorted(distinct)


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".csv", ".tsv", ".jsonl"]), as_folder=st.booleans())
def test_random_bytes_and_folders_are_read_or_refused_with_the_file_name(data, suffix, as_folder):
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(folder) / f"noise{suffix}"
        if as_folder:
            path.mkdir()
        else:
            path.write_bytes(data)
        try:
            load_task(path)
        except CLEAR as err:
            assert path.name in str(err), err
            assert not as_folder or isinstance(err, IsADirectoryError)
        else:
            assert not as_folder
