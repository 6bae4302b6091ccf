"""Atomic file replacement, shared by every writer in bnnlite (bundles, checkpoints, logs).

Public names: atomic_path, temp_beside, remove_stale.

Temporaries are named ``<name>.<random>.tmp`` beside the target and hold an
exclusive ``flock`` for as long as their writer lives.  An exception or
Ctrl-C removes them on the way out; a process killed outright (kill -9, power
loss) cannot, so every later write of the same target first removes the
temporaries whose lock nobody holds any more: their writer is gone.
"""
from __future__ import annotations

import fcntl
import glob
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "temp_beside", "remove_stale"]


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def remove_stale(path) -> list[Path]:
    """Remove ``<path>.*.tmp`` files left by writers that died; returns what was removed."""
    path = Path(path)
    removed = []
    for p in sorted(path.parent.glob(glob.escape(path.name) + ".*.tmp")):
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:  # gone already, a symlink, unreadable: not ours to remove
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its writer lives
        except OSError:
            continue
        else:
            try:
                os.unlink(p)
                removed.append(p)
            except OSError:
                pass
        finally:
            os.close(fd)
    return removed


@contextmanager
def temp_beside(path):
    """Yield a locked temporary path beside ``path``, removed on every exit of the block.

    A writer that reopens it must not take its own ``flock`` on it (HDF5 would:
    open it with ``locking=False``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # ours until this process ends, however it ends
        remove_stale(path)              # after taking our lock: ours is never taken for stale
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)
        os.close(fd)


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    An interrupted or failed write leaves ``path`` as it was and no temporary file behind
    (after a kill -9, the next write of ``path`` removes it)."""
    path = Path(path)
    with temp_beside(path) as tmp:
        yield tmp
        # mkstemp makes the file 0600; give it the mode an ordinary open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
