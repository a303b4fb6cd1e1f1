"""Zarr v3 cubes on a local path or any fsspec URL, filled batch by batch by any process.

A Zarr cube holds the netCDF cube's variables, coordinates and attrs (the contract in
:mod:`mechwidgets.extract.cube`) as a Zarr v3 group, one shard (one object) per batch
along ``sample``, with inner chunks of one layer x component so a probe reading one slice
fetches only that slice's bytes. Beside the data, per batch: its block checksums
(``act_crc32``, ``neurons_crc32``, one block per batch) and its ``committed`` flag.

Writing is in two steps. :func:`init_store` writes the template: every array's metadata
and the per-sample coordinates, known before any forward pass, but no activation.
:func:`write_batch` then writes one batch as an independent region (the region xarray's
``to_zarr(region=...)`` writes, through zarr's arrays): its rows and checksums, then its
``committed`` flag. Any process
may write any batch: no two batches share an object, and each object is written whole
(zarr's LocalStore writes a temporary file and renames it; an object-store PUT is atomic),
so a ``kill -9`` leaves at most one batch written but not committed, which is computed
again. :func:`open_store` serves a cube only once every batch is committed and its data
match their checksums. Nothing is rewritten after the template, so no writer ever waits
on another, and completion is read from the flags (the opened cube's ``complete`` is 1).

Credentials come only from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL_S3`` for an S3-compatible server, or the
fsspec backend's own variables); nothing here takes or records them, and a URL is
recorded with any ``user:password@`` removed (:func:`redact`).

>>> init_store("s3://bucket/cube.zarr", layout, per_sample, attrs, batch_rows=32)
>>> write_batch("s3://bucket/cube.zarr", 0, act, None)  # from any process, in any order
>>> open_store("s3://bucket/cube.zarr", layout)["act"].sel(layer=1, component="resid")
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import dask.array as da
import fsspec
import numpy as np
import xarray as xr
import zarr

from mechwidgets.core import locks
from mechwidgets.core.errors import CubeError
from mechwidgets.extract.cube import (
    ACT,
    BLOCK,
    CHECKSUMS,
    DIMS,
    FORMAT_VERSION,
    NEURONS,
    STORAGE_ATTRS,
    VERIFY_ON_OPEN_BYTES,
    CubeLayout,
    block_crcs,
    check_header,
    checked_blocks,
    encode_attr,
    is_zarr,
    open_cube,
    rows_per_block,
)

SUFFIX = ".zarr"
COMMITTED = "committed"


def redact(url: str | Path) -> str:
    """``url`` without any ``user:password@`` part: what may be recorded or logged."""
    return re.sub(r"(?<=://)[^/@]*@", "", str(url))


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _location(url: str | Path) -> str:
    """The store's address for zarr: a plain path for local stores, else the URL."""
    if importlib.util.find_spec("zarr") is None:
        raise CubeError("Zarr cubes need zarr>=3: pip install 'mechwidgets[store]'")
    text = str(url)
    return str(Path(text.removeprefix("file://")).expanduser()) if _is_local(text) else text


def _open_group(url: str) -> xr.Dataset | None:
    """The store's template, opened lazily, or None when no complete template is there."""
    fs, root = fsspec.core.url_to_fs(_location(url))
    if not fs.exists(f"{root}/{COMMITTED}/zarr.json"):  # one request, where opening takes many
        return None
    try:
        ds = xr.open_zarr(_location(url), consolidated=False, chunks=None, decode_cf=True)
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return None
    if COMMITTED not in ds:  # the template's last array: without it, its writer died
        ds.close()
        return None
    return ds


def _blocks(n_samples: int, rows: int) -> int:
    return -(-n_samples // rows)


def init_store(
    url: str | Path,
    layout: CubeLayout,
    per_sample: dict[str, np.ndarray],
    attrs: dict[str, Any],
    batch_rows: int,
) -> int:
    """Create the store's template unless it is there already; its batch size.

    Idempotent: a store already holding the template of the same request (same
    ``cache_key`` attr and layout) is kept with every batch it has committed, and its own
    batch size is returned (a resumed store keeps the batch size it was started with). A
    local store is created under a lock beside it, so two processes starting together
    create it once; on an object store, create it from one process (the first call, or a
    scheduler before it hands out batches).

    Raises
    ------
    CubeError
        When the location holds anything else (another request's cube, other files).
    """
    url = str(url)
    with _init_lock(url):
        existing = _open_group(url)
        if existing is not None:
            with existing:
                _check_same(url, existing, layout, attrs.get("cache_key"))
                return int(existing.attrs["checksum_rows"])
        _check_free(url, attrs.get("cache_key"))
        _write_template(url, layout, per_sample, attrs, batch_rows)
    return batch_rows


@contextlib.contextmanager
def _init_lock(url: str) -> Iterator[None]:
    if not _is_local(url):
        yield
        return
    path = Path(_location(url))
    path.parent.mkdir(parents=True, exist_ok=True)
    with locks.hold(path.with_name(f".{path.name}.lock")):
        yield


def _check_same(url: str, ds: xr.Dataset, layout: CubeLayout, key: str | None) -> None:
    stored = ds.attrs.get("cache_key")
    if stored != key:
        raise CubeError(
            f"store {redact(url)} holds the cube of another request (key {stored!r}, not "
            f"{key!r}); choose another store path, or delete it"
        )
    problem = check_header(ds, layout)
    if problem:
        raise CubeError(f"store {redact(url)} {problem}; delete it and extract again")


def _check_free(url: str, key: str | None) -> None:
    """Refuse a location holding anything but a template left unfinished by ``key``'s writer."""
    fs, root = fsspec.core.url_to_fs(_location(url))
    if not fs.exists(root):
        return
    if fs.isfile(root):
        raise CubeError(f"{redact(url)} is a file; give a new path ending in {SUFFIX}")
    try:
        ds = xr.open_zarr(_location(url), consolidated=False, chunks=None)
        stored = ds.attrs.get("cache_key")
        ds.close()
    except Exception:  # noqa: BLE001 - anything unreadable is not ours to overwrite
        stored = None
    if fs.ls(root) and stored != key:
        raise CubeError(
            f"{redact(url)} exists and is not an unfinished cube of this request; "
            "choose a new store path"
        )


def _write_template(
    url: str,
    layout: CubeLayout,
    per_sample: dict[str, np.ndarray],
    attrs: dict[str, Any],
    rows: int,
) -> None:
    """Metadata of every array, the per-sample coordinates; ``committed`` last."""
    n_blocks = _blocks(layout.n_samples, rows)
    data: dict[str, Any] = {}
    encoding: dict[str, dict[str, Any]] = {}
    for name, shape in layout.shapes().items():
        dims, inner = DIMS[name], (rows, *([1] * (len(shape) - 2)), shape[-1])
        data[name] = (dims, da.empty(shape, dtype=np.float32, chunks=(rows, *shape[1:])))
        encoding[name] = {"chunks": inner, "shards": (rows, *shape[1:]), "compressors": None}
        crc_shape = (n_blocks, *shape[1:-1])
        crc_dims = (BLOCK, *dims[1:-1])
        data[CHECKSUMS[name]] = (crc_dims, da.empty(crc_shape, np.uint32, chunks=(1, *shape[1:-1])))
        encoding[CHECKSUMS[name]] = {"chunks": (1, *shape[1:-1])}
    coords: dict[str, Any] = {"layer": list(layout.layers)}
    if layout.components:
        coords["component"] = list(layout.components)
    if layout.neurons is not None:
        coords["neuron"] = list(layout.neurons)
    coords |= {k: ("sample", _column(v)) for k, v in per_sample.items()}
    header = {k: encode_attr(v) for k, v in attrs.items()}
    template = xr.Dataset(
        data,
        coords=coords,
        attrs={**header, "format_version": FORMAT_VERSION, "checksum_rows": rows},
    )
    for var in template.data_vars:
        encoding[str(var)]["_FillValue"] = None
    flags = xr.Dataset(
        {COMMITTED: (BLOCK, da.zeros(n_blocks, dtype=np.int8, chunks=1))}, attrs=template.attrs
    )  # mode "a" sets the group's attrs to these
    with _quiet():
        template.to_zarr(
            _location(url), mode="w", compute=False, consolidated=False, zarr_format=3,
            encoding=encoding,
        )  # fmt: skip
        flags.to_zarr(
            _location(url), mode="a", compute=False, consolidated=False,
            encoding={COMMITTED: {"chunks": (1,), "_FillValue": None}},
        )  # fmt: skip


def _column(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    return values.astype(object) if values.dtype.kind in "UT" else values


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Zarr warns that variable-length strings have no Zarr v3 spec yet; the text column
    needs them, and zarr-python and xarray read them back."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        warnings.filterwarnings("ignore", message=".*not part of the Zarr format 3.*")
        yield


def _group(url: str | Path, mode: Literal["r", "r+"] = "r") -> zarr.Group:
    with _quiet():
        return zarr.open_group(_location(url), mode=mode, zarr_format=3)


def _array(group: zarr.Group, name: str) -> zarr.Array:
    """``group[name]``, which a cube store holds as an array (a one-line CubeError if not)."""
    found = group[name]
    if not isinstance(found, zarr.Array):
        raise CubeError(f"'{name}' in the store is a group, not an array: it is not a cube")
    return found


def committed(url: str | Path) -> np.ndarray:
    """The ``committed`` flag of every batch (1: written and checksummed)."""
    return np.asarray(_array(_group(url), COMMITTED)[:], dtype=bool)


def write_batch(
    url: str | Path,
    start: int,
    act: np.ndarray | None,
    neurons: np.ndarray | None = None,
    arrays: dict[str, zarr.Array] | None = None,
) -> None:
    """Write the batch of rows from ``start`` (a multiple of the store's batch size) and
    its checksums as one region, then commit it. Safe from any process, in any order.

    Written through zarr's arrays: the same region write as xarray's
    ``to_zarr(region=...)`` (the template fixed every encoding), without reopening and
    re-validating the whole dataset per batch, which cost 10 requests a batch on S3.
    ``arrays``: the store's arrays opened for writing, to reuse across batches.
    """
    arrays = writable_arrays(url) if arrays is None else arrays
    rows = int(arrays[ACT if ACT in arrays else NEURONS].chunks[0])  # a batch along sample
    if start % rows:
        raise ValueError(f"batches start at multiples of {rows}, not {start}")
    block = start // rows
    for name, values in ((ACT, act), (NEURONS, neurons)):
        if name not in arrays:
            continue
        if values is None:
            raise ValueError(f"this cube has '{name}': pass its rows")
        values = np.ascontiguousarray(values, dtype=np.float32)
        arrays[name][start : start + len(values)] = values
        arrays[CHECKSUMS[name]][block] = block_crcs(values)
    _commit(arrays, block)  # after the rows and checksums, so a commit implies both


def writable_arrays(url: str | Path) -> dict[str, zarr.Array]:
    """The store's arrays a batch writes, opened for writing: pass them to
    :func:`write_batch` (``arrays=``) to write several batches without reopening them."""
    return _arrays(_group(url, "r+"))


def _arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    """The arrays a batch writes, opened once (each lookup reads their metadata)."""
    names = [n for n in (ACT, NEURONS) if n in group]
    return {n: _array(group, n) for n in (*names, *(CHECKSUMS[n] for n in names), COMMITTED)}


def _commit(arrays: dict[str, zarr.Array], block: int) -> None:
    arrays[COMMITTED][block] = 1


class StoreWriter:
    """The batches of a Zarr cube still to compute, claimed one at a time; the same
    ``with``-block protocol as :class:`~mechwidgets.extract.cube.CubeWriter`.

    On a local store each batch is claimed with a lock, so two processes running the same
    call split the batches between them; a batch another live process holds is waited for
    at the end and computed here only if that process died first. On an object store every
    uncommitted batch is computed (two writers write the same bytes twice, harmlessly).
    """

    def __init__(
        self,
        url: str | Path,
        layout: CubeLayout,
        per_sample: dict[str, np.ndarray],
        attrs: dict[str, Any],
        batch_rows: int,
    ) -> None:
        self.url = str(url)
        self.rows = init_store(self.url, layout, per_sample, attrs, batch_rows)
        self._arrays = _arrays(_group(self.url, "r+"))
        self._n = layout.n_samples
        local = _is_local(self.url)
        path = Path(_location(self.url))
        self._locks = path.with_name(f".{path.name}.locks") if local else None

    def batches(self, rows: int | None = None) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of every batch not yet committed, claimed as it is yielded;
        batches are the store's own (``rows`` is ignored: a store keeps its batch size)."""
        done = committed(self.url)
        later = []
        for block in map(int, np.flatnonzero(~done)):
            with self._claim(block, wait=False) as free:
                if not free:
                    later.append(block)
                elif self._locks is None or not self._done(block):  # just finished elsewhere?
                    yield self._span(block)
        for block in later:  # held by another process: wait for it, redo only if it died
            with self._claim(block, wait=True):
                if not self._done(block):
                    yield self._span(block)

    def _done(self, block: int) -> bool:
        return bool(self._arrays[COMMITTED][block])

    def _span(self, block: int) -> tuple[int, int]:
        return block * self.rows, min(self._n, (block + 1) * self.rows)

    @contextlib.contextmanager
    def _claim(self, block: int, wait: bool) -> Iterator[bool]:
        if self._locks is None:
            yield True
            return
        self._locks.mkdir(parents=True, exist_ok=True)
        with locks.hold(self._locks / f"{block}.lock", wait=wait) as free:
            yield free

    def write(self, start: int, act: np.ndarray | None, neurons: np.ndarray | None = None) -> None:
        """Write and commit the batch starting at ``start``."""
        write_batch(self.url, start, act, neurons, self._arrays)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._locks is not None:
            with contextlib.suppress(OSError):
                self._locks.rmdir()  # empty once no writer holds a batch


def open_store(
    url: str | Path, layout: CubeLayout | None = None, verified: bool = False
) -> xr.Dataset:
    """Open a Zarr cube lazily once every batch is committed and intact.

    Parameters
    ----------
    url : a local path or fsspec URL of a store :func:`init_store` created.
    layout : the shape it must have; None checks only the cube contract.
    verified : as in :func:`mechwidgets.extract.cube.open_cube`: a store of up to
        ``VERIFY_ON_OPEN_BYTES`` is not read whole again (a dask worker opening the cube
        its client opened); larger stores are still checked block by block as read.

    Raises
    ------
    CubeError
        When the store is missing or unreadable, has batches not yet committed (run the
        same extract again to finish them), has another shape, or data that differ from
        their checksums: one line saying which.
    """
    url = str(url)
    with _quiet():
        try:
            ds = xr.open_zarr(_location(url), consolidated=False, chunks=None)
        except (FileNotFoundError, KeyError, ValueError, OSError) as exc:
            raise CubeError(f"store {redact(url)} is not a readable Zarr cube ({exc})") from None
    if COMMITTED not in ds:
        ds.close()
        raise CubeError(f"store {redact(url)} was not finished (its template is incomplete)")
    flags = ds[COMMITTED].values.astype(bool)
    problem = None
    if not flags.all():
        problem = (
            f"has {int(flags.sum())} of {len(flags)} batches committed; run the same "
            "extract again to finish it"
        )
    problem = problem or check_header(ds, layout)
    if problem:
        ds.close()
        raise CubeError(f"store {redact(url)} {problem}")
    rows = int(ds.attrs["checksum_rows"])
    names = [v for v in DIMS if v in ds.data_vars]
    crcs = {v: ds[CHECKSUMS[v]].values for v in names}
    data = ds.drop_vars([*(CHECKSUMS[v] for v in names), COMMITTED])
    data = data.assign_coords({c: data[c].astype(object) for c in _string_coords(data)})
    # dask chunks of whole batches, about as large as the netCDF cube's checksummed blocks
    span = rows * max(1, rows_per_block([ds[v].shape for v in names], ds.sizes["sample"]) // rows)
    small = sum(ds[v].nbytes for v in names) <= VERIFY_ON_OPEN_BYTES
    per_block = {"sample": span, "layer": 1, "component": 1, "dim": -1, "neuron": -1}
    # checked whole now in chunks of whole shards (sequential reads), or lazily per slice
    checked = data.chunk(
        {"sample": span} if small else {d: n for d, n in per_block.items() if d in data.dims}
    )
    where = redact(url)
    for name, expected in crcs.items():
        check = partial(
            checked_blocks, expected=expected, rows=rows, chunk_rows=span, where=(where, name, None)
        )
        blocks = checked[name].data.map_blocks(check, dtype=np.float32, meta=np.array((), "f4"))
        checked[name] = checked[name].copy(data=blocks)
    if small and not verified:
        try:  # small enough to check whole now (as a netCDF cube is); then served unchecked
            for name in names:  # a shard at a time: memory stays one shard, not the cube
                for block in checked[name].data.blocks.ravel():
                    block.compute(scheduler="synchronous")
        except BaseException:
            ds.close()
            raise
    # a small cube is served unchecked (checked above, or vouched for); a large one is
    # checked block by block as read
    cube = data.chunk({"sample": span}) if small else checked
    cube.attrs = {k: v for k, v in cube.attrs.items() if k not in STORAGE_ATTRS} | {"complete": 1}
    cube.encoding["source"] = where
    cube.set_close(ds.close)
    return cube


def _string_coords(ds: xr.Dataset) -> list[str]:
    """Coordinates zarr reads as numpy's StringDType; netCDF cubes hold them as objects."""
    return [str(c) for c in ds.coords if ds[c].dtype.kind == "T"]


def convert_cube(src: str | Path, dst: str | Path, batch_rows: int | None = None) -> str | Path:
    """Copy a finished cube into the other format (or the same one elsewhere): netCDF
    (``.nc``) to Zarr (``.zarr`` or a URL) or back, verified as read, bounded by a batch.

    Parameters
    ----------
    src : a cube file or store, as :func:`~mechwidgets.extract.cube.open_cube` opens.
    dst : the new cube: a Zarr store (resumable: run again after an interruption) or a
        netCDF file (written under a temporary name, renamed into place).
    batch_rows : samples per Zarr chunk; by default the source store's batch, or for a
        netCDF source its checksummed block (about 64 MB).

    Returns
    -------
    ``dst``. The copy opens with the same variables, coordinates and attrs.

    Raises
    ------
    CubeError
        When ``src`` is not a finished, intact cube, or ``dst`` is an existing netCDF
        file or a store of another cube.
    """
    from mechwidgets.extract.cache import cube_writer  # the cache imports this module

    source = open_cube(src)
    try:
        if not is_zarr(dst) and Path(dst).expanduser().exists():
            raise CubeError(f"{dst} exists; give a new file path (or remove it)")
        layout = CubeLayout(
            source.sizes["sample"],
            tuple(int(x) for x in source["layer"].values),
            tuple(str(c) for c in source["component"].values) if ACT in source else (),
            source.sizes.get("dim", 0),
            tuple(int(x) for x in source["neuron"].values) if NEURONS in source else None,
        )
        per_sample = {  # in native byte order (Zarr stores little-endian; netCDF4 warns)
            str(c): _native(source[c].values)
            for c in source.coords
            if source[c].dims == ("sample",)
        }
        attrs = {k: v for k, v in source.attrs.items() if k not in ("complete", "format_version")}
        rows = batch_rows or source.chunks["sample"][0]
        target = dst if is_zarr(dst) else Path(dst).expanduser()
        with cube_writer(target, layout, per_sample, attrs, rows) as out:
            for start, stop in out.batches(rows):
                part = source.isel(sample=slice(start, stop))
                out.write(start, *(part[v].values if v in part else None for v in (ACT, NEURONS)))
    finally:
        source.close()
    return dst


def _native(values: np.ndarray) -> np.ndarray:
    return values.astype(values.dtype.newbyteorder("=")) if values.dtype.kind in "iuf" else values
