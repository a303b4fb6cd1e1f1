"""dask.distributed for the cube: probing slices and extracting batches on workers.

Given a ``dask.distributed.Client``, ``detect`` / ``compare`` / ``collapse`` (``client=c``)
probe each (layer, component) slice on a worker (on fewer slices than worker threads,
each slice's seeds are split into blocks, each on a worker: one slice still spreads),
``polysemantic`` tests each layer's neurons on one and collapse's CKA is a task per
component; ``extract(model, task, store="x.zarr", client=c)`` computes the batches on
the workers and writes them into the Zarr cube. Workers open the cube file themselves
from its path, once per worker, without re-reading it (the client checked it), and read
only the slices their tasks ask for, so a cube larger than a worker's memory is probed
within it; they load a zoo model once per worker by its name. Only per-slice (or
per-block) numbers and the batches' regions of the store move, never the cube through
the scheduler. Each worker makes the probes' seeded draws from the same seeds as one
process would (polysemantic's are made here and sent), so results equal the
single-process ones exactly. In a notebook each call shows dask's progress bar, and the
first one the dashboard's link.

>>> from dask.distributed import Client, LocalCluster
>>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))
>>> res = mw.detect(mw.open_cube("cube.nc"), "number", client=client)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import dask.threaded
import numpy as np
import xarray as xr
from threadpoolctl import threadpool_limits

from mechwidgets.core.errors import CubeError, ModelError, SpecError
from mechwidgets.extract.cube import ACT, NEURONS, CubeLayout, is_zarr, open_cube

if TYPE_CHECKING:
    from mechwidgets.models.loading import Model

_CLIENT: ContextVar[Any] = ContextVar("mechwidgets_client", default=None)


def check_client(client: Any) -> None:
    """A one-line SpecError unless ``client`` is None or a ``dask.distributed.Client``."""
    if client is None:
        return
    try:
        from dask.distributed import Client
    except ImportError:
        raise SpecError(
            "client= needs dask.distributed: pip install 'mechwidgets[distributed]'"
        ) from None
    if not isinstance(client, Client):
        raise SpecError(
            f"client= takes a dask.distributed.Client, got {type(client).__name__}; "
            "e.g. Client(LocalCluster(n_workers=2)) or Client('tcp://scheduler:8786')"
        )


@contextlib.contextmanager
def using(client: Any) -> Iterator[None]:
    """Within the block, slices are probed on ``client``'s workers (None: in-process)."""
    check_client(client)
    token = _CLIENT.set(client)
    # a Client makes itself dask's default scheduler: the labels and splits this process
    # reads from the cube would each go through the cluster (a round trip per read)
    local = dask.config.set(scheduler="synchronous") if client is not None else None
    if (
        client is None
        and "distributed" not in sys.modules
        and not dask.config.get("scheduler", None)
    ):
        # no Client can exist, so dask's default for arrays (its threaded scheduler) is
        # given as the function: otherwise (or by name) each compute imports distributed
        # to look for a Client (0.2-0.4 s of CPU, once)
        local = dask.config.set(scheduler=dask.threaded.get)
    try:
        with local or contextlib.nullcontext():
            yield
    finally:
        _CLIENT.reset(token)


#: the clients whose dashboard link this process has shown (once each)
_SHOWN: set[str] = set()


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (where dask's progress bar is a widget)."""
    from distributed.utils import is_kernel

    return bool(is_kernel())


def dashboard(client: Any) -> str | None:
    """The link of ``client``'s scheduler dashboard; None when it serves none (no bokeh)."""
    if "dashboard" not in client.scheduler_info(n_workers=0).get("services", {}):
        return None
    return str(client.dashboard_link)


def show_progress(client: Any, futures: list) -> None:
    """In a notebook: the dashboard's link (the first time for each client) and dask's own
    progress bar for ``futures`` (a widget that updates as they finish, without blocking).
    Elsewhere nothing: a script's progress is its own business (``progress=`` of extract)."""
    if not in_notebook():
        return
    from dask.distributed import progress
    from IPython.display import display

    link = dashboard(client)
    if link and client.id not in _SHOWN:
        _SHOWN.add(client.id)
        print(f"dask dashboard: {link}")
    display(progress(futures, notebook=True))  # in a notebook, progress() returns the widget


def current() -> Any:
    """The client set by :func:`using`, or None."""
    return _CLIENT.get()


def cube_source(cube: xr.Dataset) -> tuple[str, tuple]:
    """Where workers open ``cube`` and what identifies its activations there.

    Raises
    ------
    CubeError
        For a cube held in memory (no file behind it) or whose activations were loaded.
    """
    source = cube.encoding.get("source")
    held = [name for name in (ACT, NEURONS) if name in cube]
    if not source or not held or not all(hasattr(cube[n].data, "dask") for n in held):
        raise CubeError(
            "client= probes a cube that workers open from its file; this one is in memory: "
            "write it with mechwidgets.cluster.save_cube(cube, 'cube.zarr') and open that"
        )
    source = str(source)
    ident: tuple = tuple(sorted(cube.sizes.items()))
    if not is_zarr(source):
        stat = Path(source).stat()
        ident += (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return source, ident


@lru_cache(maxsize=4)
def _worker_cube(source: str, ident: tuple) -> xr.Dataset:
    """The cube as a worker opens it, once per worker process (cached by identity).

    The client opened (and so checked) this cube before sending work: the worker does
    not read it whole again, only the slices its tasks ask for.
    """
    cube = open_cube(source, verified=True)
    if cube_source(cube)[1] != ident:
        raise CubeError(
            f"cube {source} differs from the cube given to client= (another file now, or "
            "a selection of samples); open the file and pass it whole"
        )
    return cube


#: glibc's mallopt parameters (see :func:`_heap_for_arrays`)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: the largest block glibc's own dynamic threshold would keep on the heap (64-bit)
_MMAP_MAX = 32 * 2**20


@lru_cache(maxsize=1)
def _heap_for_arrays() -> None:
    """Let this worker reuse freed memory for numpy's arrays, once per worker process.

    dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (so that freed memory
    goes back to the OS), and setting it turns off glibc's dynamic mmap threshold: every
    array over 128 KiB is then a fresh mmap, zero-filled page by page and unmapped when
    freed. A slice's probe allocates many such arrays: a worker spent 2.4x the CPU of one
    process on the default detect (bench/scale.py --large: 6.5 s against 2.6 s; 2.7 s
    with this). Blocks up to 1/64 of the worker's memory limit (at most 32 MiB, glibc's
    own ceiling) now come from the heap, which keeps at most that much free memory.
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return
    from distributed import get_worker

    try:
        libc = ctypes.CDLL("libc.so.6")
        limit = get_worker().memory_manager.memory_limit
    except (OSError, ValueError):  # not glibc (musl), or not on a worker
        return
    size = int(min(_MMAP_MAX, limit / 64)) if limit else _MMAP_MAX
    libc.mallopt(_M_MMAP_THRESHOLD, size)
    libc.mallopt(_M_TRIM_THRESHOLD, size)


def _on_worker(source: str, ident: tuple, fn: Callable, keys: list, *shared: Any) -> list:
    # one task per worker thread, each on one BLAS thread; the slice is read here, not
    # through the worker's own client (dask's default inside a task: 0.6 s more a slice)
    _heap_for_arrays()
    with threadpool_limits(1), dask.config.set(scheduler="synchronous"):
        return [(key, fn(_worker_cube(source, ident), *key, *shared)) for key in keys]


#: tasks per worker thread: a few, so a slow worker does not hold the sweep back, while
#: each task's round trip (about 0.2 s on the 2 busy cores of bench/scale.py) is paid by
#: several slices
TASKS_PER_THREAD = 2


def _threads(client: Any) -> int:
    """``client``'s worker threads (at least 1)."""
    return max(1, sum(client.nthreads().values()))


def _slots(client: Any) -> int:
    """Tasks a call is spread over: ``TASKS_PER_THREAD`` per worker thread."""
    return _threads(client) * TASKS_PER_THREAD


def worker_threads() -> int:
    """The current client's worker threads (:func:`using`); 1 in this process. A sweep
    on fewer slices splits each slice's seeds into blocks, one unit of work per thread."""
    client = current()
    return 1 if client is None else _threads(client)


def map_slices(
    cube: xr.Dataset, fn: Callable[..., Any], keys: Iterable[tuple], *shared: Any
) -> Iterator[tuple[tuple, Any]]:
    """``(key, fn(cube, *key, *shared))`` for every key, on the current client's workers.

    A key is a unit of work: a slice, or a slice and a block of its seeds (a sweep on
    fewer slices than :func:`worker_threads`). Without a client (:func:`using`) this is
    a loop in this process. With one, ``shared`` is sent to every worker once and the
    keys go out in ``TASKS_PER_THREAD`` tasks per worker thread (fewer for fewer keys),
    each over the worker's own opening of the cube's file; results arrive in completion
    order.
    """
    client = current()
    keys = list(keys)
    if client is None:
        for key in keys:
            yield key, fn(cube, *key, *shared)
        return
    from dask.distributed import as_completed

    source, ident = cube_source(cube)
    n_tasks = min(len(keys), _slots(client))
    shared_futures = client.scatter(list(shared), broadcast=True, hash=False)
    tasks = [
        client.submit(_on_worker, source, ident, fn, keys[i::n_tasks], *shared_futures, pure=False)
        for i in range(n_tasks)
    ]
    show_progress(client, tasks)
    try:
        for future in as_completed(tasks):
            yield from future.result()
    finally:
        client.cancel(tasks)


def save_cube(cube: xr.Dataset, target: str | Path, batch_rows: int = 256) -> str | Path:
    """Write an in-memory cube (``act``, per-sample variables, attrs) as a cube file
    (netCDF, or Zarr for a ``.zarr`` path / URL) that workers can open; returns ``target``."""
    from mechwidgets.extract.cache import cube_writer

    act = cube[ACT].transpose("sample", "layer", "component", "dim")
    layout = CubeLayout(
        n_samples=cube.sizes["sample"],
        layers=tuple(int(v) for v in cube["layer"].values),
        components=tuple(str(v) for v in cube["component"].values),
        d_model=cube.sizes["dim"],
    )
    per_sample = {
        str(k): np.asarray(v.values) for k, v in cube.variables.items() if v.dims == ("sample",)
    }
    with cube_writer(target, layout, per_sample, dict(cube.attrs), batch_rows) as out:
        for start, stop in out.batches(batch_rows):
            out.write(start, np.asarray(act[start:stop].values, np.float32))
    return target


def model_spec(model: Model) -> tuple[str, str | None, str, str]:
    """How a worker loads ``model``: name, revision, dtype and the weights' identity.

    Raises
    ------
    ModelError
        For a model built in memory or run remotely: workers load models by name.
    """
    if getattr(model, "source", None) is None or model.remote:
        raise ModelError(
            "client= extraction loads the model on each worker by its name; load it with "
            "mw.load_model('<zoo name, HF id or saved folder>'), or extract without client="
        )
    revision = model.revision if str(model.source).startswith("hf:") else None
    return model.name, revision, str(model.dtype).removeprefix("torch."), model.identity


@lru_cache(maxsize=2)
def _worker_model(spec: tuple[str, str | None, str, str]) -> Model:
    """The model as a worker loads it, once per worker process."""
    from mechwidgets.models.loading import load_model

    name, revision, dtype, identity = spec
    model = load_model(name, revision=revision, dtype=dtype)
    if model.identity != identity:
        raise ModelError(
            f"model '{name}' given to client= has edited weights that workers cannot load by "
            "name; save it (save_pretrained) and load that folder, or extract without client="
        )
    return model


def _write_on_worker(
    spec: tuple[str, str | None, str, str], url: str, spans: list[tuple[int, int]], job: tuple
) -> int:
    """Compute and commit each batch of ``spans`` with this worker's model; the store's
    arrays are opened once for all of them. Returns the number of batches written."""
    from mechwidgets.extract.extractor import compute_batch
    from mechwidgets.extract.store import writable_arrays, write_batch

    _heap_for_arrays()
    plan, texts, index, padding_side = job
    model, arrays = _worker_model(spec), writable_arrays(url)
    for start, stop in spans:
        part = None if index is None else index[start:stop]
        values = compute_batch(model, plan, texts[start:stop], part, padding_side)
        write_batch(url, start, *values, arrays=arrays)
    return len(spans)


def write_on_workers(
    client: Any,
    model: Model,
    url: str,
    spans: list[tuple[int, int]],
    job: tuple,
    progress: bool = False,
) -> None:
    """Compute and write each ``(start, stop)`` batch of a Zarr cube on the workers.

    ``job`` (plan, texts, per-text token index or None, padding side) goes to every
    worker once; the batches go out in ``TASKS_PER_THREAD`` tasks per worker thread (as
    slices do in :func:`map_slices`), each computing its batches with the worker's own
    copy of the model and writing and committing each batch's region of the store as it
    is done (so an interrupted task loses at most its batch in flight); only counts
    come back.
    """
    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    spec = model_spec(model)
    n_tasks = min(len(spans), _slots(client))
    [shared] = client.scatter([job], broadcast=True, hash=False)
    tasks = [
        client.submit(_write_on_worker, spec, url, spans[i::n_tasks], shared, pure=False)
        for i in range(n_tasks)
    ]
    if progress:
        show_progress(client, tasks)
    bar = tqdm(
        total=len(spans),
        desc="extract",
        unit="batch",
        disable=not progress or in_notebook(),  # a notebook shows dask's bar instead
    )
    try:
        for future in as_completed(tasks):
            bar.update(future.result())
    finally:
        bar.close()
        client.cancel(tasks)


def connect(scheduler: str) -> Any:
    """A client of the dask scheduler at ``scheduler`` (a RunSpec's ``compute``).

    Raises
    ------
    SpecError
        When dask.distributed is missing or no scheduler answers there within 10 s.
    """
    try:
        from dask.distributed import Client
    except ImportError:
        raise SpecError(
            "compute: needs dask.distributed: pip install 'mechwidgets[distributed]'"
        ) from None
    try:
        return Client(scheduler, timeout=10)
    except (OSError, TimeoutError, ValueError) as exc:
        raise SpecError(
            f"no dask scheduler answers at {scheduler!r} ({type(exc).__name__}); start one "
            "(dask scheduler) or fix compute.scheduler"
        ) from None
