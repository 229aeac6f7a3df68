"""Reading labelled rows from local data files (csv, tsv, jsonl), as written.

Every field is read as text (no re-typing: "1.50" stays "1.50", "NA" is a text), a file must
be UTF-8, and a ragged row or a broken .jsonl line is an error naming the file and its line.
The text columns are found by name (a single text, or a known pair). `gnorm_kernels.data.loading`
builds tasks from what this returns.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

__all__ = ["FILE_EXTENSIONS", "SINGLE_TEXT_COLUMNS", "PAIR_TEXT_COLUMNS", "DataWarning", "read_table",
           "pick_text_columns", "rows_with_labels", "labelled_rows", "read_rows", "lines_text"]

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


def read_table(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
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


def pick_text_columns(found: list[str], text_columns: Sequence[str] | None, path: Path) -> tuple[str, ...]:
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


def rows_with_labels(
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


def lines_text(lines: Sequence[int]) -> str:
    return ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")


def labelled_rows(
    path: Path, label_column: str, text_columns: Sequence[str] | None
) -> tuple[tuple[str, ...], list[tuple[int, tuple[str, ...], Any]], list[int]]:
    """(text columns, [(line, texts, raw label)], lines skipped for a missing text or label) of a
    local file, after checking that it is one: a supported extension, a file, a label column."""
    path = Path(path)
    if path.suffix.lower() not in FILE_EXTENSIONS:
        raise ValueError(f"unknown file extension {path.suffix!r} for {path}; expected one of {list(FILE_EXTENSIONS)}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; expected a {path.suffix} file")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    found, rows = read_table(path)
    if label_column not in found:
        raise ValueError(f"{path}: no label column {label_column!r}; columns are {found}")
    cols = pick_text_columns(found, text_columns, path)
    kept, skipped = rows_with_labels(rows, cols, label_column, path)
    return cols, kept, skipped


def read_rows(
    path: Path, label_column: str, text_columns: Sequence[str] | None, *, dedupe: bool, min_rows: int
) -> tuple[tuple[str, ...], list[tuple[str, str | None, Any, int]]]:
    """(text columns, [(text, pair or None, raw label, line)]) of the labelled rows of a local file,
    read as `task_from_file` reads them (text kept as written, line-numbered errors)."""
    cols, kept, _ = labelled_rows(path, label_column, text_columns)
    if dedupe:
        seen: set[tuple[str, ...]] = set()
        kept = [r for r in kept if not (r[1] in seen or seen.add(r[1]))]
    if len(kept) < min_rows:
        raise ValueError(f"{path}: expected at least {min_rows} labelled rows with text, found {len(kept)}")
    return cols, [(t[0], t[1] if len(t) == 2 else None, label, line) for line, t, label in kept]
