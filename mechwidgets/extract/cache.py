"""The activation cache: finished cubes on disk, keyed by everything that shapes them.

A cube's file name is a hash of its request (model identity, tokenizer, texts and
positions, layers, components, token policy, dtype and format version), so asking again
for the same activations opens the file and runs no forward pass. A cube proves what it
is before it is used: the key and request stored in it must match, and its block
checksums must match its data (see :mod:`mechwidgets.extract.cube`). A file that fails
any check is moved to ``quarantine/`` with a one-line warning and rebuilt, never trusted.

Verifying a cube's checksums reads it whole (0.5-0.9 s for 418 MB), so a cube that passed
is stamped: a small ``<key>.nc.verified`` file beside it records the key and the cube
file's inode, size and modification time (ns) at that moment, and an open that finds the
stamp matching the file skips the full read (:func:`load`). Any write to the file changes
its modification time, so corruption after a verified open is still caught at the next
open, unless the time was forged back (``os.utime``, ``touch -d``) with the size and
inode kept; bit rot on the disk is not a write and goes unseen by the stamp, as by any
check short of reading everything. The stamp is not trusted for a file modified less than
``RACY_NS`` before it was written (file times are coarser than nanoseconds: 1-10 ms on
Linux, up to 2 s on some file systems, so a later write could keep the same time), the
rule git uses for its index. A cube an extraction has just written opens without being
read back (its checksums are of the very buffers handed to the writer); the first later
open verifies and stamps it.
Cubes over ``VERIFY_ON_OPEN_BYTES`` are never read whole; their blocks are checked as
they are read, stamp or not.

Writers hold a lock per key (:mod:`mechwidgets.core.locks`) from the cache lookup until
the finished cube is open, and write under a temporary name renamed into place, so
readers see no file or a whole one, two processes asking for one key compute it once,
and ``clear_cache`` leaves an extraction in progress alone. Temporary files of a writer
that died (``kill -9``) are listed with their age and removed by ``clear_cache`` or by the
next writer of that key. ``MECHWIDGETS_CACHE`` overrides the folder (default
``~/.cache/mechwidgets``).

Zarr cubes written elsewhere (``extract(..., store=path_or_url)``, see
:mod:`mechwidgets.extract.store`) are recorded in the folder's store index
(``stores.jsonl``, URLs without credentials), so ``mechinterp cache list`` shows them with
their committed batches; ``clear_cache`` forgets them and leaves their data.

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
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import netCDF4
import xarray as xr

from mechwidgets.core import locks
from mechwidgets.core.errors import CacheError, CubeError
from mechwidgets.extract.cube import ACT, NEURONS, CubeLayout, CubeWriter, is_zarr, open_cube

if TYPE_CHECKING:  # the Zarr store module (zarr, 0.1-0.3 s) is imported when a store is used
    from mechwidgets.extract.store import StoreWriter

log = logging.getLogger("mechwidgets")
SUFFIX = ".nc"
TEMP = ".tmp-"
LOCK = ".lock"
QUARANTINE = "quarantine"
#: subfolders of what is drawn or read once and kept: model cards (models/card.py) and
#: charts' fallback PNGs (viz/chart_widget.py); ``clear_cache`` empties them too
CARDS = "models"
CHARTS = "charts"
#: suffix of the stamp beside a cube whose checksums were verified (see the module doc)
VERIFIED = ".verified"
#: a stamp is trusted only for a file last modified at least this long before the stamp
RACY_NS = 2 * 10**9
#: how many opened cubes this process keeps to serve again (see :func:`load`)
OPENED_MAX = 16
#: path -> (stamp, lazy cube) of the cubes this process opened, oldest first
_OPENED: dict[Path, tuple[dict[str, Any], xr.Dataset]] = {}
#: the index of Zarr cubes written elsewhere (a path or URL each), one JSON line per store
STORES = "stores.jsonl"


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
    moved to quarantine with a one-line warning). Call it inside :func:`claim`. Without
    a file in the folder, a finished Zarr cube of ``key`` in the store index is served.

    A cube this process opened before, whose file has not changed since (the stamp rule
    of the module doc), is served again without opening the file: a shallow copy of the
    lazy cube, about 0.1 ms instead of xarray's 8-9 ms open of a small cube.
    """
    path = cache_path(key)
    try:
        state = _file_state(path)
    except FileNotFoundError:
        return recorded_cube(key, layout)
    seen = _OPENED.get(path)
    if seen is not None and _vouches(seen[0], key, state):
        return _serve(seen[1])
    try:
        verified = _is_verified(path, key)
        cube = open_cube(
            path,
            layout,
            on_corrupt=partial(_quarantine_read, inode=state["inode"]),
            verified=verified,
        )
        problem = _identity_problem(cube.attrs, key)
        if problem:
            cube.close()
            raise CubeError(f"cube file {path} {problem}")
    except CubeError as exc:
        where = quarantine(path, state["inode"])
        log.warning("mechwidgets: %s; %s, extracting again", exc, _moved(where))
        return None
    stamp = _stamp(key, state)
    if not verified:
        with suppress(OSError):  # a read-only folder keeps no stamp
            _stamp_path(path).write_text(json.dumps(stamp))
    _OPENED.pop(path, None)
    _OPENED[path] = (stamp, cube)
    while len(_OPENED) > OPENED_MAX:
        _OPENED.pop(next(iter(_OPENED)))
    return _serve(cube)


def _serve(cube: xr.Dataset) -> xr.Dataset:
    """A shallow copy of a kept cube whose ``close()`` closes its file (xarray reopens it
    when the kept cube is read again)."""
    served = cube.copy(deep=False)
    served.set_close(cube.close)  # copy() drops the closer
    return served


def _stamp(key: str, state: dict[str, int]) -> dict[str, Any]:
    """What vouches for a verified cube: its key and file state, and when it was seen."""
    return {"key": key, **state, "stamped_ns": time.time_ns()}


def _vouches(stamp: Any, key: str, state: dict[str, int]) -> bool:
    """Whether ``stamp`` vouches for the file of ``key`` in ``state``: same key, inode,
    size and modification time, and a time older than the stamp by ``RACY_NS``."""
    if not isinstance(stamp, dict) or stamp.get("key") != key:
        return False
    same = all(stamp.get(k) == v for k, v in state.items())
    stamped = stamp.get("stamped_ns")
    return same and isinstance(stamped, int) and stamped - state["mtime_ns"] >= RACY_NS


def _is_verified(path: Path, key: str) -> bool:
    """Whether the stamp beside ``path`` vouches for the file as it is now."""
    try:
        return _vouches(json.loads(_stamp_path(path).read_text()), key, _file_state(path))
    except (OSError, ValueError):
        return False


def _file_state(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"inode": stat.st_ino, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _stamp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}{VERIFIED}")


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
        _stamp_path(path).unlink(missing_ok=True)
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


@contextmanager
def cube_writer(
    target: str | Path,
    layout: CubeLayout,
    per_sample: dict[str, Any],
    attrs: dict[str, Any],
    batch_rows: int,
) -> Iterator[CubeWriter | StoreWriter]:
    """The writer of a cube at ``target``, as a ``with`` block yielding it.

    A Zarr store (a ``.zarr`` path or a URL) is written in place, batch by batch, and
    recorded in the cache's store index (``mechinterp cache list`` shows it); a call that
    finds it partly written computes only its uncommitted batches. A netCDF file is
    written under a temporary name and renamed into place on success (:func:`writing`).
    """
    if is_zarr(target):
        from mechwidgets.extract.store import StoreWriter

        with StoreWriter(target, layout, per_sample, attrs, batch_rows) as out:
            record_store(str(target), attrs.get("cache_key", ""), attrs.get("model", "?"), layout)
            yield out
        return
    with writing(Path(target)) as tmp, CubeWriter(tmp, layout, per_sample, attrs) as out:
        yield out


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
    ``stale`` (a temporary file whose writer died), or for a Zarr cube recorded in the
    store index, ``zarr`` (every batch committed), ``zarr k/n`` (k of n batches committed:
    running, or its writer died; the same extract finishes it) or ``unreachable`` (gone,
    or its object store cannot be read now); its ``path`` is then the store's path or URL.
    ``age`` is seconds since last written (since recorded, for a Zarr cube).
    """

    key: str
    model: str
    shape: str
    size: int
    path: Path | str
    status: str = "cube"
    age: float = 0.0


def record_store(url: str, key: str, model: str, layout: CubeLayout) -> None:
    """Add a Zarr cube to the store index (a line appended; listing keeps the last per URL).

    The URL is recorded without credentials (:func:`~mechwidgets.extract.store.redact`);
    a local path is recorded absolute. A read-only cache folder records nothing.
    """
    from mechwidgets.extract.store import redact

    where = redact(url) if "://" in url else str(Path(url).expanduser().absolute())
    shape = next(iter(layout.shapes().values()), ())
    line: dict[str, str | float] = {
        "key": key,
        "url": where,
        "model": model,
        "shape": "x".join(map(str, shape)),
    }
    line["recorded"] = time.time()
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        with open(cache_dir() / STORES, "a") as f:  # one short append: atomic
            f.write(json.dumps(line) + "\n")
    except OSError:
        pass  # the index is a convenience; the store itself is complete without it


def recorded_stores() -> dict[str, dict[str, Any]]:
    """URL -> the last record of each Zarr cube in the store index."""
    try:
        lines = (cache_dir() / STORES).read_text().splitlines()
    except OSError:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for line in lines:
        with suppress(json.JSONDecodeError, KeyError, TypeError):
            record = json.loads(line)
            out[record["url"]] = record
    return out


def recorded_cube(key: str, layout: CubeLayout) -> xr.Dataset | None:
    """A finished Zarr cube of ``key`` from the store index (the latest that opens and
    passes its checks), or None: a cube extracted to a store once is reused by a later
    ``extract`` of the same request, local or remote, with no forward pass."""
    for url, record in reversed(recorded_stores().items()):
        if record.get("key") != key:
            continue
        try:
            cube = open_cube(url, layout)
        except (CubeError, OSError) as exc:  # unfinished, removed, changed or unreachable
            log.info("mechwidgets: recorded store not used: %s", exc)
            continue
        if _identity_problem(cube.attrs, key) is None:
            return cube
        cube.close()
    return None


def _store_entry(record: dict[str, Any]) -> CacheEntry:
    """A recorded Zarr cube, with its batches committed and its size looked up now."""
    from mechwidgets.extract.store import committed

    url, size = record["url"], 0
    try:
        done = committed(url)
        fs, root = fsspec.core.url_to_fs(url)
        size = int(fs.du(root))
        status = "zarr" if done.all() else f"zarr {int(done.sum())}/{len(done)}"
    except Exception:  # noqa: BLE001 - a removed store or an unreachable server alike
        status = "unreachable"
    age = time.time() - float(record.get("recorded", time.time()))
    return CacheEntry(
        record["key"], record.get("model", "?"), record.get("shape", "?"), size, url, status, age
    )


def list_cache() -> list[CacheEntry]:
    """Every cube, quarantined cube and temporary file in the cache folder, then every
    Zarr cube in the store index (looked up where it lives)."""
    folder = cache_dir()
    if not folder.is_dir():
        return []
    entries = [_entry(p, "cube") for p in sorted(folder.glob(f"*{SUFFIX}"))]
    entries += [_entry(p, "quarantined") for p in sorted((folder / QUARANTINE).glob("*"))]
    for path in sorted(folder.glob(f"*{SUFFIX}{TEMP}*")):
        key = path.name.split(".")[0]
        entries.append(_entry(path, "in progress" if locks.is_held(_lock_path(key)) else "stale"))
    entries += [_store_entry(record) for record in recorded_stores().values()]
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
    """Delete every cube, quarantined cube, stale temporary file, model card and chart
    image; keep the files of extractions in progress (their key's lock is held), so
    they finish. The store index
    is emptied, but Zarr cubes written elsewhere are left where they are.

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
        for sub in (QUARANTINE, CARDS, CHARTS):
            if (folder / sub).is_dir():
                removed += sum(1 for _ in (folder / sub).iterdir())
                shutil.rmtree(folder / sub)
        (folder / STORES).unlink(missing_ok=True)
    except OSError as exc:
        raise CacheError(
            f"cannot remove files from cache folder {folder} ({exc.strerror}); "
            "check its permissions"
        ) from None
    return Cleared(removed, kept)
