"""Your own data: JSONL, JSON and CSV files to records (dicts), with errors that name the file and line.

Nothing is dropped silently. A line that is not a JSON object, a CSV row with the wrong number of
fields, a record without a required field, or a file with no records is an error naming the file
and line. Blank lines of a JSONL file are not records and are skipped. A .json file holds one JSON
array of objects, as Stanford Alpaca's `alpaca_data.json` does.

Every record remembers where it came from (`FileRecord.origin`, "data.jsonl line 201"), so an error
found later, after the records were shuffled into splits (a template field missing, an example too
long), still names the file and line.

An Alpaca-style file (`instruction`, `input`, `output`) renders with `minift.data.templates.ALPACA_TEMPLATE`;
any other file with a template you write, e.g. a CSV of reviews with
`PromptTemplate("mine", "Rate this review:\\n{{text}}", "{{rating}}")`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

ALPACA_FIELDS = ("instruction", "input", "output")


class DataFileError(ValueError):
    """A data file that cannot be read into records."""


class FileRecord(dict):
    """A record read from a file: a dict of its fields, plus `origin`, its file and line."""

    def __init__(self, fields: dict, origin: str):
        super().__init__(fields)
        self.origin = origin


def load_jsonl(path: str | os.PathLike, required_fields: Sequence[str] = ()) -> list[dict]:
    """One record per non-blank line, each a JSON object.

    Raises:
        DataFileError: a line that is not valid JSON or not an object, a record without one of
            `required_fields`, or no records at all; the message names the file and line.
    """
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFileError(f"{path} line {line_number}: not valid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(record, dict):
                raise DataFileError(f"{path} line {line_number}: expected a JSON object, got {type(record).__name__}")
            _check_fields(record, required_fields, path, line_number)
            records.append(FileRecord(record, f"{path} line {line_number}"))
    if not records:
        raise DataFileError(f"{path}: empty file, no records")
    return records


def load_json(path: str | os.PathLike, required_fields: Sequence[str] = ()) -> list[dict]:
    """The objects of a file holding one JSON array (Alpaca's `alpaca_data.json` layout).

    Raises:
        DataFileError: not valid JSON, not an array, an element that is not an object or lacks one of
            `required_fields`, or an empty array; the message names the file and the line.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    decoder, records = json.JSONDecoder(), []
    line_of = lambda offset: text.count("\n", 0, offset) + 1

    def skip(i: int) -> int:  # past whitespace
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    # Decode the array one element at a time (raw_decode), so each record knows the line it starts on.
    i = skip(0)
    if text[i:i + 1] != "[":
        raise DataFileError(f"{path} line {line_of(i)}: expected a JSON array of objects (the Alpaca layout); "
                            "for one object per line, name the file .jsonl")
    i = skip(i + 1)
    while text[i:i + 1] != "]":
        try:
            record, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataFileError(f"{path} line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(record, dict):
            raise DataFileError(f"{path} line {line_of(i)}: expected a JSON object, got {type(record).__name__}")
        _check_fields(record, required_fields, path, line_of(i))
        records.append(FileRecord(record, f"{path} line {line_of(i)}"))
        i = skip(end)
        if text[i:i + 1] == ",":
            i = skip(i + 1)
        elif text[i:i + 1] != "]":
            raise DataFileError(f"{path} line {line_of(i)}: not valid JSON (expected ',' or ']' after a record)")
    if skip(i + 1) != len(text):
        raise DataFileError(f"{path} line {line_of(skip(i + 1))}: not valid JSON (text after the array)")
    if not records:
        raise DataFileError(f"{path}: empty array, no records")
    return records


def load_csv(path: str | os.PathLike, required_fields: Sequence[str] = ()) -> list[dict]:
    """One record per row after the header row; every value is a string.

    Raises:
        DataFileError: no header, a row whose number of fields differs from the header's, a
            header without one of `required_fields`, or no rows; the message names the file and line.
    """
    path = Path(path)
    records = []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise DataFileError(f"{path}: empty file, no header and no records")
        _check_fields(dict.fromkeys(header), required_fields, path, line_number=1)
        end = reader.line_num  # where the previous row ended: a row starts on the next line
        for row in reader:
            start, end = end + 1, reader.line_num
            # reader.line_num is the file line where the row ends (a quoted field may span lines).
            if len(row) != len(header):
                raise DataFileError(
                    f"{path} line {reader.line_num}: {len(row)} fields, but the header has {len(header)} ({', '.join(header)})"
                )
            records.append(FileRecord(dict(zip(header, row)), f"{path} line {start}"))
    if not records:
        raise DataFileError(f"{path}: no records after the header")
    return records


def load_records(path: str | os.PathLike, required_fields: Sequence[str] = ()) -> list[dict]:
    """`load_jsonl`, `load_json` or `load_csv` by the file's suffix (in any case: .JSONL is .jsonl)."""
    suffix = Path(path).suffix.lower()
    if suffix not in LOADERS:
        raise DataFileError(f"{path}: unknown file type {suffix!r}; expected {', '.join(LOADERS)}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    return LOADERS[suffix](path, required_fields)


def is_data_file(task: str) -> bool:
    """Whether `task` names a data file (by its suffix) rather than a built-in task."""
    return Path(task).suffix.lower() in LOADERS


def load_alpaca(path: str | os.PathLike) -> list[dict]:
    """An Alpaca-style JSONL file: every record has `instruction`, `input` and `output`."""
    return load_jsonl(path, required_fields=ALPACA_FIELDS)


LOADERS = {".jsonl": load_jsonl, ".json": load_json, ".csv": load_csv}  # the file types, by suffix


def _check_fields(record: dict, required: Sequence[str], path: Path, line_number: int) -> None:
    missing = [f for f in required if f not in record]
    if missing:
        raise DataFileError(
            f"{path} line {line_number}: missing field {', '.join(map(repr, missing))} (has: {', '.join(record) or 'none'})"
        )
