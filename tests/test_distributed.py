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
        dashboard_address="127.0.0.1:0",
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


def _tasks_per_worker(client) -> dict[str, int]:
    """Per worker, the units of work (slices or seed blocks) it has run so far: each asks
    the worker's cached cube once."""
    info = client.run(
        lambda: __import__("mechwidgets.cluster", fromlist=["_"])._worker_cube.cache_info()
    )
    return {w: i.hits + i.misses for w, i in info.items()}


def _slice_tasks(client) -> int:
    """Units of work the workers have run so far, all together."""
    return sum(_tasks_per_worker(client).values())


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


@pytest.mark.parametrize(
    ("action", "labels", "components"),
    [(mw.detect, "number", ["resid"]), (mw.compare, ["number", "tense"], ["resid", "mlp"])],
    ids=["1 slice", "2 slices"],
)
def test_a_cube_of_few_slices_keeps_both_workers_busy(
    client, cube_file, action, labels, components
):
    """4 seeds on 2 worker threads: the one slice goes out as 2 seed blocks, one on each
    worker (unsplit, it would be one unit on one worker); 2 slices are not split (each
    worker has one already, and a block repeats its slice's factorisation). The numbers
    are identical to one process's either way."""
    kw = {**SMALL, "seeds": 4, "layers": [2], "components": components}
    local = action(cube_file, labels, **kw)
    before = _tasks_per_worker(client)
    remote = action(cube_file, labels, client=client, **kw)
    ran = {w: n - before[w] for w, n in _tasks_per_worker(client).items()}
    assert sorted(ran.values()) == [1, 1], ran
    _same(local, remote)
    assert remote.data["probed"].sum() == len(components)


def test_compare_and_collapse_on_workers_equal_single_process(client, cube_file):
    """Also CKA: collapse's 15 slices, then one CKA matrix per component, each a task on a
    worker, and the matrices identical to the single-process ones."""
    for action, labels, tasks in (
        (mw.collapse, "number", 15 + 3),
        (mw.compare, ["number", "tense"], 15),
    ):
        local = action(cube_file, labels, **SMALL)
        before = _slice_tasks(client)
        remote = action(cube_file, labels, client=client, **SMALL)
        assert _slice_tasks(client) - before == tasks
        _same(local, remote)
        if action is mw.collapse:
            assert np.isfinite(remote.data["cka"].values).sum() >= 5 * 5


GRAMMAR = ["subject_number", "animacy", "sentiment", "tense"]


def test_polysemantic_on_workers_equals_single_process(client, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHWIDGETS_CACHE", str(tmp_path / "cache"))
    model, task = mw.load_model("toy-grammar"), mw.get_task("grammar_all", n=240, seed=1)
    with mw.extract(model, task, components=["resid"], neurons=True,
                    store=tmp_path / "neurons.zarr") as cube:  # fmt: skip
        local = mw.polysemantic(cube, labels=GRAMMAR, permutations=40, seeds=2)
        before = _slice_tasks(client)
        remote = mw.polysemantic(cube, labels=GRAMMAR, permutations=40, seeds=2, client=client)
        assert _slice_tasks(client) - before == cube.sizes["layer"]  # a task per layer
    _same(local, remote)
    assert remote.data["loading"].notnull().any()


def test_a_notebook_shows_the_dashboard_link_once_and_dask_progress_bars(
    client, cube_file, monkeypatch, capsys
):
    import dask.distributed

    from mechwidgets import cluster

    bars = []
    real = dask.distributed.progress
    monkeypatch.setattr(
        dask.distributed, "progress", lambda fs, **kw: bars.append(fs) or real(fs, **kw)
    )
    monkeypatch.setattr(cluster, "_SHOWN", set())
    monkeypatch.setattr(cluster, "in_notebook", lambda: False)
    mw.detect(cube_file, "number", client=client, **SMALL)
    assert not bars and "dashboard" not in capsys.readouterr().out  # not outside a notebook
    monkeypatch.setattr(cluster, "in_notebook", lambda: True)
    for _ in range(2):
        mw.detect(cube_file, "number", client=client, **SMALL)
    out = capsys.readouterr().out
    assert out.count(f"dask dashboard: {client.dashboard_link}") == 1
    assert client.dashboard_link.startswith("http://127.0.0.1:")
    # one bar per call, over that call's tasks (2 workers x TASKS_PER_THREAD)
    assert [len(fs) for fs in bars] == [2 * cluster.TASKS_PER_THREAD] * 2


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
    # each worker loaded the model once; the five batches of 16 rows went out in one task
    # per TASKS_PER_THREAD per worker thread (4), each writing its batches
    loaded = client.run(
        lambda: __import__("mechwidgets.cluster", fromlist=["_"])._worker_model.cache_info()
    )
    assert sum(info.misses for info in loaded.values()) <= 2
    assert sum(info.hits + info.misses for info in loaded.values()) == 4


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


def _planted_store(path, n: int, layers: int, dim: int, rows: int) -> float:
    """A Zarr cube of ``n x layers x 3 x dim`` float32 written a batch at a time (never
    whole in memory): unit noise, 'number' planted at (2, resid). Returns its act bytes."""
    from mechwidgets.extract.cache import cube_writer
    from mechwidgets.extract.cube import CubeLayout

    small = planted_cube({"number": {0: 2.5}}, n_samples=n, dim=dim, n_layers=1,
                         components=("resid",), seed=3)  # fmt: skip
    layout = CubeLayout(n, tuple(range(layers)), ("resid", "attn", "mlp"), dim)
    per_sample = {k: np.asarray(v.values) for k, v in small.variables.items()
                  if v.dims == ("sample",)}  # fmt: skip
    rng = np.random.default_rng(4)
    with cube_writer(path, layout, per_sample, dict(small.attrs), rows) as out:
        for start, stop in out.batches(rows):
            act = rng.standard_normal((stop - start, layers, 3, dim), dtype=np.float32)
            act[:, 2, 0] = small["act"].values[start:stop, 0, 0]
            out.write(start, act)
    return 4.0 * n * layers * 3 * dim


def _peak_rss() -> int:
    """This process's peak resident memory in bytes since it started (Linux VmHWM; not
    getrusage, whose maximum a spawned worker inherits from its parent's fork)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM"))
    return int(line.split()[1]) * 1024


def test_a_cube_three_times_a_worker_memory_limit_is_probed_within_it(tmp_path, monkeypatch):
    """Workers read only the slices they probe, lazily from the store: the cube is over 3x
    each worker's memory_limit, every slice is probed on a worker, and no worker's peak
    resident memory (VmHWM) reaches its limit, nor does dask's nanny restart one."""
    import dask

    monkeypatch.setenv("MECHWIDGETS_CACHE", str(tmp_path / "cache"))
    limit = 512 * 2**20  # a worker peaks at 350-400 MiB (imports, one slice, its probe)
    nbytes = _planted_store(tmp_path / "big.zarr", n=8000, layers=66, dim=256, rows=1000)
    assert nbytes > 3 * limit
    cube = mw.open_cube(tmp_path / "big.zarr")
    # dask pauses a worker at 80% of its limit (close to this worker's peak): only the
    # nanny's restart at 95% stays on, and the peak below must stay under the limit itself
    memory = {f"distributed.worker.memory.{k}": False for k in ("pause", "spill", "target")}
    with dask.config.set(memory), distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, memory_limit=limit, host="127.0.0.1",
        dashboard_address=None,
    ) as cluster, distributed.Client(cluster) as c:  # fmt: skip
        pids = c.run(__import__("os").getpid)
        res = mw.detect(cube, "number", client=c, seeds=1, permutations=20, resamples=100,
                        controls=["label_shuffle"])  # fmt: skip
        peak = c.run(_peak_rss)
        assert c.run(__import__("os").getpid) == pids  # no worker was restarted
        assert _slice_tasks(c) == 66 * 3  # every slice was read on a worker
    assert max(peak.values()) < limit, {w: f"{p / 2**20:.0f} MiB" for w, p in peak.items()}
    best = res.summary()["best"]
    assert (best["layer"], best["component"]) == (2, "resid")


@pytest.fixture(scope="module")
def kinds_cube():
    """2 slices; a binary, a 3-class and a continuous label, each with word types."""
    plants = {name: {(0, "resid"): 1.5, (0, "mlp"): 0.5} for name in ("b", "m", "c")}
    return planted_cube(plants, n_samples=240, dim=12, n_layers=1, components=("resid", "mlp"),
                        classes={"m": 3, "c": 0}, seed=5)  # fmt: skip


@pytest.mark.parametrize(
    ("labels", "options"),
    [
        (["b", "m", "c"], {}),
        (["b"], {"metric": "auc"}),
        (["b", "m"], {"probe": "logistic", "strengths": (0.01, 1.0), "permutations": 4}),
    ],
    ids=["accuracy+r2", "auc", "logistic"],
)
def test_seed_blocks_give_bit_for_bit_the_numbers_of_one_block(
    kinds_cube, monkeypatch, labels, options
):
    """The sweep split into 2 and 3 seed blocks per slice (as on 4 or 6 worker threads,
    run here in-process) returns the identical raw output, for every metric, the
    logistic probe and all three controls; and the blocks were really probed apart."""
    from mechwidgets.probes import sweep as sw

    kw = {"permutations": 12, "resamples": 100, **options}
    protocol = sw.Protocol(
        controls=("label_shuffle", "random_subspace", "control_task"), seeds=(3, 4, 5), **kw
    )
    whole = sw.sweep(kinds_cube, labels, protocol)
    calls = []
    probe_at = sw.probe_at
    monkeypatch.setattr(sw, "probe_at", lambda *a: calls.append(a[3:5]) or probe_at(*a))
    for threads, blocks in ((4, [(0, 2), (2, 3)]), (6, [(0, 1), (1, 2), (2, 3)])):
        monkeypatch.setattr(sw, "worker_threads", lambda n=threads: n)
        calls.clear()
        xr.testing.assert_identical(sw.sweep(kinds_cube, labels, protocol), whole)
        assert sorted(calls) == sorted(blocks * 2)  # each slice's seeds, block by block
