"""Tasks: the offline synthetic default, GLUE through `datasets`, and local files.

Everything downstream (scorers, pruning drivers, evaluation) consumes a list of
batches: dicts of model keyword arguments plus `labels`, as built by `Task.batches`.
"""

from __future__ import annotations

import numbers
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = [
    "Example",
    "Task",
    "load_task",
    "synthetic_task",
    "synthetic_review",
    "synthetic_vocabulary",
    "synthetic_fingerprint",
    "synthetic_tokenizer",
    "word_level_tokenizer",
    "task_from_glue",
    "task_from_file",
    "SPLITS",
    "GLUE_TASKS",
]

SPLITS = ("train", "calibration", "test")
METRICS = ("accuracy", "f1", "matthews")


@dataclass(frozen=True)
class Example:
    """One labelled input: a text, or a text pair, and a class id."""

    text: str
    text_pair: str | None
    label: int


@dataclass
class Task:
    """A classification task with disjoint train / calibration / test splits."""

    name: str
    label_names: list[str]
    splits: dict[str, list[Example]]
    metric: str = "accuracy"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"task {self.name!r} needs splits {list(SPLITS)}, missing {missing}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {self.metric!r}")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def batches(
        self,
        split: str,
        tokenizer: Any,
        *,
        batch_size: int = 32,
        limit: int | None = None,
        max_length: int = 128,
        shuffle: bool = False,
        seed: int = 0,
        group_by_length: bool = False,
        pool_batches: int = 50,
        epochs: int = 1,
    ) -> list[dict[str, torch.Tensor]]:
        """Tokenise a split into padded batches of model kwargs plus `labels`.

        Each batch is padded to its own longest member. `limit` keeps the first
        examples of the split (after shuffling, if asked). `group_by_length` puts
        examples of similar length together (less padding, faster training): each
        run of `pool_batches` batches' worth of shuffled examples is sorted by
        length and cut into batches, and the batch order is shuffled. Small pools
        keep batches mixed (long and short reviews differ in difficulty), large
        pools save the most padding. `epochs` > 1 returns that many passes
        one after the other, each reshuffled when shuffling, tokenised only once.
        """
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}; this task has {sorted(self.splits)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        examples = list(self.splits[split])
        rng = random.Random(seed)
        if shuffle:
            rng.shuffle(examples)
        if limit is not None:
            examples = examples[:limit]
        if not examples:
            return []
        encoded = _encode(examples, tokenizer, max_length)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        labels = [ex.label for ex in examples]
        batches: list[dict[str, torch.Tensor]] = []
        for epoch in range(epochs):
            order = list(range(len(examples)))
            if shuffle and epoch > 0:
                rng.shuffle(order)
            if group_by_length:
                groups = _length_grouped(order, lengths, batch_size, pool_batches, rng)
            else:
                groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            batches.extend(_collate(encoded, labels, idx, tokenizer) for idx in groups)
        return batches


def _encode(examples: Sequence[Example], tokenizer: Any, max_length: int) -> dict[str, list[list[int]]]:
    texts = [ex.text for ex in examples]
    has_pairs = any(ex.text_pair is not None for ex in examples)
    if has_pairs and any(ex.text_pair is None for ex in examples):
        raise ValueError("a split mixes single texts and text pairs; expected one or the other")
    pairs = [ex.text_pair for ex in examples] if has_pairs else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    return {k: list(v) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def _length_grouped(
    order: list[int], lengths: list[int], batch_size: int, pool_batches: int, rng: random.Random
) -> list[list[int]]:
    """Batches of similar length: sort within shuffled pools, then shuffle batches."""
    if pool_batches < 1:
        raise ValueError(f"pool_batches must be >= 1, got {pool_batches}")
    order = order[:]
    rng.shuffle(order)
    pool = batch_size * pool_batches
    groups: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        groups.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(groups)
    return groups


def _collate(
    encoded: dict[str, list[list[int]]], labels: list[int], idx: list[int], tokenizer: Any
) -> dict[str, torch.Tensor]:
    width = max(len(encoded["input_ids"][i]) for i in idx)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    left = getattr(tokenizer, "padding_side", "right") == "left"
    batch: dict[str, torch.Tensor] = {}
    for key, rows in encoded.items():
        fill = pad_id if key == "input_ids" else 0
        padded = []
        for i in idx:
            row = rows[i]
            pad = [fill] * (width - len(row))
            padded.append(pad + row if left else row + pad)
        batch[key] = torch.tensor(padded, dtype=torch.long)
    batch["labels"] = torch.tensor([labels[i] for i in idx], dtype=torch.long)
    return batch


# ---------------------------------------------------------------------------
# The synthetic film-review task
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# GLUE through `datasets`
# ---------------------------------------------------------------------------

# task -> (text columns, metric, split used as the test split)
GLUE_TASKS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "cola": (("sentence",), "matthews", "validation"),
    "sst2": (("sentence",), "accuracy", "validation"),
    "mrpc": (("sentence1", "sentence2"), "f1", "validation"),
    "qqp": (("question1", "question2"), "f1", "validation"),
    "mnli": (("premise", "hypothesis"), "accuracy", "validation_matched"),
    "mnli_mismatched": (("premise", "hypothesis"), "accuracy", "validation_mismatched"),
    "qnli": (("question", "sentence"), "accuracy", "validation"),
    "rte": (("sentence1", "sentence2"), "accuracy", "validation"),
    "wnli": (("sentence1", "sentence2"), "accuracy", "validation"),
}


def task_from_glue(task: str, dataset: Any, *, seed: int = 0, calibration_size: int = 512) -> Task:
    """Map a GLUE `DatasetDict` onto a Task.

    GLUE test labels are hidden, so the validation split becomes the test split
    and the calibration split is carved out of train (disjoint from what remains).
    """
    if task not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_TASKS)}")
    columns, metric, test_split = GLUE_TASKS[task]
    for split in ("train", test_split):
        if split not in dataset:
            raise ValueError(f"GLUE {task!r} needs a {split!r} split, found {sorted(dataset)}")
    label_feature = dataset["train"].features.get("label")
    names = getattr(label_feature, "names", None)
    if not names:
        raise ValueError(f"GLUE {task!r}: expected a class label column 'label', found {label_feature!r}")

    def rows(split: str) -> list[Example]:
        data = dataset[split]
        found = list(data.column_names)
        for col in (*columns, "label"):
            if col not in found:
                raise ValueError(f"GLUE {task!r} split {split!r}: missing column {col!r}, found {found}")
        texts = data[columns[0]]
        pairs = data[columns[1]] if len(columns) > 1 else [None] * len(texts)
        return [Example(t, p, int(y)) for t, p, y in zip(texts, pairs, data["label"]) if int(y) >= 0]

    train = rows("train")
    test = rows(test_split)
    rng = random.Random(seed)
    order = list(range(len(train)))
    rng.shuffle(order)
    n_cal = min(calibration_size, max(1, len(train) // 10))
    calibration = [train[i] for i in order[:n_cal]]
    train = [train[i] for i in sorted(order[n_cal:])]
    return Task(
        name=f"glue/{task}",
        label_names=list(names),
        splits={"train": train, "calibration": calibration, "test": test},
        metric=metric,
        info={"seed": seed, "test_split": test_split},
    )


# ---------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------

FILE_EXTENSIONS = (".csv", ".tsv", ".jsonl")
SINGLE_TEXT_COLUMNS = ("text", "sentence", "review", "content", "document")
PAIR_TEXT_COLUMNS = (
    ("sentence1", "sentence2"),
    ("text_a", "text_b"),
    ("question", "sentence"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("text", "text_pair"),
)


def _read_table(path: Path) -> Any:
    import pandas as pd

    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty; expected a header row and at least 3 rows")
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t", quoting=3)
        return pd.read_json(path, lines=True)
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"{path} is empty; expected a header row and at least 3 rows") from err


def _pick_text_columns(found: list[str], text_columns: Sequence[str] | None, path: Path) -> tuple[str, ...]:
    if text_columns is not None:
        cols = tuple(text_columns)
        if not 1 <= len(cols) <= 2:
            raise ValueError(f"text_columns takes one or two names, got {list(cols)}")
        missing = [c for c in cols if c not in found]
        if missing:
            raise ValueError(f"{path}: text columns {missing} not found; columns are {found}")
        return cols
    for pair in PAIR_TEXT_COLUMNS:
        if all(c in found for c in pair):
            return pair
    for col in SINGLE_TEXT_COLUMNS:
        if col in found:
            return (col,)
    raise ValueError(
        f"{path}: no text column found; columns are {found}. Expected one of {list(SINGLE_TEXT_COLUMNS)}, "
        f"a pair such as {[list(p) for p in PAIR_TEXT_COLUMNS[:3]]}, or pass text_columns=..."
    )


def _is_integral(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool) and float(value).is_integer()


def _label_ids(values: list[Any]) -> tuple[list[int], list[str]]:
    """Integer labels are kept as ids; anything else is mapped to ids by sorted name."""
    if all(_is_integral(v) for v in values):
        ids = [int(v) for v in values]
        if min(ids) < 0:
            raise ValueError(f"integer labels must be >= 0, found {min(ids)}")
        return ids, [str(i) for i in range(max(ids) + 1)]
    names = sorted({str(v) for v in values})
    index = {n: i for i, n in enumerate(names)}
    return [index[str(v)] for v in values], names


def task_from_file(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    label_column: str = "label",
    text_columns: Sequence[str] | None = None,
    calibration_size: int = 512,
    test_fraction: float = 0.2,
    metric: str = "accuracy",
) -> Task:
    """Read a .csv/.tsv/.jsonl file of texts (or text pairs) and labels into a Task.

    Rows are deduplicated by text, then split by a seeded shuffle into disjoint
    test (`test_fraction`), calibration (at most `calibration_size`, at most 10%)
    and train parts. String labels become ids in sorted order.
    """
    path = Path(path)
    if path.suffix.lower() not in FILE_EXTENSIONS:
        raise ValueError(f"unknown file extension {path.suffix!r} for {path}; expected one of {list(FILE_EXTENSIONS)}")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    frame = _read_table(path)
    found = [str(c) for c in frame.columns]
    if label_column not in found:
        raise ValueError(f"{path}: no label column {label_column!r}; columns are {found}")
    cols = _pick_text_columns(found, text_columns, path)
    frame = frame.dropna(subset=[*cols, label_column])
    frame = frame.drop_duplicates(subset=list(cols), keep="first")
    if len(frame) < 3:
        raise ValueError(f"{path}: expected at least 3 labelled rows with text, found {len(frame)}")
    labels, names = _label_ids(frame[label_column].tolist())
    texts = [str(t) for t in frame[cols[0]].tolist()]
    pairs = [str(t) for t in frame[cols[1]].tolist()] if len(cols) == 2 else [None] * len(texts)
    examples = [Example(t, p, y) for t, p, y in zip(texts, pairs, labels)]

    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n = len(order)
    n_test = min(n - 2, max(1, round(test_fraction * n)))
    n_cal = min(calibration_size, n - n_test - 1, max(1, n // 10))
    parts = {
        "test": order[:n_test],
        "calibration": order[n_test : n_test + n_cal],
        "train": order[n_test + n_cal :],
    }
    return Task(
        name=path.stem,
        label_names=names,
        splits={s: [examples[i] for i in sorted(parts[s])] for s in SPLITS},
        metric=metric,
        info={"seed": seed, "path": str(path), "text_columns": list(cols)},
    )


# ---------------------------------------------------------------------------
# The one entry point
# ---------------------------------------------------------------------------

ACCEPTED_FORMS = '"synthetic", "glue/<task>" (e.g. "glue/sst2"), or a path to a .csv, .tsv or .jsonl file'


def load_task(name: str | os.PathLike, *, seed: int = 0, **options: Any) -> Task:
    """Load a task by name: "synthetic", "glue/<task>", or a local .csv/.tsv/.jsonl file.

    `options` go to the loader: `synthetic_task` (train_size, calibration_size,
    test_size), `task_from_glue` (calibration_size) or `task_from_file`
    (label_column, text_columns, calibration_size, test_fraction, metric).
    """
    text = os.fspath(name)
    if text == "synthetic":
        return synthetic_task(seed=seed, **options)
    if text.startswith("glue/"):
        task = text.split("/", 1)[1]
        if task not in GLUE_TASKS:
            raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_TASKS)}")
        import datasets

        config = "mnli" if task == "mnli_mismatched" else task
        return task_from_glue(task, datasets.load_dataset("glue", config), seed=seed, **options)
    path = Path(text)
    if path.suffix.lower() in FILE_EXTENSIONS or path.is_file():
        return task_from_file(path, seed=seed, **options)
    if path.suffix:
        raise ValueError(
            f"unknown task {text!r}: extension {path.suffix!r} is not supported; expected {ACCEPTED_FORMS}"
        )
    raise ValueError(f"unknown task {text!r}; expected {ACCEPTED_FORMS}")
