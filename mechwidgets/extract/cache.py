"""The activation cache: finished cubes on disk, keyed by everything that shapes them.

A cube's file name is a hash of its request (model identity, tokenizer, texts and
positions, layers, components, token policy, dtype and format version), so asking again
for the same activations opens the file and runs no forward pass. A cube proves what it
is before it is used: the key and request stored in it must match, and its block
checksums must match its data (see :mod:`mechwidgets.extract.cube`). A file that fails
any check is moved to ``quarantine/`` with a one-line warning and rebuilt, never trusted.

Writers hold a lock per key (:mod:`mechwidgets.core.locks`) from the cache lookup until
the finished cube is open, and write under a temporary name renamed into place, so
readers see no file or a whole one, two processes asking for one key compute it once,
and ``clear_cache`` leaves an extraction in progress alone. Temporary files of a writer
that died (``kill -9``) are listed with their age and removed by ``clear_cache`` or by the
next writer of that key. ``MECHWIDGETS_CACHE`` overrides the folder (default
``~/.cache/mechwidgets``).

>>> key = cache_key({"model": "zoo:toy-grammar@ab12", "layers": [0, 1]})
>>> with claim(key):
...     cube = load(key, layout)
...     if cube is None:
...         with writing(cache_path(key)) as tmp:
...             ...  # a CubeWriter fills tmp; it becomes the cube on success
>>> [(e.key, e.status, e.age) for e in list_cache()]
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import netCDF4
import xarray as xr

from mechwidgets.core import locks
from mechwidgets.core.errors import CacheError, CubeError
from mechwidgets.extract.cube import ACT, NEURONS, CubeLayout, open_cube

log = logging.getLogger("mechwidgets")
SUFFIX = ".nc"
TEMP = ".tmp-"
LOCK = ".lock"
QUARANTINE = "quarantine"


def cache_dir() -> Path:
    """The cache folder: ``$MECHWIDGETS_CACHE`` or ``~/.cache/mechwidgets``."""
    env = os.environ.get("MECHWIDGETS_CACHE")
    folder = Path(env).expanduser() if env else Path.home() / ".cache" / "mechwidgets"
    if folder.exists() and not folder.is_dir():
        raise CacheError(f"cache folder {folder} is a file; point MECHWIDGETS_CACHE at a folder")
    return folder


def cache_key(parts: dict[str, Any]) -> str:
    """A short stable hash of JSON-serialisable ``parts`` (key order does not matter)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_path(key: str) -> Path:
    """Where the cube with ``key`` lives."""
    return cache_dir() / f"{key}{SUFFIX}"


def _lock_path(key: str) -> Path:
    return cache_dir() / f"{key}{LOCK}"


@contextmanager
def claim(key: str) -> Iterator[None]:
    """Hold ``key``'s lock for the ``with`` block: look up, build and open its cube inside.

    Waits while another process holds it (it is building the same cube, which the
    lookup then finds). Leftover temporary files of the key are removed: their writer
    died, since every writer holds the lock. In a read-only cache folder no lock can be
    taken; the block runs without one (cubes there can still be read).
    """
    with ExitStack() as stack:
        try:
            _lock_path(key).parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(locks.hold(_lock_path(key)))
        except OSError:
            pass  # read-only: nothing here can change under us, and writing() says why
        else:
            for leftover in cache_dir().glob(f"{key}{SUFFIX}{TEMP}*"):
                leftover.unlink(missing_ok=True)
        yield


def load(key: str, layout: CubeLayout) -> xr.Dataset | None:
    """The cached cube for ``key``, or None when absent or failing a check (then it is
    moved to quarantine with a one-line warning). Call it inside :func:`claim`."""
    path = cache_path(key)
    try:
        inode = path.stat().st_ino
    except FileNotFoundError:
        return None
    try:
        cube = open_cube(path, layout, on_corrupt=partial(_quarantine_read, inode=inode))
        problem = _identity_problem(cube.attrs, key)
        if problem:
            cube.close()
            raise CubeError(f"cube file {path} {problem}")
        return cube
    except CubeError as exc:
        where = quarantine(path, inode)
        log.warning("mechwidgets: %s; %s, extracting again", exc, _moved(where))
        return None


def _identity_problem(attrs: dict[str, Any], key: str) -> str | None:
    """Whether the file is the cube of ``key``: its stored key and request must say so."""
    stored = attrs.get("cache_key")
    if stored != key:
        return f"holds the cube of another request (key {stored!r}, not {key!r})"
    try:
        request = json.loads(attrs["request"])
    except (KeyError, TypeError, json.JSONDecodeError):
        return "records no request"
    if cache_key(request) != key:
        return "records a request that does not hash to its key"
    return None


def quarantine(path: Path, inode: int | None = None) -> Path | None:
    """Move a cube that failed a check to ``quarantine/``; where it went, or None.

    With ``inode``, only while ``path`` is still that file (another process may have
    rebuilt it meanwhile). None when it is gone or the folder is read-only.
    """
    folder = cache_dir() / QUARANTINE
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = folder / f"{path.stem}.{stamp}-{uuid.uuid4().hex[:6]}{SUFFIX}"
    try:
        if inode is not None and path.stat().st_ino != inode:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    except OSError:
        return None
    return target


def _quarantine_read(path: Path, message: str, inode: int) -> None:
    """A block failed its checksum while read (cubes too large to verify on open)."""
    where = quarantine(path, inode)
    if where is not None:
        log.warning("mechwidgets: %s; %s, the next extract rebuilds it", message, _moved(where))


def _moved(where: Path | None) -> str:
    return f"moved it to {where}" if where else "could not move it aside"


@contextmanager
def writing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    Raises
    ------
    CacheError
        When the folder cannot be created or written (before any work is done).
    """
    tmp = path.with_name(f"{path.name}{TEMP}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch()
    except OSError as exc:
        raise CacheError(
            f"cannot write to cache folder {path.parent} ({exc.strerror}); "
            "set MECHWIDGETS_CACHE to a writable folder, or extract with cache=False"
        ) from None
    try:
        yield tmp
        os.replace(tmp, path)  # atomic within one folder: readers see no file or a whole one
    finally:
        tmp.unlink(missing_ok=True)


@cache
def scratch_dir() -> Path:
    """A private temporary folder for uncached cubes, removed when Python exits."""
    path = Path(tempfile.mkdtemp(prefix="mechwidgets-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@dataclass(frozen=True)
class CacheEntry:
    """One file in the cache folder as ``mechinterp cache list`` shows it.

    ``status`` is ``cube``, ``corrupt`` (unreadable header), ``quarantined`` (failed a
    check, kept for inspection), ``in progress`` (a live extraction's temporary file) or
    ``stale`` (a temporary file whose writer died). ``age`` is seconds since last written.
    """

    key: str
    model: str
    shape: str
    size: int
    path: Path
    status: str = "cube"
    age: float = 0.0


def list_cache() -> list[CacheEntry]:
    """Every cube, quarantined cube and temporary file in the cache folder."""
    folder = cache_dir()
    if not folder.is_dir():
        return []
    entries = [_entry(p, "cube") for p in sorted(folder.glob(f"*{SUFFIX}"))]
    entries += [_entry(p, "quarantined") for p in sorted((folder / QUARANTINE).glob("*"))]
    for path in sorted(folder.glob(f"*{SUFFIX}{TEMP}*")):
        key = path.name.split(".")[0]
        entries.append(_entry(path, "in progress" if locks.is_held(_lock_path(key)) else "stale"))
    return [e for e in entries if e is not None]


def _entry(path: Path, status: str) -> CacheEntry | None:
    try:
        stat = path.stat()
    except FileNotFoundError:  # removed while we looked
        return None
    model, shape = "?", "?"
    if status in ("cube", "quarantined"):
        try:
            with netCDF4.Dataset(path) as f:
                model = str(f.getncattr("model")) if "model" in f.ncattrs() else "?"
                var = f.variables.get(ACT) or f.variables.get(NEURONS)
                shape = "x".join(str(n) for n in var.shape) if var is not None else "?"
        except OSError:
            status = "corrupt" if status == "cube" else status
    key = path.name.split(".")[0]
    return CacheEntry(key, model, shape, stat.st_size, path, status, time.time() - stat.st_mtime)


@dataclass(frozen=True)
class Cleared:
    """What :func:`clear_cache` did: files removed, and files of live extractions kept."""

    removed: int
    in_progress: int


def clear_cache() -> Cleared:
    """Delete every cube, quarantined cube and stale temporary file; keep those of
    extractions in progress (their key's lock is held), so they finish.

    Raises
    ------
    CacheError
        When a file cannot be removed (a read-only cache folder).
    """
    folder = cache_dir()
    if not folder.is_dir():
        return Cleared(0, 0)
    removed = kept = 0
    by_key: dict[str, list[Path]] = {}
    for path in folder.iterdir():
        if path.is_file() and SUFFIX in path.name:
            by_key.setdefault(path.name.split(".")[0], []).append(path)
    try:
        for key, files in sorted(by_key.items()):
            with locks.hold(_lock_path(key), wait=False) as free:
                if not free:
                    kept += len(files)
                    continue
                for path in files:
                    path.unlink(missing_ok=True)
                removed += len(files)
        if (folder / QUARANTINE).is_dir():
            removed += sum(1 for _ in (folder / QUARANTINE).iterdir())
            shutil.rmtree(folder / QUARANTINE)
    except OSError as exc:
        raise CacheError(
            f"cannot remove files from cache folder {folder} ({exc.strerror}); "
            "check its permissions"
        ) from None
    return Cleared(removed, kept)
