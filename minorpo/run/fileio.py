"""Crash-safe file writing, shared by adapters, checkpoints and run logs; telling a local path from a hub id."""

import os
import re
from pathlib import Path


def atomic_write(path, write) -> Path:
    """Call write(tmp_path), fsync it, then rename it to `path`.

    A crash at any moment leaves either the old file or the new one under `path`, never half of one:
    os.replace is atomic on POSIX, and the fsync makes sure the bytes are on disk before the rename is.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def is_local_path(name) -> bool:
    """Whether a --model/--data value means a local path rather than a hub id "org/name": it exists, or it is
    not of the form org/name (no /, several /, a backslash, a leading . or ~), or its first part exists here
    (runs/finall). Such a value is never looked up on the hub: a typo is reported as a missing file at once."""
    s = str(name)
    return (Path(s).expanduser().exists() or not HUB_ID.match(s) or s.startswith((".", "~"))
            or Path(s.split("/")[0]).exists())


def no_such_path(name, what: str) -> str:
    """The message for a local path that does not exist, naming the deepest part of it that does."""
    path = Path(str(name)).expanduser()
    have = next((p for p in path.parents if str(p) != "." and p.exists()), None)
    hint = f" ({have} exists, {path.relative_to(have).as_posix()} in it does not)" if have else ""
    return (f"{name}: no such {what}{hint}; a hub id has the form org/name "
            f"(e.g. HuggingFaceTB/SmolLM2-135M-Instruct)")


def first_line(text) -> str:
    """The first non-empty line of an error text (huggingface_hub's errors run over several lines)."""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")
