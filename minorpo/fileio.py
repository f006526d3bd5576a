"""Crash-safe file writing, shared by adapters, checkpoints and run logs."""

import os
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
