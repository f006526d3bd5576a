"""Local path or Hugging Face Hub id: telling them apart, and fetching a hub repo into the local cache.

Used by loader.py (model folders), tokenizer.py (tokenizer files only) and datafiles.py (datasets). A value that
looks like a local path is never looked up on the hub (see fileio.is_local_path). With HF_HUB_OFFLINE set only the
local cache is read. huggingface_hub is imported when a hub id is fetched, not before: local folders work without
it. Any failure to fetch (offline, unknown or gated repo, network) becomes the caller's UserError, whose message
names the id and the first line of the cause.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from minorpo.errors import MissingFileError, UserError
from minorpo.run.fileio import first_line, is_local_path, no_such_path

Failed = Callable[[str], UserError]  # the error to raise, given why the fetch failed (one line)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def local(source, what: str) -> Path | None:
    """The local path `source` names (it exists), None for a hub id; a local-looking path that does not exist
    raises MissingFileError, its message naming the deepest part that does (`what`: "model folder", ...)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if is_local_path(str(source)):
        raise MissingFileError(no_such_path(source, what))
    return None


@contextmanager
def _fetching(failed: Failed):
    try:
        yield
    except UserError:  # the caller's own check (e.g. no file matches the split) passes through as is
        raise
    except Exception as e:
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline() else \
            f"{type(e).__name__}: {first_line(e)}"
        raise failed(why) from e


def snapshot(repo_id: str, failed: Failed, revision: str | None = None,
             allow_patterns: list[str] | None = None) -> Path:
    """The cached folder of a model repo, holding only the files matching allow_patterns (fetched if need be)."""
    from huggingface_hub import snapshot_download
    with _fetching(failed):
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns,
                                      local_files_only=offline()))


def dataset_files(repo_id: str, select: Callable[[list[str]], list[str]], failed: Failed,
                  revision: str | None = None) -> list[Path]:
    """The files of a dataset repo that select(names in the repo) picks, downloaded (only those) to the cache.
    Offline: picked from a snapshot an earlier run left in the cache."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    with _fetching(failed):
        if offline():
            folder = Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, local_files_only=True))
            files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
            return [folder / f for f in select(files)]
        files = HfApi().list_repo_files(repo_id, repo_type="dataset", revision=revision)
        return [Path(hf_hub_download(repo_id, f, repo_type="dataset", revision=revision)) for f in select(files)]
