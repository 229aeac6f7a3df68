"""The "aspects" task: its label is the sign of the weighted film clauses, recomputed here from
the words alone, and it is harder than "synthetic" for a bag of words."""

from __future__ import annotations

import random

import pytest

from gnorm_kernels.data import aspects
from gnorm_kernels.data.aspects import aspects_fingerprint, aspects_review, aspects_score, aspects_task
from gnorm_kernels.data.loading import load_task
from gnorm_kernels.data.synthetic import (
    FILM_NOUNS,
    INTENSIFIERS,
    NEGATIVE,
    NEGATORS,
    POSITIVE,
    synthetic_tokenizer,
)


def label_from_words(text: str) -> int:
    """Re-derive the label from the text: split at commas and "but", weigh each film clause."""
    total = 0
    for part, but in _clauses(text):
        words = part.split()
        noun_at = next((i for i, w in enumerate(words) if w in FILM_NOUNS and i > 0 and words[i - 1] == "the"), None)
        if noun_at is None:  # a clause about something else
            continue
        rest = words[noun_at + 2:]
        negated = bool(rest) and rest[0] in NEGATORS
        intensified = any(w in INTENSIFIERS for w in rest)
        positive = rest[-1] in POSITIVE
        assert positive or rest[-1] in NEGATIVE, text
        sign = 1 if positive != negated else -1
        total += sign * (2 if intensified and not negated else 1) * (2 if but else 1)
    assert total != 0
    return int(total > 0)


def _clauses(text: str):
    # openers end in a comma too ("honestly, the plot ..."): glue a clause without a verb to the next
    pieces, but = [], False
    for chunk in text.split(" but "):
        parts = [p.strip() for p in chunk.split(",")]
        merged: list[str] = []
        for p in parts:
            if merged and not any(v in merged[-1].split() for v in ("was", "is", "felt", "seemed")):
                merged[-1] = merged[-1] + " " + p
            else:
                merged.append(p)
        for i, p in enumerate(merged):
            pieces.append((p, but and i == 0))
        but = True
    return pieces


def test_every_label_follows_from_the_words() -> None:
    rng = random.Random(5)
    reviews = [aspects_review(rng) for _ in range(3000)]
    assert all(label_from_words(r.text) == r.label for r in reviews)
    assert 0.4 < sum(r.label for r in reviews) / len(reviews) < 0.6


def test_the_score_doubles_after_but() -> None:
    assert aspects_score([1, -1], [False, True]) == -1
    assert aspects_score([2, -1], [False, True]) == 0
    assert aspects_score([0, -1, 1], [False, False, False]) == 0


def test_no_single_cue_decides_the_label() -> None:
    """The last film clause (the "synthetic" task's rule) and a word count are both far from the label."""
    rng = random.Random(0)
    reviews = [aspects_review(rng) for _ in range(3000)]
    positive = set(POSITIVE)

    def last_film_polarity(text: str) -> int:
        film = [(p, b) for p, b in _clauses(text) if any(w in FILM_NOUNS for w in p.split())]
        words = film[-1][0].split()
        return int((words[-1] in positive) != any(w in NEGATORS for w in words))

    def majority_of_positive_words(text: str) -> int:
        words = text.split()
        return int(sum(w in positive for w in words) > sum(w in NEGATIVE for w in words))

    for rule in (last_film_polarity, majority_of_positive_words):
        agree = sum(rule(r.text) == r.label for r in reviews) / len(reviews)
        assert agree < 0.85, rule.__name__


def test_splits_are_disjoint_deterministic_and_tokenise_without_unknown_words() -> None:
    a = aspects_task(train_size=300, calibration_size=50, test_size=100, seed=3)
    b = load_task("aspects", train_size=300, calibration_size=50, test_size=100, seed=3)
    assert [e.text for e in a.splits["test"]] == [e.text for e in b.splits["test"]]
    texts = [e.text for s in a.splits.values() for e in s]
    assert len(texts) == len(set(texts)) == 450
    tokenizer = synthetic_tokenizer()
    ids = tokenizer([e.text for e in a.splits["test"]])["input_ids"]
    assert tokenizer.unk_token_id not in {i for row in ids for i in row}
    assert max(len(row) for row in ids) <= 40


def test_the_fingerprint_follows_the_settings(monkeypatch) -> None:
    before = aspects_fingerprint()
    monkeypatch.setitem(aspects.ASPECT_SETTINGS, "p_but", 0.5)
    assert aspects_fingerprint() != before


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="test_size must be >= 1"):
        aspects_task(test_size=0)


def test_the_tutorial_model_is_not_saturated_and_no_single_head_decides_it() -> None:
    """tiny-aspects, measured here on 1,000 test reviews: accuracy at most 0.95, and masking any one
    head moves it by at most 10 points (the figures the tutorial's comparisons rest on)."""
    from gnorm_kernels.evaluation import evaluate, single_head_ablation
    from gnorm_kernels.models.loading import load_model

    model, tokenizer = load_model("tiny-aspects", progress=False)
    test = load_task("aspects", train_size=1).batches("test", tokenizer, batch_size=250, limit=1000)
    accuracy = evaluate(model, test)["accuracy"]
    assert 0.85 <= accuracy <= 0.95
    drops = single_head_ablation(model, test, progress=False)
    assert drops.shape == (4, 8) and float(drops.abs().max()) <= 0.10
