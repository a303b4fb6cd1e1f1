"""Lock files that die with their holder: who is writing a cache key or a bundle right now.

A lock is ``fcntl.flock`` on a small file. The kernel releases it when the holder exits,
``kill -9`` included, so a lock never outlives a crash, and anyone can ask whether a
writer is still alive by trying to take it. The holder removes the file on release; a
taker checks after locking that the path still names the file it locked (another holder
may have removed it meanwhile) and retries if not, the usual pattern for removable lock
files. ``filelock`` (installed with transformers) offers no such check and leaves its
files behind, which ``mechinterp cache list`` would then have to explain. POSIX only.

>>> with hold(folder / "key.lock"):  # blocks while another process holds it
...     write_the_cube()
>>> with hold(folder / "key.lock", wait=False) as free:
...     if free:
...         delete_leftovers()
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def hold(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the lock at ``path`` for the ``with`` block; yield whether it was taken.

    Parameters
    ----------
    path : the lock file (created if absent, removed on release).
    wait : block until the lock is free; with False, yield False at once when another
        process holds it.

    Raises
    ------
    OSError
        When the lock file cannot be created (a read-only folder, say).
    """
    fd = _take(path, wait)
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # closing releases the flock


def is_held(path: Path) -> bool:
    """Whether a live process holds the lock at ``path`` right now (no file: no)."""
    if not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _take(path: Path, wait: bool) -> int | None:
    """A descriptor of ``path`` flocked exclusively, or None when busy and not waiting."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder before us removed the file: lock the new one
