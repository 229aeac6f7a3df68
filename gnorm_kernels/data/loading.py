"""Tasks: what a task is, how it becomes batches, and where tasks come from.

Everything downstream (scorers, pruning drivers, evaluation) consumes a list of
batches: dicts of model keyword arguments plus `labels`, as built by `Task.batches`.
`load_task` reads "synthetic" (the generated film reviews of `gnorm_kernels.data.synthetic`,
the offline default), GLUE through `datasets`, a local csv/tsv/jsonl file (split in three), or
two local files: ``load_task(train_file, eval_file=dev_file)`` draws the calibration examples
from the first and evaluates on every row of the second (e.g. GLUE's train.tsv and dev.tsv).

`Task`, `Example` and the synthetic task's names (`synthetic_task`, `synthetic_tokenizer` ...)
are importable from here too; they live in `gnorm_kernels.data.tasks` and `gnorm_kernels.data.synthetic`.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from gnorm_kernels.data.labels import class_id, fit_labels, label_ids
from gnorm_kernels.data.synthetic import (
    synthetic_task,
)
from gnorm_kernels.data.tables import (
    FILE_EXTENSIONS,
    DataWarning,
    labelled_rows,
    lines_text,
    read_rows,
)
from gnorm_kernels.data.tasks import SPLITS, Example, Task

__all__ = ["load_task", "task_from_glue", "task_from_file", "task_from_files", "GLUE_TASKS"]

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
    numbers them as that model's classes instead (`gnorm_kernels.data.labels.fit_labels`).
    """
    path = Path(path)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    cols, kept, skipped = labelled_rows(path, label_column, text_columns)
    if skipped:
        warnings.warn(DataWarning(f"{path}: skipped {len(skipped)} rows without text or label (lines {lines_text(skipped)})"),
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
    return _file_task(
        path.stem, names, kind, {s: [examples[i] for i in sorted(parts[s])] for s in SPLITS}, metric, label2id,
        {"seed": seed, "path": str(path), "text_columns": list(cols),
         "skipped_rows": len(skipped), "conflicting_repeats": len(conflicts)},
    )


def _file_task(name: str, names: list[str], kind: str, splits: dict[str, list[Example]], metric: str,
               label2id: Mapping[str, int] | None, info: dict[str, Any]) -> Task:
    """The Task of labels read from files by `label_ids`, with what the label column held
    (``info["label_kind"]``: "ids" or "names", which `fit_labels` reads), numbered as the
    model's classes when `label2id` is given. The one- and two-file loaders both end here."""
    task = Task(name=name, label_names=names, splits=splits, metric=metric, info=dict(info, label_kind=kind))
    return task if label2id is None else fit_labels(task, label2id)


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
    """A Task from two local files: calibration examples drawn from the first, evaluation on the second.

    The test split is every labelled row of `eval_file`, in file order (duplicates kept). The
    calibration split is a seeded sample of `calibration_size` rows of `calibration_file`
    (deduplicated, and with every text that also occurs in `eval_file` left out, so the two
    never overlap); the other rows are the train split. Text columns are found in each file as
    `task_from_file` finds them. The labels of both files are read together exactly as
    `task_from_file` reads one file's: all class ids or all class names (the same ids in both),
    recorded as ``info["label_kind"]``; `label2id` numbers them as a model's classes.
    """
    if calibration_size < 1:
        raise ValueError(f"calibration_size must be >= 1, got {calibration_size}")
    calibration_file, eval_file = Path(calibration_file), Path(eval_file)
    cols, source = read_rows(calibration_file, label_column, text_columns, dedupe=True, min_rows=1)
    eval_cols, held_out = read_rows(eval_file, label_column, text_columns or cols, dedupe=False, min_rows=1)
    if len(eval_cols) != len(cols):
        raise ValueError(f"{calibration_file} has text columns {list(cols)} but {eval_file} has {list(eval_cols)}")
    seen = {(t, p) for t, p, _, _ in held_out}
    kept = [row for row in source if (row[0], row[1]) not in seen]
    if not kept:
        raise ValueError(f"every row of {calibration_file} also occurs in {eval_file}: nothing left to calibrate on")
    rows = kept + held_out
    ids, names, kind = label_ids([r[2] for r in rows], [r[3] for r in rows], f"{calibration_file} and {eval_file}")
    examples = [Example(t, p, y) for (t, p, _, _), y in zip(rows, ids)]
    pool, test = examples[: len(kept)], examples[len(kept):]
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:calibration_size])
    return _file_task(
        f"{calibration_file.stem}+{eval_file.stem}", names, kind,
        {"train": [pool[i] for i in range(len(pool)) if i not in chosen],
         "calibration": [pool[i] for i in order[:calibration_size]], "test": test},
        metric, label2id,
        {"seed": seed, "calibration_path": str(calibration_file), "eval_path": str(eval_file),
         "text_columns": list(cols), "overlap_left_out": len(source) - len(kept)},
    )


# ---------------------------------------------------------------------------
# The one entry point
# ---------------------------------------------------------------------------

ACCEPTED_FORMS = ('"synthetic", "synthetic-lm", "python-docs", "glue/<task>" (e.g. "glue/sst2"), or a path to a .csv, '
                  '.tsv or .jsonl file (with a label column: a classification task; without: documents for a causal LM) '
                  'or a .txt file (documents: paragraphs separated by blank lines)')


def load_task(
    name: str | os.PathLike, *, seed: int = 0, eval_file: str | os.PathLike | None = None, **options: Any
) -> Task:
    """Load a task by name: "synthetic", "aspects" (the harder multi-aspect reviews), "synthetic-lm", "python-docs", "glue/<task>", or a local
    .csv/.tsv/.jsonl file; a .txt file, or a table without a label column, is a text-only task
    for causal LMs (`gnorm_kernels.data.text`: documents packed into windows, perplexity).

    `options` go to the loader: `synthetic_task` (train_size, calibration_size,
    test_size), `task_from_glue` (calibration_size) or `task_from_file`
    (label_column, text_columns, calibration_size, test_fraction, metric).
    With `eval_file`, `name` is the file calibration examples are drawn from and every row of
    `eval_file` is evaluated on (`task_from_files`: label_column, text_columns,
    calibration_size, metric, label2id).
    """
    from gnorm_kernels.data import text as text_tasks

    label_column = options.get("label_column", "label")
    text_options = {k: v for k, v in options.items() if k != "label_column"}  # it only tells the two kinds apart
    if eval_file is not None:
        texts = [text_tasks.is_text_file(f, label_column) for f in (name, eval_file)]
        if all(texts):
            return text_tasks.text_task_from_files(name, eval_file, seed=seed, **text_options)
        if any(texts):
            plain, labelled = (name, eval_file) if texts[0] else (eval_file, name)
            raise ValueError(f"{plain} holds documents without labels but {labelled} is labelled "
                             f"(a {label_column!r} column): give two text files or two labelled files")
        return task_from_files(name, eval_file, seed=seed, **options)
    text = os.fspath(name)
    if text == "python-docs":
        return text_tasks.python_docs_task(seed=seed, **options)
    if text_tasks.is_text_file(text, label_column):
        return text_tasks.text_task_from_file(text, seed=seed, **text_options)
    if text == "synthetic-lm":
        from gnorm_kernels.data.lm_tasks import synthetic_lm_task

        return synthetic_lm_task(seed=seed, **options)
    if text == "synthetic":
        return synthetic_task(seed=seed, **options)
    if text == "aspects":
        from gnorm_kernels.data.aspects import aspects_task

        return aspects_task(seed=seed, **options)
    if text.startswith("glue/"):
        task = text.split("/", 1)[1]
        if task not in GLUE_TASKS:
            raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_TASKS)}")
        from gnorm_kernels.extras import require

        datasets = require("datasets", "glue", "GLUE tasks")
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
