"""Tasks: what a task is, how it becomes batches, and where tasks come from.

Everything downstream (scorers, pruning drivers, evaluation) consumes a list of
batches: dicts of model keyword arguments plus `labels`, as built by `Task.batches`.
`load_task` reads "synthetic" (the generated film reviews of `gnorm_kernels.synthetic`,
the offline default), GLUE through `datasets`, a local csv/tsv/jsonl file, or two of them:
``load_task(train_file, eval_file=dev_file)`` calibrates on the first, evaluates on all the second.

`Task`, `Example` and the synthetic task's names (`synthetic_task`, `synthetic_tokenizer` ...)
are importable from here too; they live in `gnorm_kernels.tasks` and `gnorm_kernels.synthetic`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from gnorm_kernels.labels import class_id, fit_labels, label_ids

from gnorm_kernels.synthetic import (
    synthetic_fingerprint,
    synthetic_review,
    synthetic_task,
    synthetic_tokenizer,
    synthetic_vocabulary,
    word_level_tokenizer,
)
from gnorm_kernels.synthetic import *  # noqa: F401,F403 (the grammar's word lists, re-exported)
from gnorm_kernels.tasks import METRICS, SPLITS, Example, Task  # noqa: F401 (re-exported)

__all__ = [
    "Example", "Task", "load_task", "task_from_glue", "task_from_file", "task_from_files", "SPLITS", "GLUE_TASKS",
    "DataWarning",
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


class DataWarning(UserWarning):
    """Rows of a data file were skipped (no text or no label) or disagree (one text, two labels)."""


def _read_text(path: Path) -> str:
    """The file as text, checked to be UTF-8 (a BOM is dropped); errors name the line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - raw.rfind(b"\n", 0, err.start)
        raise ValueError(
            f"{path}, line {line}: not UTF-8 text (byte {raw[err.start]:#04x} at column {column}); "
            "expected a UTF-8 file (re-save it as UTF-8)"
        ) from None


def _read_delimited(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Header and rows of a .csv (quoted fields may hold commas, quotes, newlines) or a .tsv (no
    quoting: a tab always separates). Every value stays a string; blank lines are skipped."""
    tsv = path.suffix.lower() == ".tsv"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if tsv else ",",
                        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL, strict=True)
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, Any]]] = []
    line = 1
    try:
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                line = reader.line_num + 1
                continue
            if header is None:
                header = record
                twice = sorted({c for c in header if header.count(c) > 1})
                if twice:
                    raise ValueError(f"{path}, line {line}: the header names {twice} twice; expected distinct names")
            elif len(record) != len(header):
                raise ValueError(
                    f"{path}, line {line}: {len(record)} fields, but the header has {len(header)} ({header}); "
                    f"a text holding {'a tab' if tsv else 'a comma'} must be {'written without it' if tsv else 'quoted'}"
                )
            else:
                rows.append((line, dict(zip(header, record))))
            line = reader.line_num + 1
    except csv.Error as err:
        raise ValueError(f"{path}, line {line}: cannot read this {path.suffix} row ({err})") from None
    return header or [], rows


def _read_jsonl(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Keys (in order of first appearance) and objects of a .jsonl file, one per non-blank line."""
    columns: dict[str, None] = {}
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}, line {number}: not valid JSON ({err.msg} at column {err.colno}); expected one JSON object per line"
            ) from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object {{...}}, got {type(row).__name__}")
        columns.update(dict.fromkeys(row))
        rows.append((number, row))
    return list(columns), rows


def _read_table(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """(column names, [(line number, {column: value})]) of a .csv/.tsv/.jsonl file."""
    text = _read_text(path)
    if not text.strip():
        raise ValueError(f"{path} is empty; expected a header row and at least 3 rows")
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path, text)
    return _read_delimited(path, text)


def _field(row: dict[str, Any], column: str, path: Path, line: int) -> str | None:
    """A text field as a string (numbers as written: "1.50" stays "1.50"); None when empty."""
    value = row[column]
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise ValueError(f"{path}, line {line}: the {column!r} field is a JSON {type(value).__name__}; expected text")
    text = value if isinstance(value, str) else json.dumps(value)
    return text if text.strip() else None


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


def _rows_with_labels(
    rows: list[tuple[int, dict[str, Any]]], cols: tuple[str, ...], label_column: str, path: Path
) -> tuple[list[tuple[int, tuple[str, ...], Any]], list[int]]:
    """(line, texts, raw label) of every row that has them; the lines of rows skipped for a
    missing text or label. A field missing from a .jsonl line is an error, not a skip."""
    kept, skipped = [], []
    for line, row in rows:
        absent = [c for c in (*cols, label_column) if c not in row]
        if absent:
            raise ValueError(f"{path}, line {line}: no {absent} field; expected {[*cols, label_column]} on every line")
        texts = tuple(_field(row, c, path, line) for c in cols)
        label = row[label_column]
        if isinstance(label, (dict, list)):
            raise ValueError(f"{path}, line {line}: the label is a JSON {type(label).__name__}; expected a class")
        if any(t is None for t in texts) or label is None or (isinstance(label, str) and not label.strip()):
            skipped.append(line)
            continue
        kept.append((line, texts, label.strip() if isinstance(label, str) else label))
    return kept, skipped


def _lines(lines: Sequence[int]) -> str:
    return ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")


def task_from_file(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    label_column: str = "label",
    text_columns: Sequence[str] | None = None,
    calibration_size: int = 512,
    test_fraction: float = 0.2,
    metric: str = "accuracy",
    label2id: Mapping[str, int] | None = None,
) -> Task:
    """Read a .csv/.tsv/.jsonl file of texts (or text pairs) and labels into a Task.

    Every field is read as written ("1.50", "NA" and "None" are texts, not numbers or gaps); the
    file must be UTF-8, and a ragged row or a broken .jsonl line is an error naming its line.
    Rows without text or label are skipped and rows repeating a text are dropped (a repeat with
    another label is reported by a `DataWarning` with the count; the first label is kept), then
    the rows are split by a seeded shuffle into disjoint test (`test_fraction`), calibration (at
    most `calibration_size`, at most 10%) and train parts. Labels are all class ids or all class
    names (names are numbered in sorted order); `label2id` (a model's ``config.label2id``)
    numbers them as that model's classes instead (`gnorm_kernels.labels.fit_labels`).
    """
    path = Path(path)
    if path.suffix.lower() not in FILE_EXTENSIONS:
        raise ValueError(f"unknown file extension {path.suffix!r} for {path}; expected one of {list(FILE_EXTENSIONS)}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; expected a {path.suffix} file")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    found, rows = _read_table(path)
    if label_column not in found:
        raise ValueError(f"{path}: no label column {label_column!r}; columns are {found}")
    cols = _pick_text_columns(found, text_columns, path)
    kept, skipped = _rows_with_labels(rows, cols, label_column, path)
    if skipped:
        warnings.warn(DataWarning(f"{path}: skipped {len(skipped)} rows without text or label (lines {_lines(skipped)})"),
                      stacklevel=2)
    if len(kept) < 3:
        raise ValueError(f"{path}: expected at least 3 labelled rows with text, found {len(kept)}")
    first: dict[tuple[str, ...], tuple[Any, int]] = {}  # texts -> (label, line) of their first row
    unique, conflicts = [], []
    for line, texts, label in kept:
        key = class_id(label)
        key = str(label) if key is None else key
        if texts in first:
            if first[texts][0] != key:
                conflicts.append((texts[0], first[texts][1], line))
            continue
        first[texts] = (key, line)
        unique.append((line, texts, label))
    if conflicts:
        text, a, b = conflicts[0]
        warnings.warn(DataWarning(
            f"{path}: {len(conflicts)} rows repeat an earlier text with another label (first: {text[:60]!r} on "
            f"lines {a} and {b}); kept the label each text has first"), stacklevel=2)
    labels, names, kind = label_ids([r[2] for r in unique], [r[0] for r in unique], str(path))
    examples = [Example(t[0], t[1] if len(t) == 2 else None, y) for (_, t, _), y in zip(unique, labels)]
    if len(examples) < 3:
        raise ValueError(f"{path}: expected at least 3 distinct labelled texts, found {len(examples)}")

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
    task = Task(
        name=path.stem,
        label_names=names,
        splits={s: [examples[i] for i in sorted(parts[s])] for s in SPLITS},
        metric=metric,
        info={"seed": seed, "path": str(path), "text_columns": list(cols), "label_kind": kind,
              "skipped_rows": len(skipped), "conflicting_repeats": len(conflicts)},
    )
    return task if label2id is None else fit_labels(task, label2id)


def _labelled_rows(path: Path, label_column: str, text_columns: Sequence[str] | None
                   ) -> tuple[tuple[str, ...], list[tuple[int, tuple[str, ...], Any]]]:
    """(text columns, [(line, texts, raw label)]) of a file's labelled rows, read as `task_from_file`
    reads them; the rows skipped for a missing text or label are reported by a `DataWarning`."""
    if path.suffix.lower() not in FILE_EXTENSIONS:
        raise ValueError(f"unknown file extension {path.suffix!r} for {path}; expected one of {list(FILE_EXTENSIONS)}")
    found, rows = _read_table(path)  # a missing file: FileNotFoundError
    if label_column not in found:
        raise ValueError(f"{path}: no label column {label_column!r}; columns are {found}")
    cols = _pick_text_columns(found, text_columns, path)
    kept, skipped = _rows_with_labels(rows, cols, label_column, path)
    if skipped:
        warnings.warn(DataWarning(f"{path}: skipped {len(skipped)} rows without text or label (lines {_lines(skipped)})"),
                      stacklevel=3)
    if not kept:
        raise ValueError(f"{path}: expected labelled rows with text, found none")
    return cols, kept


def task_from_files(
    calibration_file: str | os.PathLike,
    eval_file: str | os.PathLike,
    *,
    seed: int = 0,
    label_column: str = "label",
    text_columns: Sequence[str] | None = None,
    calibration_size: int = 512,
    metric: str = "accuracy",
    label2id: Mapping[str, int] | None = None,
) -> Task:
    """A Task from two local files: the test split is every labelled row of `eval_file` in file
    order (repeats kept), the calibration split a seeded sample of `calibration_size` rows of
    `calibration_file` (each text once, none that `eval_file` holds), the train split its other
    rows. Columns are found and read as `task_from_file` does (the second file needs the first's);
    labels are numbered alike in both (names in sorted order), or as `label2id` says."""
    calibration_file, eval_file = Path(calibration_file), Path(eval_file)
    cols, source = _labelled_rows(calibration_file, label_column, text_columns)
    _, held_out = _labelled_rows(eval_file, label_column, text_columns or cols)
    firsts: dict[tuple[str, ...], tuple] = {}
    for row in source:  # the first row of each text, and none that is evaluated
        firsts.setdefault(row[1], row)
    evaluated = {texts for _, texts, _ in held_out}
    kept = [row for texts, row in firsts.items() if texts not in evaluated]
    if not kept:
        raise ValueError(f"every text of {calibration_file} also occurs in {eval_file}: nothing left to calibrate on")
    rows = kept + held_out
    ids, names, kind = label_ids([r[2] for r in rows], [r[0] for r in rows], f"{calibration_file} and {eval_file}")
    examples = [Example(t[0], t[1] if len(t) == 2 else None, y) for (_, t, _), y in zip(rows, ids)]
    pool, test = examples[: len(kept)], examples[len(kept):]
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:calibration_size])
    task = Task(
        name=f"{calibration_file.stem}+{eval_file.stem}",
        label_names=names,
        splits={"train": [pool[i] for i in range(len(pool)) if i not in chosen],
                "calibration": [pool[i] for i in order[:calibration_size]], "test": test},
        metric=metric,
        info={"seed": seed, "calibration_path": str(calibration_file), "eval_path": str(eval_file),
              "text_columns": list(cols), "label_kind": kind, "left_out_of_calibration": len(source) - len(kept)},
    )
    return task if label2id is None else fit_labels(task, label2id)


# ---------------------------------------------------------------------------
# The one entry point
# ---------------------------------------------------------------------------

ACCEPTED_FORMS = '"synthetic", "synthetic-lm", "glue/<task>" (e.g. "glue/sst2"), or a path to a .csv, .tsv or .jsonl file'


def load_task(
    name: str | os.PathLike, *, seed: int = 0, eval_file: str | os.PathLike | None = None, **options: Any
) -> Task:
    """Load a task by name: "synthetic", "glue/<task>", or a local .csv/.tsv/.jsonl file.

    `options` go to the loader: `synthetic_task` (train_size, calibration_size,
    test_size), `task_from_glue` (calibration_size) or `task_from_file`
    (label_column, text_columns, calibration_size, test_fraction, metric).
    With `eval_file`, `name` is the file to calibrate on and every row of `eval_file` is evaluated
    (`task_from_files`: label_column, text_columns, calibration_size, metric, label2id).
    """
    if eval_file is not None:
        return task_from_files(name, eval_file, seed=seed, **options)
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
