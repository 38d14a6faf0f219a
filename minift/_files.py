"""Atomic file writes (a reader sees the old file or the new one, never half of one), JSON and tables.

Write to a temporary file in the same directory, then `os.replace` it over the target: on POSIX a
rename within one file system is atomic, so a crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)` to produce the file, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def write_table(directory: str | os.PathLike, name: str, rows: list[dict], header: dict) -> tuple[Path, Path]:
    """Write `rows` as `<name>.json` ({**header, "rows": rows}) and `<name>.csv`, atomically; return both paths.

    The CSV has one column per key of any row, except keys whose values are lists or dicts (curves,
    nested records), which only the JSON can hold.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = directory / f"{name}.json", directory / f"{name}.csv"
    write_json(json_path, {**header, "rows": rows})
    nested = {k for row in rows for k, v in row.items() if isinstance(v, (list, tuple, dict))}
    fields = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in nested]

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(csv_path, write_csv)
    return json_path, csv_path


def claim_outputs(directory: str | os.PathLike, outputs: Iterable[str], overwrite: bool = False, resume: bool = False,
                  resumable: bool = False) -> None:
    """The one policy for output directories: a run never mixes its files into an earlier run's.

    `outputs` are the names (files or folders) the run writes into `directory`. When some of them exist
    already: with `resume` (for a run that can continue, `resumable`) they are kept; with `overwrite` they
    are deleted; otherwise FileExistsError names them and says which option does which. The directory is
    then created, and checked writable before any work is done.

    Raises:
        FileExistsError: earlier outputs, and neither overwrite nor resume.
        PermissionError: the directory cannot be written (named in the message).
    """
    directory = Path(directory)
    earlier = [name for name in outputs if (directory / name).exists()]
    if earlier and not (resume and resumable):
        if not overwrite:
            how = "overwrite=True (--overwrite) replaces them"
            how += ", resume=True (--resume) continues that run" if resumable else ""
            raise FileExistsError(f"{directory} already holds {', '.join(earlier)} from an earlier run: {how}; "
                                  "or choose another directory")
        for name in earlier:
            path = directory / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except PermissionError as error:
        raise PermissionError(f"cannot create the output directory {directory}: {error.strerror}") from error
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"the output directory {directory} is not writable")


def read_json(path: str | os.PathLike):
    """The JSON value in `path`.

    Raises:
        FileNotFoundError: no such file (named).
        ValueError: the file is not valid JSON (named, with the position of the error).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
