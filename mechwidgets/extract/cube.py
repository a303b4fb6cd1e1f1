"""The activation cube: an ``xarray.Dataset`` streamed to netCDF and opened lazily.

Contract (what every action may rely on):

- ``act``: float32, dims ``(sample, layer, component, dim)``; ``layer`` holds block
  indices and -1 for the embedding output (the residual stream entering block 0, where
  only ``resid`` has values and the other components are NaN), ``component`` holds
  ``resid`` (block output), ``attn`` and ``mlp`` (the sublayers' writes into the residual
  stream) and ``head.H`` (head H's write, projected through its slice of the output
  projection), all of width ``d_model``.
- ``neurons`` (optional): float32, dims ``(sample, layer, neuron)``, MLP activations after
  the nonlinearity; the ``neuron`` coordinate holds the neuron indices.
- coordinates along ``sample``: ``sample_id``, ``text``, ``split`` and one per label;
  ``position`` and ``token``, the token each sample was read at (index among the tokens
  the tokenizer gives, special tokens included, and its string; absent for a mean over
  tokens); ``wordtype_<label>`` and ``group`` (the independent unit) when the task has them.
- ``attrs``: strings and numbers only (netCDF has no dicts, bools or None); structured
  values are JSON strings. ``complete`` is 1 only once every sample has been written.

The same cube can live in a Zarr v3 store (:mod:`mechwidgets.extract.store`), which
:func:`open_cube` opens too; ``checksum_rows``, a storage detail, is dropped on open.

:class:`CubeWriter` writes batch by batch into a file, so memory is bounded by a batch,
and records a checksum per block: a crc32 of ``checksum_rows`` rows of one layer (and
component) of each variable. :func:`open_cube` opens a finished file lazily (dask chunks
along ``sample``) and checks those checksums: a cube of up to ``VERIFY_ON_OPEN_BYTES`` in
full when it is opened, a larger one block by block as its blocks are read, so a 10 GB
cube is never re-read just to be opened.

>>> layout = CubeLayout(n_samples=2, layers=(0, 1), components=("resid",), d_model=4)
>>> with CubeWriter(path, layout, {"text": np.array(["a", "b"])}, {"model": "m"}) as w:
...     w.write(0, np.zeros((2, 2, 1, 4), np.float32))
>>> open_cube(path, layout)["act"].sel(layer=1, component="resid")
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from types import TracebackType
from typing import Any

import netCDF4
import numpy as np
import xarray as xr

from mechwidgets.core.errors import CubeError

FORMAT_VERSION = 2
ACT = "act"
NEURONS = "neurons"
#: each data variable's dims; its checksums have one per block x the middle dims
DIMS = {ACT: ("sample", "layer", "component", "dim"), NEURONS: ("sample", "layer", "neuron")}
#: the netCDF variable holding a data variable's block checksums (dropped on open)
CHECKSUMS = {name: f"{name}_crc32" for name in DIMS}
BLOCK = "crc_block"
#: attrs that describe how a file stores the cube, dropped on open (the same cube in netCDF
#: and in Zarr has checksum blocks of different sizes)
STORAGE_ATTRS = ("checksum_rows",)
#: the per-sample variable naming each sample's independent unit (``Task.groups``)
GROUP = "group"
#: names a label may not take: they are the cube's own variables and coordinates
RESERVED = frozenset(
    {*DIMS, *CHECKSUMS.values(), BLOCK, "sample", "sample_id", "text", "split"}
    | {d for dims in DIMS.values() for d in dims}
    | {"position", "token", GROUP}
)
#: target bytes per dask chunk when a cube is opened, and per checksummed row block
CHUNK_BYTES = 64 * 2**20
#: cubes up to this many data bytes are checksummed whole on open; larger ones per block
#: when read. On a 418 MB cube (bench/cube_checksums.py, 2 shared cores), opening took
#: 0.54-0.88 s with the check (0.71-1.04 s out of the page cache) against 0.03-0.04 s
#: without; per block as read, a full read took 3.3-7.6 s instead of 0.6-1.3 s (strided
#: reads), while one layer x component took 0.10-0.18 s.
VERIFY_ON_OPEN_BYTES = 2**30

#: called as ``on_corrupt(path, message)`` when a block fails its checksum while read
OnCorrupt = Callable[[Path, str], None]


@dataclass(frozen=True)
class CubeLayout:
    """The shape of a cube: what a finished file must hold.

    Parameters
    ----------
    n_samples : rows along ``sample``.
    layers : block indices along ``layer``.
    components : names along ``component``; empty means no ``act`` variable.
    d_model : width of ``dim``.
    neurons : neuron indices along ``neuron``; None means no ``neurons`` variable.
    """

    n_samples: int
    layers: tuple[int, ...]
    components: tuple[str, ...]
    d_model: int
    neurons: tuple[int, ...] | None = None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Variable name -> shape, for the variables this layout has."""
        out: dict[str, tuple[int, ...]] = {}
        if self.components:
            out[ACT] = (self.n_samples, len(self.layers), len(self.components), self.d_model)
        if self.neurons is not None:
            out[NEURONS] = (self.n_samples, len(self.layers), len(self.neurons))
        return out

    @property
    def block_rows(self) -> int:
        """Samples per checksummed block (and per dask chunk): about ``CHUNK_BYTES``."""
        return rows_per_block(self.shapes().values(), self.n_samples)


def rows_per_block(shapes: Any, n_samples: int) -> int:
    width = max(1, sum(4 * int(np.prod(shape[1:])) for shape in shapes))
    return max(1, min(n_samples, CHUNK_BYTES // width))


def encode_attr(value: Any) -> str | int | float:
    """A netCDF-safe attribute: numbers and strings pass, the rest becomes JSON."""
    if isinstance(value, np.generic):  # as read back from a file
        value = value.item()
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return value
    return json.dumps(value, sort_keys=True)


class CubeWriter:
    """Stream batches of activations, in sample order, into a new netCDF4 file.

    The file gets the per-sample coordinates and ``attrs`` on creation, uncompressed
    float32 variables sized for every sample, and, only on a clean exit from the ``with``
    block after every sample was written, the block checksums and the ``complete`` marker.

    Parameters
    ----------
    path : the file to create (the caller renames it into place when done).
    layout : the cube's shape.
    per_sample : coordinate name -> array with one value per sample.
    attrs : dataset attributes; values are encoded with :func:`encode_attr`.
    """

    def __init__(
        self,
        path: Path,
        layout: CubeLayout,
        per_sample: dict[str, np.ndarray],
        attrs: dict[str, Any],
    ) -> None:
        # Written through netCDF4 rather than xarray's to_netcdf: that held several full
        # copies of every string column (about 1 KB per text, 20 MB at 20,000 texts), while
        # column by column in chunks the memory stays bounded by a chunk.
        self._file = f = netCDF4.Dataset(path, "w")
        self._layout = layout
        self._rows = layout.block_rows
        self._next = 0
        f.setncatts({**header(attrs), "complete": 0, "checksum_rows": self._rows})
        n_blocks = -(-layout.n_samples // self._rows)
        sizes = {"sample": layout.n_samples, "layer": len(layout.layers), BLOCK: n_blocks}
        index: dict[str, tuple[Any, ...]] = {"layer": layout.layers}
        if layout.components:
            sizes |= {"component": len(layout.components), "dim": layout.d_model}
            index["component"] = layout.components
        if layout.neurons is not None:
            sizes["neuron"] = len(layout.neurons)
            index["neuron"] = layout.neurons
        for dim, size in sizes.items():
            f.createDimension(dim, size)
        for name, coordinate in index.items():
            _write_column(f, name, name, coordinate)
        for name, column in per_sample.items():
            _write_column(f, name, "sample", column)
        self._vars = {}
        self._crcs: dict[str, np.ndarray] = {}
        for name, shape in layout.shapes().items():
            var = f.createVariable(name, "f4", DIMS[name], contiguous=True, fill_value=False)
            var.setncattr("coordinates", " ".join(per_sample))  # xarray reads these as coords
            self._vars[name] = var
            self._crcs[name] = np.zeros((n_blocks, *shape[1:-1]), np.uint32)

    def batches(self, rows: int) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of each batch of ``rows`` samples still to write, in order."""
        for start in range(self._next, self._layout.n_samples, rows):
            yield start, min(start + rows, self._layout.n_samples)

    def write(self, start: int, act: np.ndarray | None, neurons: np.ndarray | None = None) -> None:
        """Write rows ``start : start + len(batch)`` of each variable, the next rows in order."""
        if start != self._next:
            raise ValueError(f"CubeWriter writes rows in order: expected row {self._next}")
        for name, values in ((ACT, act), (NEURONS, neurons)):
            if name not in self._vars:
                continue
            if values is None:
                raise ValueError(f"this cube has '{name}': pass its rows")
            values = np.ascontiguousarray(values, dtype=np.float32)
            self._vars[name][start : start + len(values)] = values
            self._checksum(name, start, values)
            self._next = start + len(values)

    def _checksum(self, name: str, start: int, values: np.ndarray) -> None:
        """Continue the running crc32 of each block the rows fall in."""
        stop, rows = start + len(values), self._rows
        for block in range(start // rows, -(-stop // rows)):
            lo, hi = max(start, block * rows), min(stop, (block + 1) * rows)
            part = values[lo - start : hi - start]
            self._crcs[name][block] = block_crcs(part, self._crcs[name][block])

    def __enter__(self) -> CubeWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                if self._next != self._layout.n_samples:
                    raise ValueError(
                        f"CubeWriter got {self._next} of {self._layout.n_samples} rows; "
                        "the cube stays unfinished"
                    )
                for name, crcs in self._crcs.items():
                    var = self._file.createVariable(
                        CHECKSUMS[name], "u4", (BLOCK, *DIMS[name][1:-1])
                    )
                    var[:] = crcs
                self._file.setncattr("complete", 1)
        finally:
            self._file.close()


def header(attrs: dict[str, Any]) -> dict[str, Any]:
    """A cube's attributes as its file stores them (without the storage-only ones)."""
    return {**{k: encode_attr(v) for k, v in attrs.items()}, "format_version": FORMAT_VERSION}


def memory_cube(
    layout: CubeLayout,
    per_sample: dict[str, np.ndarray],
    attrs: dict[str, Any],
    values: dict[str, np.ndarray],
    name: str,
    source: str | Path | None = None,
) -> xr.Dataset:
    """The finished cube of ``values`` (variable name -> all its rows) built in memory:
    what :func:`open_cube` gives for a file :class:`CubeWriter` wrote from the same
    arguments, dask-backed in chunks of ``layout.block_rows`` samples, without reading
    the file (opening a small cube through xarray costs 6-8 ms of CPU).

    ``name`` must be unique to the values (say the cache key and a nonce): dask names
    the chunks by it instead of hashing the data. ``source`` is the file holding the same
    cube, if any (``encoding["source"]``).
    """
    import dask.array as da  # here: importing mechwidgets need not import dask

    grid = _grid(layout.layers, layout.components, layout.neurons)
    per_sample_coords = {k: ("sample", np.asarray(v)) for k, v in per_sample.items()}
    coords = xr.Coordinates({**grid.variables, **per_sample_coords}, indexes=dict(grid.xindexes))
    data = {}
    for var, shape in layout.shapes().items():
        rows = np.ascontiguousarray(values[var], dtype=np.float32)
        if rows.shape != shape:
            raise ValueError(f"'{var}' has shape {rows.shape}, the layout says {shape}")
        chunks = (layout.block_rows, *shape[1:])
        data[var] = (DIMS[var], da.from_array(rows, chunks=chunks, name=f"{var}-{name}"))
    cube = xr.Dataset(data, coords=coords, attrs={**header(attrs), "complete": 1})
    if source is not None:
        cube.encoding["source"] = str(source)
    return cube


@lru_cache(maxsize=64)
def _grid(
    layers: tuple[int, ...], components: tuple[str, ...], neurons: tuple[int, ...] | None
) -> xr.Coordinates:
    """The indexed ``layer``, ``component`` and ``neuron`` coordinates of a cube, built
    once per grid: making their pandas indexes again took 0.2 of the 0.75 ms of CPU that
    building a 16-sample cube cost. Shared between cubes safely: xarray's index
    variables are read-only."""
    coords: dict[str, Any] = {"layer": np.asarray(layers, dtype=np.int64)}
    if components:
        coords["component"] = np.asarray(components)
    if neurons is not None:
        coords["neuron"] = np.asarray(neurons, dtype=np.int64)
    return xr.Coordinates(coords)


def block_crcs(rows: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """crc32 of each middle-dims slab of ``rows`` (say each layer x component), continued
    from ``start`` (zeros when None); crc32 because zlib's runs at 4 GB/s here, faster
    than reading the data."""
    out = np.zeros(rows.shape[1:-1], np.uint32) if start is None else start.copy()
    for index in np.ndindex(out.shape):
        slab = np.ascontiguousarray(rows[(slice(None), *index)])
        out[index] = zlib.crc32(slab.data, int(out[index]))
    return out


def _write_column(f: netCDF4.Dataset, name: str, dim: str, values: Any, chunk: int = 4096) -> None:
    """One 1-d variable, written ``chunk`` values at a time, encoded the way xarray decodes."""
    values = np.asarray(values)
    if values.dtype == bool:  # netCDF has no bool: int8 plus xarray's dtype attribute
        var = f.createVariable(name, "i1", (dim,))
        var.setncattr("dtype", "bool")
    elif values.dtype.kind in "iuf":
        var = f.createVariable(name, values.dtype, (dim,))
    else:  # strings (unicode or object) as variable-length strings
        var = f.createVariable(name, str, (dim,))
    for start in range(0, len(values), chunk):
        part = values[start : start + chunk]
        var[start : start + len(part)] = part.astype(object if var.dtype is str else var.dtype)


def open_cube(
    path: str | Path,
    layout: CubeLayout | None = None,
    on_corrupt: OnCorrupt | None = None,
    verified: bool = False,
) -> xr.Dataset:
    """Open a finished cube lazily, checking it is complete, intact and of ``layout``'s shape.

    Parameters
    ----------
    path : the cube file, or a Zarr cube (a ``.zarr`` path or any fsspec URL, opened by
        :func:`mechwidgets.extract.store.open_store`).
    layout : the shape it must have; None checks only the cube contract.
    on_corrupt : called before the CubeError when a block of a cube too large to verify on
        open fails its checksum as it is read (the cache moves such a file aside).
    verified : the caller vouches that the file's blocks match their checksums (it wrote
        them, or checked this very file before: see ``mechwidgets.extract.cache``), so a
        cube of up to ``VERIFY_ON_OPEN_BYTES`` is not read whole again; larger cubes are
        still checked block by block as read.

    Raises
    ------
    CubeError
        When the file cannot be read, was never finished, is of another format version,
        has another shape, or its data differ from what was written: one line saying which.
    """
    if is_zarr(path):
        from mechwidgets.extract.store import open_store

        return open_store(path, layout, verified)
    path = Path(path)
    try:
        ds = xr.open_dataset(path, engine="netcdf4")
    except Exception as exc:  # HDF5 reports truncation and garbage as many error types
        raise CubeError(f"cube file {path} is unreadable ({type(exc).__name__})") from None
    try:
        problem = _problem(ds, layout)
        names = [v for v in DIMS if v in ds.data_vars]
        crcs = {} if problem else {v: ds[CHECKSUMS[v]].values for v in names}
        rows = rows_per_block([ds[v].shape for v in names], ds.sizes.get("sample", 1))
        if not problem and int(ds.attrs.get("checksum_rows", -1)) != rows:
            problem = f"has checksum blocks of {ds.attrs.get('checksum_rows')} rows, not {rows}"
        size = sum(ds[v].nbytes for v in names)
        if not problem and size <= VERIFY_ON_OPEN_BYTES and not verified:
            problem = _verify_file(path, crcs, rows)
    except BaseException:
        ds.close()
        raise
    if problem:
        ds.close()
        raise CubeError(f"cube file {path} {problem}")
    ds_data = ds.drop_vars([CHECKSUMS[v] for v in crcs])
    ds_data.attrs = {k: v for k, v in ds.attrs.items() if k not in STORAGE_ATTRS}
    # dask names chunks by a token; by default it pickles every lazily indexed variable to
    # make one (a third of opening a small cube). The file's identity names the data as well.
    stat = path.stat()
    token = f"{path.resolve()}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"
    if size <= VERIFY_ON_OPEN_BYTES:
        cube = ds_data.chunk({"sample": rows}, token=token)
    else:  # one dask chunk per checksummed block, checked as it is read
        per_block = {"sample": rows, "layer": 1, "component": 1, "dim": -1, "neuron": -1}
        cube = ds_data.chunk({d: n for d, n in per_block.items() if d in ds_data.dims}, token=token)
        for name, expected in crcs.items():
            check = partial(
                checked_blocks, expected=expected, rows=rows, chunk_rows=rows,
                where=(path, name, on_corrupt),
            )  # fmt: skip
            data = cube[name].data.map_blocks(check, dtype=np.float32, meta=np.array((), "f4"))
            cube[name] = cube[name].copy(data=data)
    cube.set_close(ds.close)  # chunk() drops the file handle's closer; keep cube.close() working
    return cube


def is_zarr(target: str | Path) -> bool:
    """Whether ``target`` names a Zarr cube: a URL (``scheme://``) or a ``.zarr`` path."""
    text = str(target)
    return "://" in text or text.rstrip("/").endswith(".zarr")


def _verify_file(path: Path, crcs: dict[str, np.ndarray], rows: int) -> str | None:
    """Read every block of the file and compare its checksums; the first mismatch, or None."""
    with netCDF4.Dataset(path) as f:
        for name, expected in crcs.items():
            var = f.variables[name]
            var.set_auto_maskandscale(False)
            for block in range(len(expected)):
                found = block_crcs(var[block * rows : (block + 1) * rows])
                if not np.array_equal(found, expected[block]):
                    return mismatch(name, block, rows)
    return None


def checked_blocks(
    block: np.ndarray,
    expected: np.ndarray,
    rows: int,
    chunk_rows: int,
    where: tuple[Any, str, OnCorrupt | None],
    block_id: tuple[int, ...] = (),
) -> np.ndarray:
    """``block`` (a dask chunk of ``chunk_rows`` samples, a multiple of ``rows``) itself once
    each of its checksummed blocks of ``rows`` samples matches; a one-line CubeError otherwise."""
    source, name, on_corrupt = where
    first = block_id[0] * chunk_rows // rows
    # this chunk's part of the middle dims: chunks there are 1 wide or span the dim
    ids, sizes = block_id[1:-1], block.shape[1:-1]
    middle = tuple(slice(i * n, i * n + n) for i, n in zip(ids, sizes, strict=True))
    for k in range(0, len(block), rows):
        at: tuple[Any, ...] = (first + k // rows, *middle)
        want = expected[at]
        if not np.array_equal(block_crcs(block[k : k + rows]), want):
            label = f"cube file {source}" if isinstance(source, Path) else f"store {source}"
            message = f"{label} {mismatch(name, first + k // rows, rows)}"
            if on_corrupt is not None:
                on_corrupt(source, message)
            raise CubeError(message)
    return block


def mismatch(name: str, block: int, rows: int) -> str:
    """How a block that fails its checksum is reported."""
    return (
        f"fails its checksum ('{name}', samples from {block * rows}): its data changed "
        "after it was written"
    )


def _problem(ds: xr.Dataset, layout: CubeLayout | None) -> str | None:
    """What is wrong with an opened cube file's header, or None."""
    if ds.attrs.get("complete") != 1:
        return "was not finished (no completion marker)"
    return check_header(ds, layout)


def check_header(ds: xr.Dataset, layout: CubeLayout | None) -> str | None:
    """What is wrong with a stored cube's format, contract, checksums or shape, or None."""
    if ds.attrs.get("format_version") != FORMAT_VERSION:
        return f"has format version {ds.attrs.get('format_version')}, not {FORMAT_VERSION}"
    problem = _contract_problem(ds)
    if problem:
        return problem
    for name in DIMS:
        if name in ds.data_vars and CHECKSUMS[name] not in ds:
            return f"has no checksums for '{name}'"
    if layout is None:
        return None
    for name, shape in layout.shapes().items():
        if name not in ds or tuple(ds[name].shape) != shape:
            found = tuple(ds[name].shape) if name in ds else "missing"
            return f"has {name} of shape {found}, expected {shape}"
    return None


def check_cube(ds: Any, need: str | None = None) -> None:
    """Raise a one-line CubeError when ``ds`` breaks the cube contract.

    The one check of the contract (the probes' reader, polysemantic and the cube files'
    readers call it): an ``xarray.Dataset`` holding ``act`` and/or ``neurons`` over the
    dimensions :data:`DIMS` names, in any order (every reader selects by name), and
    ``need``, the variable the caller reads, among them.
    """
    if not isinstance(ds, xr.Dataset):
        raise CubeError(f"expected an xarray.Dataset cube, got {type(ds).__name__}")
    if need is not None and need not in ds.data_vars:
        dims = ", ".join(DIMS[need])
        how = "mw.extract(model, task, neurons=True)" if need == NEURONS else "mw.extract"
        raise CubeError(f"cube has no '{need}' variable with dims ({dims}); build it with {how}")
    problem = _contract_problem(ds)
    if problem:
        raise CubeError(f"not an activation cube: it {problem}; build one with mechwidgets.extract")


def activations_index(cube: xr.Dataset, variable: str = ACT) -> dict[str, Any]:
    """Where a result's numbers came from, JSON-ready: the cube's file (None in memory),
    the variable read, the sizes, each variable's dims and shape, the layer and component
    coordinates and the cube's attributes (JSON-encoded ones decoded). A result's
    ``activations`` and its bundle's ``activations_index.json`` hold this record."""
    source = cube.encoding.get("source")
    return {
        "file": str(source) if source else None,
        "variable": variable,
        "sizes": {str(k): int(v) for k, v in cube.sizes.items()},
        "variables": {
            str(name): {"dims": list(var.dims), "shape": list(var.shape)}
            for name, var in cube.data_vars.items()
        },
        "coords": {d: cube[d].values.tolist() for d in ("layer", "component") if d in cube.coords},
        "attrs": {str(k): _decoded(v) for k, v in cube.attrs.items()},
    }


def _decoded(value: Any) -> Any:
    """An attribute as recorded: a number or string as Python's own, a JSON-encoded
    structure (:func:`encode_attr`) as that structure."""
    if isinstance(value, np.generic):  # as read back from a file
        return value.item()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def check_finite(x: np.ndarray, where: str) -> np.ndarray:
    """``x``, unless it holds NaN or inf values: then a one-line CubeError naming ``where``
    (e.g. ``"activations at layer 3, component 'mlp'"``) and what to do."""
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise CubeError(
            f"{where} hold {bad} NaN/inf values; re-extract (e.g. in float32) or drop those samples"
        )
    return x


def _contract_problem(ds: xr.Dataset) -> str | None:
    present = [v for v in DIMS if v in ds.data_vars]
    if not present:
        return f"has neither '{ACT}' nor '{NEURONS}'"
    for name in present:
        if set(ds[name].dims) != set(DIMS[name]):
            return f"has {name} with dims {ds[name].dims}, expected {DIMS[name]}"
    return None
