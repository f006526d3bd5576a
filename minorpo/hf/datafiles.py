"""Where preference rows come from: local files (.jsonl, .jsonl.gz, .json, .parquet), folders, hub datasets.

`iter_rows(source, ...)` yields `(where, row)` pairs: `where` is "file:line" (JSON Lines), "file:row N"
(a .json list or a parquet table; N counts from 1), and `row` is whatever the file holds there. Checking that a
row has the right keys and types is data.py's job; this file only guarantees that each row is a JSON object
and fails, naming the file and line, when a file itself is malformed (bad JSON, wrong top-level type, corrupt
gzip, unknown extension).

A folder or a hub dataset holds many files; `select_files` picks them by `data_files` (a glob on the path inside
the folder/repo) and/or `split` (a file named `<split>.<ext>` or `<split>-00000-of-00001.<ext>`, or a folder
named `<split>`), the way hub datasets are laid out.
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import zlib
from pathlib import Path
from typing import Iterator

from minorpo.errors import MissingFileError, UserError
from minorpo.hf import hub
from minorpo.run.fileio import first_line, no_such_path

EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


class DataFileError(UserError):
    """A data file (or a dataset source) that cannot be read; the message names the file and line."""


def _ext(name: str) -> str | None:
    return next((e for e in sorted(EXTENSIONS, key=len, reverse=True) if name.endswith(e)), None)


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    """UTF-8 text of one line (a leading BOM is dropped); a bad byte is reported by line and column."""
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise DataFileError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                            f"save the file as UTF-8") from None


def _json_error(path: Path, lineno: int, e: json.JSONDecodeError) -> str:
    # json's messages may end in "at" ("Unterminated string starting at"): the column follows it
    return f"{path}:{lineno}: invalid JSON: {e.msg.removesuffix(' at')} at column {e.colno}"


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        with _open_bytes(path) as f:
            for lineno, raw in enumerate(f, 1):
                line = _decode(raw, path, lineno)
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataFileError(_json_error(path, lineno, e)) from None
                if not isinstance(row, dict):
                    raise DataFileError(f"{path}:{lineno}: expected one JSON object per line, "
                                        f"got {type(row).__name__}")
                yield f"{path.name}:{lineno}", row
    except (OSError, EOFError, zlib.error) as e:
        raise DataFileError(f"{path}: cannot be read ({type(e).__name__}: {first_line(e)})") from e


def _read_json(path: Path, split: str | None) -> Iterator[tuple[str, dict]]:
    try:
        with _open_bytes(path) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataFileError(f"{path}: cannot be read ({type(e).__name__}: {first_line(e)})") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        lineno = raw[:e.start].count(b"\n") + 1
        _decode(raw[raw.rfind(b"\n", 0, e.start) + 1:e.end], path, lineno)  # raises, naming line and column
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFileError(_json_error(path, e.lineno, e) + "; a .json file holds one list of row objects (use "
                            ".jsonl for one row per line)") from None
    if isinstance(data, dict) and isinstance(data.get(split or "train"), list):  # {"train": [...], "test": [...]}
        data = data[split or "train"]
    if not isinstance(data, list):
        keys = f" with keys {sorted(data)[:8]}" if isinstance(data, dict) else ""
        raise DataFileError(f"{path}: the top level must be a list of row objects (or {{split: list}}), "
                            f"got {type(data).__name__}{keys}")
    for i, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise DataFileError(f"{path}: row {i} of the top-level list is {type(row).__name__}, expected an object")
        yield f"{path.name}:row {i}", row


def _read_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataFileError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow), "
                            f"or convert the file to .jsonl") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid etc.
        raise DataFileError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from e
    for i, row in enumerate(table.to_pylist(), 1):
        yield f"{path.name}:row {i}", row


def read_file(path, split: str | None = None) -> Iterator[tuple[str, dict]]:
    """Rows of one local file, with their location."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(no_such_path(path, "data file"))
    ext = _ext(path.name)
    if ext in (".jsonl", ".jsonl.gz"):
        yield from _read_jsonl(path)
    elif ext in (".json", ".json.gz"):
        yield from _read_json(path, split)
    elif ext == ".parquet":
        yield from _read_parquet(path)
    else:
        raise DataFileError(f"{path}: unsupported file type; supported: {', '.join(EXTENSIONS)}")


def select_files(files: list[str], split: str | None = None, data_files: str | None = None) -> list[str]:
    """The data files among `files` (paths inside a folder or repo) matching data_files (glob) and split.

    split None means "train" unless data_files is given (then data_files alone decides).
    """
    candidates = sorted(f for f in files if _ext(f))
    if data_files:
        candidates = [f for f in candidates if fnmatch.fnmatch(f, data_files)]
    if split is None and not data_files:
        split = "train"
    if split is not None:
        def is_split(f: str) -> bool:
            parts = f.split("/")
            stem = parts[-1][: -len(_ext(parts[-1]))]
            return split in parts[:-1] or stem == split or stem.startswith(split + "-")
        candidates = [f for f in candidates if is_split(f)]
    if not candidates:
        shown = ", ".join(sorted(f for f in files if _ext(f))[:20]) or "none"
        raise DataFileError(f"no data file matches split={split!r} data_files={data_files!r}; "
                            f"data files available: {shown}")
    return candidates


def resolve_files(source, split: str | None = None, data_files: str | None = None,
                  revision: str | None = None) -> list[Path]:
    """Local paths of the data files of `source`: a file, a folder, or a hub dataset id ("org/name"), whose
    selected files (only those) are downloaded to the HF cache (hub.py)."""
    path = hub.local(source, "data file or folder")
    if path is not None and path.is_file():
        return [path]
    if path is not None:
        files = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
        return [path / f for f in select_files(files, split, data_files)]
    return hub.dataset_files(str(source), lambda files: select_files(files, split, data_files), revision=revision,
                             failed=lambda why: DataFileError(
        f"data source {str(source)!r} is not a local file or folder, and fetching it as a hub dataset failed "
        f"({why}). Pass a local .jsonl/.json/.parquet file or go online."))


def iter_rows(source, split: str | None = None, data_files: str | None = None,
              revision: str | None = None) -> Iterator[tuple[str, dict]]:
    """(where, row) for every row of every selected file of source, in order."""
    for path in resolve_files(source, split, data_files, revision):
        yield from read_file(path, split)
