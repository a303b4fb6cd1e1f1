"""The activation cube: an ``xarray.Dataset`` streamed to netCDF and opened lazily.

Contract (what every action may rely on):

- ``act``: float32, dims ``(sample, layer, component, dim)``; ``layer`` holds block
  indices, ``component`` holds ``resid`` (block output), ``attn`` and ``mlp`` (the
  sublayers' writes into the residual stream) and ``head.H`` (head H's write, projected
  through its slice of the output projection), all of width ``d_model``.
- ``neurons`` (optional): float32, dims ``(sample, layer, neuron)``, MLP activations after
  the nonlinearity; the ``neuron`` coordinate holds the neuron indices.
- coordinates along ``sample``: ``sample_id``, ``text``, ``split`` and one per label.
- ``attrs``: strings and numbers only (netCDF has no dicts, bools or None); structured
  values are JSON strings. ``complete`` is 1 only once every sample has been written.

:class:`CubeWriter` writes batch by batch into a file, so memory is bounded by a batch;
:func:`open_cube` opens a finished file lazily (dask chunks along ``sample``).

>>> layout = CubeLayout(n_samples=2, layers=(0, 1), components=("resid",), d_model=4)
>>> with CubeWriter(path, layout, {"text": np.array(["a", "b"])}, {"model": "m"}) as w:
...     w.write(0, np.zeros((2, 2, 1, 4), np.float32))
>>> open_cube(path, layout)["act"].sel(layer=1, component="resid")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import netCDF4
import numpy as np
import xarray as xr

from mechwidgets.core.errors import CubeError

FORMAT_VERSION = 1
ACT = "act"
NEURONS = "neurons"
#: names a label may not take: they are the cube's own variables and coordinates
RESERVED = frozenset(
    {ACT, NEURONS, "sample", "sample_id", "text", "split", "layer", "component", "dim", "neuron"}
)
#: target bytes per dask chunk when a cube is opened
CHUNK_BYTES = 64 * 2**20


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


def encode_attr(value: Any) -> str | int | float:
    """A netCDF-safe attribute: numbers and strings pass, the rest becomes JSON."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return value
    return json.dumps(value, sort_keys=True)


class CubeWriter:
    """Stream batches of activations into a new netCDF4 file.

    The file gets the per-sample coordinates and ``attrs`` on creation, uncompressed
    float32 variables sized for every sample, and the ``complete`` marker only on a
    clean exit from the ``with`` block.

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
        header = {**{k: encode_attr(v) for k, v in attrs.items()}, "complete": 0}
        f.setncatts({**header, "format_version": FORMAT_VERSION})
        sizes = {"sample": layout.n_samples, "layer": len(layout.layers)}
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
        dims = {
            ACT: ("sample", "layer", "component", "dim"),
            NEURONS: ("sample", "layer", "neuron"),
        }
        self._vars = {}
        for name in layout.shapes():
            var = f.createVariable(name, "f4", dims[name], contiguous=True, fill_value=False)
            var.setncattr("coordinates", " ".join(per_sample))  # xarray reads these as coords
            self._vars[name] = var

    def write(self, start: int, act: np.ndarray | None, neurons: np.ndarray | None = None) -> None:
        """Write rows ``start : start + len(batch)`` of each variable."""
        for name, values in ((ACT, act), (NEURONS, neurons)):
            if name in self._vars and values is not None:
                self._vars[name][start : start + len(values)] = values

    def __enter__(self) -> CubeWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._file.setncattr("complete", 1)
        self._file.close()


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


def open_cube(path: str | Path, layout: CubeLayout | None = None) -> xr.Dataset:
    """Open a finished cube lazily, checking it is complete (and has ``layout``'s shape).

    Raises
    ------
    CubeError
        When the file cannot be read, was never finished, is of another format version,
        or has another shape: one line saying which.
    """
    path = Path(path)
    try:
        ds = xr.open_dataset(path, engine="netcdf4")
    except Exception as exc:  # HDF5 reports truncation and garbage as many error types
        raise CubeError(f"cube file {path} is unreadable ({type(exc).__name__})") from None
    problem = _problem(ds, layout)
    if problem:
        ds.close()
        raise CubeError(f"cube file {path} {problem}")
    width = max(
        1, sum(4 * int(np.prod(ds[v].shape[1:])) for v in (ACT, NEURONS) if v in ds.data_vars)
    )
    rows = max(1, min(ds.sizes["sample"], CHUNK_BYTES // width))
    cube = ds.chunk({"sample": rows})
    cube.set_close(ds.close)  # chunk() drops the file handle's closer; keep cube.close() working
    return cube


def _problem(ds: xr.Dataset, layout: CubeLayout | None) -> str | None:
    """What is wrong with an opened cube file, or None."""
    if ds.attrs.get("complete") != 1:
        return "was not finished (no completion marker)"
    if ds.attrs.get("format_version") != FORMAT_VERSION:
        return f"has format version {ds.attrs.get('format_version')}, not {FORMAT_VERSION}"
    if layout is None:
        return _contract_problem(ds)
    for name, shape in layout.shapes().items():
        if name not in ds or tuple(ds[name].shape) != shape:
            found = tuple(ds[name].shape) if name in ds else "missing"
            return f"has {name} of shape {found}, expected {shape}"
    return None


def check_cube(ds: xr.Dataset) -> None:
    """Raise a one-line CubeError when ``ds`` breaks the cube contract; actions call it first."""
    problem = _contract_problem(ds)
    if problem:
        raise CubeError(f"not an activation cube: it {problem}; build one with mechwidgets.extract")


def _contract_problem(ds: xr.Dataset) -> str | None:
    expected = {
        ACT: ("sample", "layer", "component", "dim"),
        NEURONS: ("sample", "layer", "neuron"),
    }
    present = [v for v in expected if v in ds.data_vars]
    if not present:
        return f"has neither '{ACT}' nor '{NEURONS}'"
    for name in present:
        if ds[name].dims != expected[name]:
            return f"has {name} with dims {ds[name].dims}, expected {expected[name]}"
    return None
