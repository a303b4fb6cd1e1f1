"""The activation cache: finished cubes on disk, keyed by everything that shapes them.

A cube's file name is a hash of the model identity, tokenizer, texts and positions,
layers, components, token policy, dtype and format version, so asking again for the
same activations opens the file and runs no forward pass. Files are written under a
temporary name in the same folder and renamed into place, and a file that fails its
checks is reported in one line, deleted and rebuilt, never trusted.
``MECHWIDGETS_CACHE`` overrides the folder (default ``~/.cache/mechwidgets``).

>>> path = cache_path(cache_key({"model": "zoo:toy-grammar@ab12", "layers": [0, 1]}))
>>> with writing(path) as tmp:  # a CubeWriter fills tmp; it becomes path on success
...     tmp.write_bytes(b"...")
>>> [(e.key, e.model, e.shape) for e in list_cache()]
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import netCDF4
import xarray as xr

from mechwidgets.core.errors import CacheError, CubeError
from mechwidgets.extract.cube import ACT, NEURONS, CubeLayout, open_cube

log = logging.getLogger("mechwidgets")
SUFFIX = ".nc"


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


def load(key: str, layout: CubeLayout) -> xr.Dataset | None:
    """The cached cube for ``key``, or None when absent or corrupt (then it is deleted)."""
    path = cache_path(key)
    if not path.exists():
        return None
    try:
        return open_cube(path, layout)
    except CubeError as exc:
        log.warning("mechwidgets: %s; deleting it and extracting again", exc)
        path.unlink(missing_ok=True)
        return None


@contextmanager
def writing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(
            f"cannot create cache folder {path.parent} ({exc.strerror}); "
            "set MECHWIDGETS_CACHE to a writable folder"
        ) from None
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
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
    """One cached cube as ``mechinterp cache list`` shows it."""

    key: str
    model: str
    shape: str
    size: int
    path: Path


def list_cache() -> list[CacheEntry]:
    """Every cube file in the cache folder, by key; unreadable files show as ``corrupt``."""
    folder = cache_dir()
    files = sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []
    return [_entry(p) for p in files]


def _entry(path: Path) -> CacheEntry:
    try:
        with netCDF4.Dataset(path) as f:
            model = str(f.getncattr("model")) if "model" in f.ncattrs() else "?"
            var = f.variables.get(ACT) or f.variables.get(NEURONS)
            shape = "x".join(str(n) for n in var.shape) if var is not None else "?"
    except OSError:
        model, shape = "corrupt", "?"
    return CacheEntry(path.stem, model, shape, path.stat().st_size, path)


def clear_cache() -> int:
    """Delete every cube and leftover temporary file in the cache folder; return the count."""
    folder = cache_dir()
    if not folder.is_dir():
        return 0
    files = [p for p in folder.iterdir() if p.is_file() and SUFFIX in p.name]
    for path in files:
        path.unlink(missing_ok=True)
    return len(files)
