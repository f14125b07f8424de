"""Files that several processes (nodes, `build-engine`, possibly as other users) read and write:
written whole or not at all, readable by everyone, and serialised by an advisory lock."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FILE_MODE = 0o644  # mkstemp's 0600 would lock out a node running as another user


def atomic_write(path: str | Path, data: bytes) -> None:
    """Replace `path` by `data` in one step: a temporary file beside it, flushed to disk, then
    renamed over it (a crash or a concurrent reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power cut


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) for the duration of the block.

    The lock file is opened read-only, so a user who may not write it can still lock it; the
    lock is released when the process ends, however it ends.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        # Unlock before closing: a child forked inside the block shares this open file, and closing
        # our descriptor alone would leave the lock held until that child closes its copy.
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
