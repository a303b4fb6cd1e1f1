"""dask.distributed: probing slices on workers of a LocalCluster (2 processes, 1 thread
each, loopback only) gives exactly the single-process numbers, and extraction sharded
over the workers writes exactly the single-process Zarr cube."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import mechwidgets as mw
from mechwidgets.cluster import save_cube
from mechwidgets.core.errors import CubeError, ModelError, SpecError
from mechwidgets.probes.synthetic import planted_cube

distributed = pytest.importorskip("distributed")

SMALL = {"seeds": 2, "permutations": 20, "resamples": 100}


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def memory_cube():
    """5 layers x 3 components; 'number' planted at (2, resid), 'tense' at (3, mlp)."""
    plants = {"number": {(2, "resid"): 2.5}, "tense": {(3, "mlp"): 2.5}}
    return planted_cube(plants, n_samples=300, seed=1)


@pytest.fixture(scope="module", params=["cube.nc", "cube.zarr"])
def cube_file(request, memory_cube, tmp_path_factory):
    path = tmp_path_factory.mktemp("cubes") / request.param
    return mw.open_cube(save_cube(memory_cube, path, batch_rows=64))


def _slice_tasks(client) -> int:
    """Slice tasks the workers have run so far (each asks its cached cube once per task)."""
    info = client.run(
        lambda: __import__("mechwidgets.cluster", fromlist=["_"])._worker_cube.cache_info()
    )
    return sum(i.hits + i.misses for i in info.values())


def _same(a, b) -> None:
    xr.testing.assert_identical(a.data, b.data)
    pd.testing.assert_frame_equal(a.table, b.table)


def test_detect_on_workers_equals_single_process(client, cube_file):
    local = mw.detect(cube_file, "number", **SMALL)
    before = _slice_tasks(client)
    remote = mw.detect(cube_file, "number", client=client, **SMALL)
    assert _slice_tasks(client) - before == 15  # every slice was a task on a worker
    _same(local, remote)
    best = remote.summary()["best"]
    assert (best["layer"], best["component"]) == (2, "resid")


def test_compare_and_collapse_on_workers_equal_single_process(client, cube_file):
    for action, labels in ((mw.collapse, "number"), (mw.compare, ["number", "tense"])):
        local = action(cube_file, labels, **SMALL)
        _same(local, action(cube_file, labels, client=client, **SMALL))


def test_in_memory_cube_is_a_one_line_error(client, memory_cube):
    with pytest.raises(CubeError, match="in memory.*save_cube"):
        mw.detect(memory_cube, "number", client=client, **SMALL)


def test_a_sample_selection_is_refused_not_misread(client, cube_file):
    part = cube_file.isel(sample=np.arange(200))
    with pytest.raises(CubeError):
        mw.detect(part, "number", client=client, **SMALL)


def test_client_must_be_a_dask_client(cube_file):
    with pytest.raises(SpecError, match="dask.distributed.Client"):
        mw.detect(cube_file, "number", client="tcp://127.0.0.1:8786", **SMALL)


@pytest.fixture(scope="module")
def toy():
    return mw.load_model("toy-grammar"), mw.get_task("subject_number", n=80)


def test_extract_on_workers_writes_the_single_process_cube(client, toy, tmp_path):
    model, task = toy
    with mw.extract(model, task, store=tmp_path / "one.zarr", batch_size=16) as one:
        local = one.load()
    with mw.extract(model, task, store=tmp_path / "two.zarr", batch_size=16, client=client) as two:
        sharded = two.load()
    np.testing.assert_array_equal(local["act"].values, sharded["act"].values)
    xr.testing.assert_identical(local.drop_vars("act"), sharded.drop_vars("act"))
    # each worker loaded the model once and wrote batches (five of 16 rows here)
    loaded = client.run(
        lambda: __import__("mechwidgets.cluster", fromlist=["_"])._worker_model.cache_info()
    )
    assert sum(info.misses for info in loaded.values()) <= 2
    assert sum(info.hits + info.misses for info in loaded.values()) == 5


def test_extract_client_needs_a_store_and_a_named_model(client, toy, tmp_path):
    model, task = toy
    with pytest.raises(SpecError, match="store="):
        mw.extract(model, task, client=client)
    built = mw.load_model(model.hf, tokenizer=model.tokenizer)
    with pytest.raises(ModelError, match="by its name"):
        mw.extract(built, task, store=tmp_path / "x.zarr", client=client)


def test_runspec_compute_probes_on_the_scheduler_workers(client, tmp_path, monkeypatch):
    from mechwidgets.runner import run_spec

    monkeypatch.setenv("MECHWIDGETS_CACHE", str(tmp_path / "cache"))
    spec = {
        "dataset": {"name": "subject_number", "n": 120},
        "extraction": {"model_name": "toy-grammar", "selectors": ["resid:all"]},
        "action": {"name": "detect", "params": {"label": "subject_number", **SMALL}},
        "controls": ["label_shuffle"],
    }
    local = run_spec(spec)
    before = _slice_tasks(client)
    remote = run_spec({**spec, "compute": {"scheduler": client.scheduler.address}})
    assert _slice_tasks(client) - before == 4  # the toy model's 4 residual layers
    _same(local, remote)
