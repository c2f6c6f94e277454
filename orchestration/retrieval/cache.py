"""Build a store's files once per content, even with several worker processes starting.

:func:`built_once` names a directory by a fingerprint of what goes in (the corpus and
the build settings), takes an exclusive file lock, builds into a temporary directory
and renames it into place: a reader sees a complete build or none, a changed corpus
gets a new directory, and two processes never build the same thing at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able ``parts`` (sorted keys)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def built_once(root: Path, key: str, build: Callable[[Path], None]) -> Path:
    """``root/key``, built by ``build(directory)`` unless a complete build is there."""
    target = root / key
    if target.is_dir():
        return target
    with _locked(root / f".{key}.lock"):
        if target.is_dir():
            return target  # another process built it while we waited
        scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            build(scratch)
            os.replace(scratch, target)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return target
