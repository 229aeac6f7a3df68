"""Class labels: reading them from a file's column, and fitting a task's labels to a model's classes.

A label column holds class ids (0, 1, "2", 1.0) or class names ("positive"), never a mix of
the two: a mix is an error, not extra classes. `fit_labels` renumbers a task to a model's
``config.label2id``: names map by name when the model's classes have meaningful names (not
transformers' placeholder ``LABEL_0``, ``LABEL_1`` ...), ids must lie in the model's range, and
every mismatch is an error that lists both sides.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from typing import Any, Mapping, Sequence

from gnorm_kernels.data.tasks import Task

__all__ = ["class_id", "label_ids", "fit_labels", "placeholder_names"]

_INTEGER = re.compile(r"[+-]?\d+")
_INTEGRAL_FLOAT = re.compile(r"[+-]?\d+\.0*")  # "1.0": how pandas writes an integer column with gaps


def class_id(value: Any) -> int | None:
    """`value` as a class id (an integer, an integral float, or a string of either), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if _INTEGER.fullmatch(text) or _INTEGRAL_FLOAT.fullmatch(text):
            return int(float(text)) if "." in text else int(text)
    return None


def label_ids(values: Sequence[Any], lines: Sequence[int], where: str) -> tuple[list[int], list[str], str]:
    """(ids, class names, kind) for a label column; `kind` is "ids" or "names".

    Ids are kept as they are (names "0".."max"); names are numbered in sorted order. `lines`
    (the rows' line numbers in the file `where`) go into the errors.
    """
    ids = [class_id(v) for v in values]
    numbered = [i for i, x in enumerate(ids) if x is not None]
    if len(numbered) == len(values):
        negative = [i for i in numbered if ids[i] < 0]
        if negative:
            i = negative[0]
            raise ValueError(f"{where}, line {lines[i]}: class ids must be >= 0, found {values[i]!r}")
        return ids, [str(i) for i in range(max(ids) + 1)], "ids"  # type: ignore[type-var,arg-type]
    if numbered:
        i, j = numbered[0], next(k for k, x in enumerate(ids) if x is None)
        raise ValueError(
            f"{where}: the labels mix class ids and class names ({values[i]!r} on line {lines[i]}, "
            f"{values[j]!r} on line {lines[j]}); expected all ids (0, 1, ...) or all names"
        )
    names = sorted({str(v) for v in values})
    index = {n: k for k, n in enumerate(names)}
    return [index[str(v)] for v in values], names, "names"


def placeholder_names(names: Sequence[str]) -> bool:
    """True when class names are transformers' placeholders LABEL_0, LABEL_1, ... (no meaning)."""
    return all(name == f"LABEL_{i}" for i, name in enumerate(names))


def _model_names(label2id: Mapping[str, Any]) -> list[str]:
    ids = {}
    for name, value in label2id.items():
        i = class_id(value)
        if i is None:
            raise ValueError(f"label2id must map class names to ids 0..n-1, got {name!r}: {value!r}")
        ids[i] = str(name)
    if sorted(ids) != list(range(len(ids))) or not ids:
        raise ValueError(f"label2id must number its classes 0..n-1 without gaps, got {dict(label2id)}")
    return [ids[i] for i in range(len(ids))]


def _name_map(task_names: list[str], model_names: list[str]) -> dict[str, int] | None:
    """Task name -> model id by exact name, else by case-insensitive name; None if either fails."""
    exact = {n: i for i, n in enumerate(model_names)}
    if all(n in exact for n in task_names):
        return {n: exact[n] for n in task_names}
    folded: dict[str, int] = {}
    for i, n in enumerate(model_names):
        folded.setdefault(n.casefold(), i)
    if len(folded) == len(model_names) and all(n.casefold() in folded for n in task_names):
        return {n: folded[n.casefold()] for n in task_names}
    return None


def fit_labels(task: Task, label2id: Mapping[str, Any]) -> Task:
    """The task with its labels numbered as the model's classes (its ``config.label2id``).

    Class ids must be ids of the model (0..n-1). Class names map by name (case-insensitively
    if need be) when the model's names are meaningful; against placeholder names (LABEL_0 ...)
    the task keeps its sorted order, and may not have more classes than the model. Anything
    else is an error listing the task's and the model's classes. The result's `label_names`
    are the model's n classes, so ``task.num_labels`` matches the model.
    """
    model_names = _model_names(label2id)
    n = len(model_names)
    used = sorted({ex.label for split in task.splits.values() for ex in split})
    if task.info.get("label_kind") == "ids":  # a file of class ids: they are the model's ids
        bad = [i for i in used if not 0 <= i < n]
        if bad:
            raise ValueError(
                f"task {task.name!r} has class ids {bad[:10]} outside the model's {n} classes "
                f"(ids 0..{n - 1}: {', '.join(model_names)})"
            )
        mapping = {i: i for i in used}
        names = model_names
    else:
        task_names = [task.label_names[i] for i in used]
        by_name = _name_map(task_names, model_names)
        if by_name is not None:
            mapping = {i: by_name[task.label_names[i]] for i in used}
            names = model_names
        elif placeholder_names(model_names) and len(task.label_names) <= n:
            mapping = {i: i for i in used}
            names = list(task.label_names) + model_names[len(task.label_names):]
        else:
            why = ("the model's classes are placeholders and fewer" if placeholder_names(model_names)
                   else "they do not match the model's classes")
            raise ValueError(
                f"task {task.name!r} has the classes {', '.join(map(repr, task_names))}, but {why}: "
                f"{', '.join(map(repr, model_names))} ({n}); rename the labels to the model's classes, "
                "or give the model a new classifier (load_model(new_head=True), gnorm --new-head)"
            )
    splits = {s: [dataclasses.replace(ex, label=mapping[ex.label]) for ex in split] for s, split in task.splits.items()}
    info = dict(task.info, label_map={task.label_names[i] if i < len(task.label_names) else str(i): mapping[i]
                                      for i in used})
    return dataclasses.replace(task, label_names=names, splits=splits, info=info)

