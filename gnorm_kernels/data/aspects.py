"""A harder offline task: film reviews that weigh several aspects of a film against each other.

A review is two to four clauses about aspects of the film (its plot, its acting ...), with
clauses about something else (the popcorn, the weather) mixed in, joined by commas or "but".
Each film clause has a polarity (its adjective, flipped by a negator), a strength (an
intensifier doubles it, unless the clause is negated: "not very good" is mild) and an emphasis
(a clause that follows "but" counts double). The label is the sign of the sum over film
clauses; a draw whose sum is zero is drawn again. So no single cue decides a review: a model
has to find every film clause, read its negation and intensity, see which clause a "but"
introduces, ignore the clauses about something else, and add it all up. The same words as the
"synthetic" task (one tokenizer for both: a comma where English would say "and"); deterministic in the seed.

`aspects_fingerprint` hashes everything that shapes the data.
"""

from __future__ import annotations

import random

from gnorm_kernels.data.synthetic import (
    FILM_NOUNS,
    INTENSIFIERS,
    NEGATIVE,
    NEGATORS,
    OPENERS,
    OTHER_NEGATIVE,
    OTHER_NOUNS,
    OTHER_POSITIVE,
    PERSONAL_NOUNS,
    POSITIVE,
    VERBS,
    synthetic_vocabulary,
)
from gnorm_kernels.data.tasks import SPLITS, Example, Task

__all__ = ["aspects_task", "aspects_review", "aspects_score", "aspects_fingerprint", "ASPECT_SETTINGS"]

# How the reviews are drawn (all of it enters the fingerprint).
ASPECT_SETTINGS = {
    "film_clauses": {2: 35, 3: 40, 4: 25},  # how many clauses are about the film
    "other_clauses": {0: 50, 1: 35, 2: 15},  # clauses about something else, inserted anywhere
    "p_but": 0.4,  # a clause after the first is introduced by "but" (else by a comma)
    "p_negation": 0.3,
    "p_intensifier": 0.4,
    "p_opener": 0.1,
    "p_other_adjective": 0.5,
    "max_words": 38,
}


def aspects_fingerprint() -> str:
    """A short hash of the grammar (vocabulary and settings): changes when the data would."""
    import hashlib

    settings = [synthetic_vocabulary(), FILM_NOUNS, OTHER_NOUNS, VERBS, NEGATORS, INTENSIFIERS, POSITIVE, NEGATIVE,
                OTHER_POSITIVE, OTHER_NEGATIVE, OPENERS, sorted((k, sorted(v.items()) if isinstance(v, dict) else v)
                                                                for k, v in ASPECT_SETTINGS.items())]
    return hashlib.sha256(repr(settings).encode()).hexdigest()[:12]


def _clause(rng: random.Random, about_film: bool) -> tuple[list[str], int]:
    """One clause and its signed weight (0 for a clause about something else)."""
    s = ASPECT_SETTINGS
    words: list[str] = []
    if rng.random() < s["p_opener"]:
        words += rng.choice(OPENERS).split()
    if about_film:
        words += ["the", rng.choice(FILM_NOUNS)]
    else:
        noun = rng.choice(OTHER_NOUNS)
        words += [rng.choice(("the", "my")) if noun in PERSONAL_NOUNS else "the", noun]
    verb = rng.choice(VERBS)
    words.append(verb)
    negated = rng.random() < s["p_negation"]
    if negated:
        words.append(rng.choice(NEGATORS if verb in ("was", "is") else ("not", "hardly")))
    intensified = rng.random() < s["p_intensifier"]
    if intensified:
        words.append(rng.choice(INTENSIFIERS))
    positive_word = rng.random() < 0.5
    if not about_film and rng.random() < s["p_other_adjective"]:
        words.append(rng.choice(OTHER_POSITIVE if positive_word else OTHER_NEGATIVE))
    else:
        words.append(rng.choice(POSITIVE if positive_word else NEGATIVE))
    if not about_film:
        return words, 0
    sign = 1 if positive_word != negated else -1
    return words, sign * (2 if intensified and not negated else 1)


def aspects_score(weights: list[int], but: list[bool]) -> int:
    """The review's sum: each film clause's signed weight, doubled after "but"."""
    return sum(w * (2 if b else 1) for w, b in zip(weights, but))


def aspects_review(rng: random.Random) -> Example:
    """Draw one review whose film clauses do not cancel out; its label is the sign of their sum."""
    s = ASPECT_SETTINGS
    while True:
        n_film = rng.choices(list(s["film_clauses"]), weights=list(s["film_clauses"].values()))[0]
        n_other = rng.choices(list(s["other_clauses"]), weights=list(s["other_clauses"].values()))[0]
        kinds = [True] * n_film
        for _ in range(n_other):
            kinds.insert(rng.randrange(len(kinds) + 1), False)
        words: list[str] = []
        weights: list[int] = []
        but: list[bool] = []
        for i, about_film in enumerate(kinds):
            after_but = i > 0 and rng.random() < s["p_but"]
            if i > 0:
                words.append("but" if after_but else ",")
            clause, weight = _clause(rng, about_film)
            words += clause
            weights.append(weight)
            but.append(after_but)
        score = aspects_score(weights, but)
        if score != 0 and len(words) <= s["max_words"]:
            text = " ".join(words).replace(" ,", ",")
            return Example(text=text, text_pair=None, label=int(score > 0))


def aspects_task(
    *, seed: int = 0, train_size: int = 40_000, calibration_size: int = 512, test_size: int = 2_000
) -> Task:
    """The "aspects" task: generated multi-aspect film reviews, deterministic in `seed`; texts are
    unique across the three splits (test drawn first, then calibration, then train)."""
    for name, size in (("train_size", train_size), ("calibration_size", calibration_size), ("test_size", test_size)):
        if size < 1:
            raise ValueError(f"{name} must be >= 1, got {size}")
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[Example]] = {}
    for split, size in (("test", test_size), ("calibration", calibration_size), ("train", train_size)):
        examples: list[Example] = []
        while len(examples) < size:
            ex = aspects_review(rng)
            if ex.text not in seen:
                seen.add(ex.text)
                examples.append(ex)
        splits[split] = examples
    return Task(name="aspects", label_names=["negative", "positive"], splits={s: splits[s] for s in SPLITS},
                metric="accuracy", info={"seed": seed})
