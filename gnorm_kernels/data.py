"""Tasks: what a task is, how it becomes batches, and where tasks come from.

Everything downstream (scorers, pruning drivers, evaluation) consumes a list of
batches: dicts of model keyword arguments plus `labels`, as built by `Task.batches`.
`load_task` reads "synthetic" (the generated film reviews of `gnorm_kernels.synthetic`,
the offline default), GLUE through `datasets`, or a local csv/tsv/jsonl file.

`Task`, `Example` and the synthetic task's names (`synthetic_task`, `synthetic_tokenizer` ...)
are importable from here too; they live in `gnorm_kernels.tasks` and `gnorm_kernels.synthetic`.
"""

from __future__ import annotations

import numbers
import os
import random
from pathlib import Path
from typing import Any, Sequence

from gnorm_kernels.synthetic import (
    synthetic_fingerprint,
    synthetic_review,
    synthetic_task,
    synthetic_tokenizer,
    synthetic_vocabulary,
    word_level_tokenizer,
)
from gnorm_kernels.tasks import METRICS, SPLITS, Example, Task  # noqa: F401 (re-exported)

__all__ = [
    "Example", "Task", "load_task", "task_from_glue", "task_from_file", "SPLITS", "GLUE_TASKS",
    "synthetic_task", "synthetic_review", "synthetic_vocabulary", "synthetic_fingerprint", "synthetic_tokenizer",
    "word_level_tokenizer",
]

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

ACCEPTED_FORMS = '"synthetic", "synthetic-lm", "glue/<task>" (e.g. "glue/sst2"), or a path to a .csv, .tsv or .jsonl file'


def load_task(name: str | os.PathLike, *, seed: int = 0, **options: Any) -> Task:
    """Load a task by name: "synthetic", "glue/<task>", or a local .csv/.tsv/.jsonl file.

    `options` go to the loader: `synthetic_task` (train_size, calibration_size,
    test_size), `task_from_glue` (calibration_size) or `task_from_file`
    (label_column, text_columns, calibration_size, test_fraction, metric).
    """
    text = os.fspath(name)
    if text == "synthetic-lm":
        from gnorm_kernels.tiny_lm import synthetic_lm_task

        return synthetic_lm_task(seed=seed, **options)
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
