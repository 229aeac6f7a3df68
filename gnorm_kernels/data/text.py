"""Text-only tasks for causal language models: documents in, windows of tokens out, perplexity.

A `TextTask` holds documents (no labels) in disjoint train / calibration / test splits. Its
`batches` tokenises a split's documents and packs them into windows of ``max_length`` tokens
(one stream, documents one after another, each starting with the tokenizer's own special tokens,
or ended by its end-of-text token where it adds none), so every token but the padding of the last
window is read, and a window is the unit the bootstrap of `gnorm_kernels.evidence.comparison` resamples.
Its metric is "perplexity": token-weighted, lower is better.

Where documents come from:

* a ``.txt`` file: a document is a **paragraph**, a run of lines ended by a blank line (a
  one-sentence-per-line file with no blank lines is one document; separate them by blank lines);
* a ``.csv``/``.tsv``/``.jsonl`` file with one text column and no label column;
* ``"python-docs"``: the English prose of Python's own documentation (`pydoc_data.topics`, in
  every Python's standard library): its prose paragraphs of 20 words or more (about 570 distinct ones).

One file is split by a seeded shuffle of its documents (20% test, 20% calibration, the rest
train); two files (``calibration_file``, ``eval_file``) give calibration documents from the first
(less any that the second holds) and test documents from the second, in file order.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from gnorm_kernels.data.tables import FILE_EXTENSIONS, SINGLE_TEXT_COLUMNS, read_table
from gnorm_kernels.data.tasks import SPLITS, Example, Task

__all__ = ["DOCUMENT_EXTENSIONS", "TextTask", "is_text_file", "pack_windows", "python_docs_task",
           "read_documents", "text_task_from_file", "text_task_from_files"]

DOCUMENT_EXTENSIONS = (".txt",)
MIN_DOCS_WORDS = 20  # python-docs keeps paragraphs of at least this many words
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


class TextTask(Task):
    """A task of documents without labels, for a causal LM: `batches` packs them into windows."""

    def __init__(self, name: str, splits: dict[str, list[Example]], info: dict[str, Any] | None = None, *,
                 label_names: Sequence[str] = (), metric: str = "perplexity") -> None:
        if metric != "perplexity" or list(label_names):
            raise ValueError(f"a TextTask has no labels and the metric 'perplexity', got {list(label_names)} and {metric!r}")
        super().__init__(name=name, label_names=[], splits=splits, metric="perplexity", info=dict(info or {}))

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
        **_: Any,
    ) -> list[dict[str, torch.Tensor]]:
        """Windows of `max_length` tokens of the split's documents, `batch_size` windows a batch;
        `limit` keeps the first windows, `shuffle` shuffles the documents before packing. The
        windows are all as long as `max_length` but the last, so `group_by_length` and the
        other batching options of `Task.batches` change nothing here."""
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}; this task has {sorted(self.splits)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        texts = [ex.text for ex in self.splits[split]]
        if shuffle:
            random.Random(seed).shuffle(texts)
        return pack_windows(texts, tokenizer, max_length=max_length, batch_size=batch_size, limit=limit)


def pack_windows(
    texts: Sequence[str], tokenizer: Any, *, max_length: int, batch_size: int = 32, limit: int | None = None
) -> list[dict[str, torch.Tensor]]:
    """Documents tokenised into one stream and cut into windows of `max_length` tokens, batched:
    ``input_ids`` and ``attention_mask`` (the last window padded on the right; a last window of
    one token, which predicts nothing, is dropped). Documents are tokenised only until `limit`
    windows are full."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (a window predicts its tokens after the first), got {max_length}")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    stream: list[int] = []
    wanted = None if limit is None else limit * max_length
    for start in range(0, len(texts), 64):
        for ids in tokenizer(list(texts[start:start + 64]), add_special_tokens=True)["input_ids"]:
            if eos is not None and (not ids or ids[0] != bos) and (not ids or ids[-1] != eos):
                ids = [*ids, eos]  # no start marker: an end marker keeps the documents apart
            stream.extend(ids)
        if wanted is not None and len(stream) >= wanted:
            break
    windows = [stream[i:i + max_length] for i in range(0, len(stream), max_length)]
    windows = [w for w in windows if len(w) > 1][:limit]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    batches = []
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        width = max(len(w) for w in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, window in enumerate(chunk):
            ids[row, :len(window)] = torch.tensor(window)
            mask[row, :len(window)] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


# --------------------------------------------------------------------------- reading documents


def is_text_file(path: str | os.PathLike, label_column: str = "label") -> bool:
    """Whether a file is read as documents without labels: a .txt file, or a .csv/.tsv/.jsonl
    file without `label_column`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DOCUMENT_EXTENSIONS:
        return True
    if suffix not in FILE_EXTENSIONS or not path.is_file():
        return False
    columns, _ = read_table(path)
    return label_column not in columns


def read_documents(path: str | os.PathLike, *, text_column: str | None = None) -> list[str]:
    """The documents of a .txt file (paragraphs: runs of lines ended by a blank line, as written)
    or of a table's text column (`text_column`, or the first of "text", "sentence", ... it has),
    empty ones left out."""
    from gnorm_kernels.data.tables import _read_text

    path = Path(path)
    if path.suffix.lower() in DOCUMENT_EXTENSIONS:
        text = _read_text(path).replace("\r\n", "\n")
        return [p.strip() for p in _BLANK_LINE.split(text) if p.strip()]
    if path.suffix.lower() not in FILE_EXTENSIONS:
        raise ValueError(f"{path}: expected a .txt, .csv, .tsv or .jsonl file of documents")
    columns, rows = read_table(path)
    column = text_column or next((c for c in SINGLE_TEXT_COLUMNS if c in columns), None)
    if column is None or column not in columns:
        raise ValueError(f"{path}: no text column {text_column or list(SINGLE_TEXT_COLUMNS)}; columns are {columns}")
    texts = []
    for line, row in rows:
        value = row.get(column)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{path}, line {line}: the {column!r} field is a JSON {type(value).__name__}; expected text")
        if value and value.strip():
            texts.append(value)
    return texts


def _examples(texts: Sequence[str]) -> list[Example]:
    return [Example(t, None, 0) for t in texts]


def _split(name: str, documents: list[str], seed: int, test_fraction: float, info: dict[str, Any],
           where: str | None = None) -> TextTask:
    """A seeded shuffle of distinct documents into test (`test_fraction`), calibration (as many)
    and train (the rest), each kept in the documents' order; `where` names the source in errors."""
    if not 0 < test_fraction < 0.5:
        raise ValueError(f"test_fraction must be in (0, 0.5), got {test_fraction}")
    documents = list(dict.fromkeys(documents))  # a repeated document would sit in two splits
    if len(documents) < 2:
        raise ValueError(f"{where or name}: expected at least 2 distinct documents (a .txt file's paragraphs are "
                         f"separated by blank lines), found {len(documents)}")
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(test_fraction * len(order)))
    n_cal = max(1, min(n_test, len(order) - n_test))
    parts = {"test": order[:n_test], "calibration": order[n_test:n_test + n_cal], "train": order[n_test + n_cal:]}
    splits = {s: _examples([documents[i] for i in sorted(parts[s])]) for s in SPLITS}
    return TextTask(name, splits, {"seed": seed, "documents": len(documents), **info})


def text_task_from_file(
    path: str | os.PathLike, *, seed: int = 0, text_column: str | None = None, test_fraction: float = 0.2
) -> TextTask:
    """A `TextTask` from one file of documents (see the module docstring), split by a seeded shuffle."""
    path = Path(path)
    txt = path.suffix.lower() in DOCUMENT_EXTENSIONS
    where = str(path) if txt else f"{path} (no label column, columns {read_table(path)[0]}: read as documents for a causal LM)"
    return _split(path.stem, read_documents(path, text_column=text_column), seed, test_fraction,
                  {"path": str(path), "document": "paragraph" if txt else "row"}, where)


def text_task_from_files(
    calibration_file: str | os.PathLike, eval_file: str | os.PathLike, *, seed: int = 0,
    text_column: str | None = None,
) -> TextTask:
    """A `TextTask` calibrating on the documents of `calibration_file` (less those `eval_file`
    also holds) and evaluating on every document of `eval_file`, in file order."""
    calibration_file, eval_file = Path(calibration_file), Path(eval_file)
    held_out = read_documents(eval_file, text_column=text_column)
    seen = set(held_out)
    source = list(dict.fromkeys(read_documents(calibration_file, text_column=text_column)))
    kept = [t for t in source if t not in seen]
    if not kept or not held_out:
        empty = eval_file if not held_out else calibration_file
        raise ValueError(f"{empty}: no documents left to {'evaluate' if not held_out else 'calibrate'} on")
    return TextTask(f"{calibration_file.stem}+{eval_file.stem}",
                    {"train": [], "calibration": _examples(kept), "test": _examples(held_out)},
                    {"seed": seed, "calibration_path": str(calibration_file), "eval_path": str(eval_file),
                     "overlap_left_out": len(source) - len(kept)})


def python_docs_task(*, seed: int = 0, min_words: int = MIN_DOCS_WORDS, test_fraction: float = 0.2) -> TextTask:
    """"python-docs": the prose paragraphs (at least `min_words` words, starting at the margin:
    the indented blocks are mostly code and grammar) of Python's own documentation topics
    (`pydoc_data.topics.topics`, standard library), whitespace collapsed, topics in sorted order,
    split by a seeded shuffle: disjoint, and the same on every machine with this Python."""
    import sys
    from pydoc_data.topics import topics

    paragraphs = []
    for key in sorted(topics):
        for block in _BLANK_LINE.split(topics[key].strip("\n")):
            words = block.split()
            if len(words) >= min_words and not block[:1].isspace():  # indented: mostly code and grammar
                paragraphs.append(" ".join(words))
    return _split("python-docs", paragraphs, seed, test_fraction,
                  {"source": "pydoc_data.topics", "python": sys.version.split()[0], "min_words": min_words,
                   "document": "paragraph"})
