"""Atomic file writes (a reader sees the old file or the new one, never half of one), JSON, tables and
safetensors reads whose errors name the file.

Write to a temporary file in the same directory, then `os.replace` it over the target: on POSIX a
rename within one file system is atomic, so a crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)` to produce the file, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as error:  # a full disk, a read-only directory: say which file, keep the old one
        raise OSError(error.errno, f"cannot write {path}: {error.strerror or error}") from error
    finally:
        tmp.unlink(missing_ok=True)


def read_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict:
    """The tensors of a safetensors file.

    Raises:
        FileNotFoundError: no such file (named).
        ValueError: a truncated or corrupt file (named, with safetensors' reason).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, RuntimeError) as error:
        raise ValueError(f"{path}: not a readable safetensors file, truncated or corrupt ({error})") from error


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
    check_writable(directory)


@contextlib.contextmanager
def run_directory(directory: str | os.PathLike, outputs: Iterable[str], overwrite: bool = False, resume: bool = False,
                  resumable: bool = False, claim: bool = True) -> Iterator[Path]:
    """`claim_outputs`, with an overwrite that never mixes two runs: yields the directory to write into.

    Over an earlier run with `overwrite`, the new run is written beside it (`.NAME.new`) and swapped in
    only when it has finished: rename the old directory aside, the new one into its place, then delete
    the old one. A run that fails leaves the earlier run whole. Only a directory that holds nothing but
    run outputs is replaced this way; other files in it make a FileExistsError naming them.
    `claim=False` (ranks other than 0) only computes the directory: rank 0 claims and swaps.
    """
    directory, outputs = Path(directory), tuple(outputs)
    earlier = [name for name in outputs if (directory / name).exists()]
    if not (overwrite and earlier and not (resume and resumable)):
        if claim:
            claim_outputs(directory, outputs, overwrite, resume, resumable)
        yield directory
        return
    others = sorted(p.name for p in directory.iterdir() if p.name not in outputs and not p.name.startswith("."))
    if others:
        raise FileExistsError(f"{directory} holds {', '.join(others)} besides an earlier run's outputs; --overwrite "
                              "replaces a whole run directory, so choose another directory or move them")
    staging, old = directory.with_name(f".{directory.name}.new"), directory.with_name(f".{directory.name}.old")
    if claim:
        for stale in (staging, old):  # left by a run killed mid-way
            if stale.exists():
                shutil.rmtree(stale)
        check_writable(staging)
    try:
        yield staging
    except BaseException:
        if claim:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if claim:
        os.replace(directory, old)
        os.replace(staging, directory)
        shutil.rmtree(old)


def check_writable(directory: str | os.PathLike) -> None:
    """Create `directory` if needed and write (then delete) a file in it, so a run that cannot save fails
    before any work. A real write, not os.access: root passes os.access on a read-only mount.

    Raises:
        PermissionError: the directory cannot be created or written (named, with the reason).
    """
    directory = Path(directory)
    probe = directory / ".minift-write-test"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"cannot write into the output directory {directory}: {error.strerror or error}") from error


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
