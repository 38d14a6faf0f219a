"""Your own data: JSONL and CSV files to records (plain dicts), with errors that name the file and line.

Nothing is dropped silently. A line that is not a JSON object, a CSV row with the wrong number of
fields, a record without a required field, or a file with no records is an error naming the file
and line. Blank lines of a JSONL file are not records and are skipped.

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
            records.append(record)
    if not records:
        raise DataFileError(f"{path}: empty file, no records")
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
        for row in reader:
            # reader.line_num is the file line where the row ends (a quoted field may span lines).
            if len(row) != len(header):
                raise DataFileError(
                    f"{path} line {reader.line_num}: {len(row)} fields, but the header has {len(header)} ({', '.join(header)})"
                )
            records.append(dict(zip(header, row)))
    if not records:
        raise DataFileError(f"{path}: no records after the header")
    return records


def load_records(path: str | os.PathLike, required_fields: Sequence[str] = ()) -> list[dict]:
    """`load_jsonl` for .jsonl files, `load_csv` for .csv files."""
    loaders = {".jsonl": load_jsonl, ".csv": load_csv}
    suffix = Path(path).suffix.lower()
    if suffix not in loaders:
        raise DataFileError(f"{path}: unknown file type {suffix!r}; expected .jsonl or .csv")
    return loaders[suffix](path, required_fields)


def load_alpaca(path: str | os.PathLike) -> list[dict]:
    """An Alpaca-style JSONL file: every record has `instruction`, `input` and `output`."""
    return load_jsonl(path, required_fields=ALPACA_FIELDS)


def _check_fields(record: dict, required: Sequence[str], path: Path, line_number: int) -> None:
    missing = [f for f in required if f not in record]
    if missing:
        raise DataFileError(
            f"{path} line {line_number}: missing field {', '.join(map(repr, missing))} (has: {', '.join(record) or 'none'})"
        )
