"""The offline default task: a generated grammar of film reviews, and its word-level tokenizer.

A review is one to three segments joined by "but"; each segment is a clause about the film
(its plot, its acting ...) or about something else (the popcorn, the weather), with optional
openers, negators and intensifiers. The label is the polarity of the last segment about the
film, and earlier film segments carry the opposite polarity, so no bag of words solves it: a
model has to track negation scope, which noun a clause is about, and order. About a hundred
words, sentences of at most 40 tokens, deterministic in the seed.

`synthetic_fingerprint` hashes everything that shapes the data; the cached tiny model is keyed
on it, so changing a word or a probability here retrains that model.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from gnorm_kernels.data.tasks import SPLITS, Example, Task

__all__ = [
    "synthetic_task",
    "synthetic_review",
    "synthetic_vocabulary",
    "synthetic_fingerprint",
    "synthetic_tokenizer",
    "word_level_tokenizer",
    "FILM_NOUNS",
    "OTHER_NOUNS",
    "PERSONAL_NOUNS",
    "VERBS",
    "NEGATORS",
    "INTENSIFIERS",
    "POSITIVE",
    "NEGATIVE",
    "OTHER_POSITIVE",
    "OTHER_NEGATIVE",
    "OPENERS",
    "SPECIAL_TOKENS",
    "MAX_WORDS",
    "P_OPENER",
    "P_NEGATION",
    "P_INTENSIFIER",
    "P_FILM_SEGMENT",
    "P_TRAILING_OTHER",
    "P_OTHER_ADJECTIVE",
    "SEGMENT_COUNT_WEIGHTS",
]


FILM_NOUNS = (
    "film", "movie", "plot", "acting", "script", "ending", "soundtrack", "cast",
    "story", "dialogue", "pacing", "director", "humor", "music",
)
OTHER_NOUNS = (
    "popcorn", "weather", "seat", "parking", "cinema", "ticket", "crowd", "coffee",
    "drive", "snacks", "traffic", "friend", "dinner", "bus",
)
PERSONAL_NOUNS = ("seat", "ticket", "coffee", "drive", "snacks", "friend", "dinner")  # "my seat"
VERBS = ("was", "is", "felt", "seemed")
NEGATORS = ("not", "never", "hardly")
INTENSIFIERS = ("very", "really", "truly", "quite", "so", "extremely", "incredibly", "rather", "pretty")
POSITIVE = (
    "good", "great", "excellent", "wonderful", "brilliant", "superb", "charming",
    "moving", "fun", "clever", "beautiful", "solid", "fresh", "gripping",
)
NEGATIVE = (
    "bad", "awful", "terrible", "boring", "dull", "weak", "poor", "bland",
    "messy", "clumsy", "tedious", "horrible", "flat", "predictable",
)
# adjectives that fit the popcorn or the weather but not a film
OTHER_POSITIVE = ("tasty", "comfortable", "friendly", "quiet", "cozy")
OTHER_NEGATIVE = ("cold", "stale", "crowded", "noisy", "rude")
OPENERS = (
    "honestly ,", "overall ,", "frankly ,", "admittedly ,", "i think", "i thought",
    "in the end ,", "at first", "for me ,",
)
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_WORDS = 38  # + [CLS] and [SEP] = 40 tokens (the settings below stay under 34)

# How often each construction appears. These settings are what the tiny model's
# recipe was tuned on; reviews with more segments or more negation take longer to learn.
P_OPENER = 0.15  # a clause starts with "honestly," "i think" ...
P_NEGATION = 0.3
P_INTENSIFIER = 0.35
P_FILM_SEGMENT = 0.6  # a segment before the last one is about the film
P_TRAILING_OTHER = 0.3  # the review ends with a segment about something else
P_OTHER_ADJECTIVE = 0.5  # a clause about something else uses an adjective of its own
SEGMENT_COUNT_WEIGHTS = {1: 30, 2: 40, 3: 30}


def synthetic_vocabulary() -> list[str]:
    """The synthetic grammar's words (special tokens first, then sorted words)."""
    words = {"the", "my", "but"}
    groups = (
        FILM_NOUNS, OTHER_NOUNS, VERBS, NEGATORS, INTENSIFIERS, POSITIVE, NEGATIVE, OTHER_POSITIVE, OTHER_NEGATIVE
    )
    for group in groups:
        words.update(group)
    for opener in OPENERS:
        words.update(opener.split())
    return list(SPECIAL_TOKENS) + sorted(words)


def synthetic_fingerprint() -> str:
    """A short hash of the grammar (vocabulary and settings): changes when the data would."""
    import hashlib

    settings = [
        synthetic_vocabulary(), FILM_NOUNS, OTHER_NOUNS, PERSONAL_NOUNS, VERBS, NEGATORS, INTENSIFIERS,
        POSITIVE, NEGATIVE, OTHER_POSITIVE, OTHER_NEGATIVE, OPENERS, MAX_WORDS, P_OPENER, P_NEGATION,
        P_INTENSIFIER, P_FILM_SEGMENT, P_TRAILING_OTHER, P_OTHER_ADJECTIVE, sorted(SEGMENT_COUNT_WEIGHTS.items()),
    ]
    return hashlib.sha256(repr(settings).encode()).hexdigest()[:12]


def _clause(rng: random.Random, about_film: bool, polarity: int) -> list[str]:
    """One clause with the given polarity (1 positive, 0 negative)."""
    words: list[str] = []
    if rng.random() < P_OPENER:
        words += rng.choice(OPENERS).split()
    if about_film:
        words += ["the", rng.choice(FILM_NOUNS)]
    else:
        noun = rng.choice(OTHER_NOUNS)
        words += [rng.choice(("the", "my")) if noun in PERSONAL_NOUNS else "the", noun]
    verb = rng.choice(VERBS)
    words.append(verb)
    negated = rng.random() < P_NEGATION
    if negated:
        words.append(rng.choice(NEGATORS if verb in ("was", "is") else ("not", "hardly")))
    if rng.random() < P_INTENSIFIER:
        words.append(rng.choice(INTENSIFIERS))
    positive_word = bool(polarity) != negated
    if not about_film and rng.random() < P_OTHER_ADJECTIVE:
        words.append(rng.choice(OTHER_POSITIVE if positive_word else OTHER_NEGATIVE))
    else:
        words.append(rng.choice(POSITIVE if positive_word else NEGATIVE))
    return words


def synthetic_review(rng: random.Random) -> Example:
    """Draw one review; its label is the polarity of the last segment about the film.

    Segments are joined by "but"; earlier film segments carry the opposite
    polarity, and segments about something else (the popcorn, the weather) carry
    any polarity, so the label hinges on negation scope, on which noun a clause is
    about, and on order, not on which words occur.
    """
    while True:
        label = rng.randint(0, 1)
        counts, weights = zip(*SEGMENT_COUNT_WEIGHTS.items())
        n_segments = rng.choices(counts, weights=weights)[0]
        film = [rng.random() < P_FILM_SEGMENT for _ in range(n_segments - 1)]
        film.append(rng.random() >= P_TRAILING_OTHER)
        if not any(film):
            film[rng.randrange(n_segments)] = True
        last_film = max(i for i, f in enumerate(film) if f)
        words: list[str] = []
        for i, about_film in enumerate(film):
            if about_film:
                polarity = label if i == last_film else 1 - label
            else:
                polarity = rng.randint(0, 1)
            if words:
                words.append("but")
            words += _clause(rng, about_film, polarity)
        if len(words) <= MAX_WORDS:
            text = " ".join(words).replace(" ,", ",")
            return Example(text=text, text_pair=None, label=label)


def synthetic_task(
    *, seed: int = 0, train_size: int = 40_000, calibration_size: int = 512, test_size: int = 2_000
) -> Task:
    """The offline default task: generated film reviews, deterministic in `seed`.

    Texts are unique across all three splits (test drawn first, then calibration,
    then train), so no sentence is seen in training and evaluated again.
    """
    for name, size in (("train_size", train_size), ("calibration_size", calibration_size), ("test_size", test_size)):
        if size < 1:
            raise ValueError(f"{name} must be >= 1, got {size}")
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[Example]] = {}
    for split, size in (("test", test_size), ("calibration", calibration_size), ("train", train_size)):
        examples: list[Example] = []
        misses = 0
        while len(examples) < size:
            ex = synthetic_review(rng)
            if ex.text in seen:
                misses += 1
                if misses > 50 * size + 10_000:
                    raise RuntimeError(f"could not draw {size} distinct reviews for {split!r}")
                continue
            seen.add(ex.text)
            examples.append(ex)
        splits[split] = examples
    return Task(
        name="synthetic",
        label_names=["negative", "positive"],
        splits={s: splits[s] for s in SPLITS},
        metric="accuracy",
        info={"seed": seed},
    )


def word_level_tokenizer(vocabulary: Sequence[str], *, model_max_length: int = 512) -> Any:
    """A BERT-style word-level tokenizer ([CLS] a [SEP] b [SEP]) over a fixed vocabulary.

    Built with `tokenizers` and wrapped as `PreTrainedTokenizerFast`, so it goes
    through the same code path as a hub tokenizer and saves/loads the same way.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = list(dict.fromkeys(vocabulary))
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        vocab = [t for t in SPECIAL_TOKENS if t in missing] + vocab
    ids = {w: i for i, w in enumerate(vocab)}
    core = Tokenizer(WordLevel(ids, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def synthetic_tokenizer(*, model_max_length: int = 64) -> Any:
    """The tokenizer of the synthetic task's vocabulary."""
    return word_level_tokenizer(synthetic_vocabulary(), model_max_length=model_max_length)
