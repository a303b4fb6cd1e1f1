"""The Zarr cube: the netCDF cube's twin, one shard per batch, resumable after kill -9,
filled by two processes at once, converted either way, listed by the cache.

Kills and concurrent writers run in real forked children (see test_faults.py for why
forked): a kill is a real SIGKILL at a chosen write.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import torch
import xarray as xr
import zarr

import mechwidgets as mw
from mechwidgets.actions.detect import detect
from mechwidgets.cli import main
from mechwidgets.core.errors import CubeError
from mechwidgets.data.catalog import get_task
from mechwidgets.extract import extractor
from mechwidgets.extract import store as store_mod
from mechwidgets.models.loading import load_model

FORK = multiprocessing.get_context("fork")
BATCH = 16
N = 80  # five batches (detect needs 10 samples per split)
SMALL = {"controls": ["label_shuffle"], "seeds": 1, "permutations": 20, "resamples": 100}


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-grammar"), get_task("subject_number", n=N)


@pytest.fixture(scope="module")
def reference(toy):
    """The netCDF cube of the same call, computed in one process, read into memory."""
    model, task = toy
    with mw.extract(model, task, batch_size=BATCH, cache=False) as cube:
        return cube.load()


@pytest.fixture(scope="module")
def stored(reference):
    """The netCDF file of ``reference`` as it opens (without the attrs extract adds), in memory."""
    with mw.open_cube(reference.encoding["source"]) as cube:
        return cube.load()


def in_child(target, *args, timeout: float = 60) -> FORK.Process:
    child = FORK.Process(target=_child, args=(target, *args))
    child.start()
    return child


def joined(child, timeout: float = 60) -> int:
    child.join(timeout)
    if child.is_alive():
        child.kill()
        pytest.fail("child hung")
    return child.exitcode


def _child(target, *args) -> None:
    torch.set_num_threads(1)  # the parent's thread pools do not survive a fork
    with dask.config.set(scheduler="synchronous"):
        target(*args)


def extract_and_report(
    model, task, store: Path, report: Path, slow: float = 0.0, meet=None
) -> None:
    """Extract into ``store``; record this process's forward passes. With ``meet`` (a
    barrier), the first batch this process claimed waits until the other process holds
    one too, so both take part however late either starts."""
    passes: list[int] = []
    if slow or meet is not None:
        run_batch = extractor.run_batch

        def paced(*args):
            if meet is not None and not passes:
                meet.wait(30)
            time.sleep(slow)
            return run_batch(*args)

        extractor.run_batch = paced
    model.module("block", 0).register_forward_pre_hook(lambda *_: passes.append(1))
    cube = mw.extract(model, task, batch_size=BATCH, store=store)
    report.write_text(json.dumps({"passes": len(passes), "act": cube["act"].values.tolist()}))


def test_zarr_cube_equals_the_netcdf_cube(toy, reference, cache, tmp_path):
    model, task = toy
    cube = mw.extract(model, task, batch_size=BATCH, store=tmp_path / "c.zarr")
    xr.testing.assert_identical(cube, reference)  # values, coords with dtypes, attrs
    assert cube.attrs["complete"] == 1 and "checksum_rows" not in cube.attrs
    group = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    assert group.metadata.zarr_format == 3
    act = group["act"]
    assert act.shards[0] == BATCH and act.chunks == (BATCH, 1, 1, act.shape[-1])
    assert len(list((tmp_path / "c.zarr" / "act" / "c").iterdir())) == N // BATCH  # a shard a batch


def test_detect_on_the_zarr_cube_gives_the_same_table(toy, reference, cache, tmp_path):
    model, task = toy
    cube = mw.extract(model, task, batch_size=BATCH, store=tmp_path / "c.zarr")
    on_zarr = detect(cube, label="subject_number", **SMALL).table
    on_netcdf = detect(reference, label="subject_number", **SMALL).table
    assert on_zarr.equals(on_netcdf)


def test_a_finished_store_is_reopened_without_a_forward_pass(toy, cache, tmp_path, count_calls):
    model, task = toy
    first = mw.extract(model, task, batch_size=BATCH, store=tmp_path / "c.zarr")
    calls = count_calls(model.module("block", 0))
    again = mw.extract(model, task, batch_size=BATCH, store=tmp_path / "c.zarr")
    assert calls == [] and np.array_equal(again["act"].values, first["act"].values)


def test_a_cached_extract_reuses_a_recorded_store(toy, cache, tmp_path, count_calls):
    model, task = toy
    store = mw.extract(model, task, batch_size=BATCH, store=tmp_path / "c.zarr")
    calls = count_calls(model.module("block", 0))
    cube = mw.extract(model, task, batch_size=BATCH)  # the cache folder has no file of it
    assert calls == [] and cube.encoding["source"] == str(tmp_path / "c.zarr")
    assert np.array_equal(cube["act"].values, store["act"].values)
    shutil.rmtree(tmp_path / "c.zarr")  # gone: the cache extracts again
    mw.extract(model, task, batch_size=BATCH)
    assert len(calls) == N // BATCH


def test_convert_both_ways_keeps_the_cube(toy, reference, stored, cache, tmp_path):
    source, original = Path(reference.encoding["source"]), stored
    zarr_copy = mw.convert_cube(source, tmp_path / "c.zarr", batch_rows=BATCH)
    back = mw.convert_cube(zarr_copy, tmp_path / "back.nc")
    xr.testing.assert_identical(mw.open_cube(zarr_copy), original)
    xr.testing.assert_identical(mw.open_cube(back), original)
    with pytest.raises(CubeError, match="exists"):
        mw.convert_cube(zarr_copy, back)


@pytest.mark.parametrize(
    ("dies_at", "committed"),
    [(("write_batch", 3), 2), (("_commit", 3), 2)],
    ids=["between-batches", "after-data-before-commit"],
)
def test_kill_9_mid_extraction_then_the_same_call_finishes(
    toy, reference, stored, cache, tmp_path, dies_at, committed
):
    model, task = toy
    target = tmp_path / "c.zarr"
    name, call = dies_at

    def dying():
        owner = store_mod
        original, calls = getattr(owner, name), []

        def die(*args, **kwargs):
            calls.append(1)
            if len(calls) >= call:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)

        setattr(owner, name, die)
        mw.extract(model, task, batch_size=BATCH, store=target)

    assert joined(in_child(dying)) == -signal.SIGKILL
    # the third batch's rows may be on disk, but it is not committed: nothing is served
    assert store_mod.committed(target).tolist() == [True] * committed + [False] * (5 - committed)
    with pytest.raises(CubeError, match=f"{committed} of 5 batches committed"):
        mw.open_cube(target)
    report = tmp_path / "report.json"
    assert joined(in_child(extract_and_report, model, task, target, report)) == 0
    run = json.loads(report.read_text())
    assert run["passes"] == N // BATCH - committed  # committed batches are not recomputed
    assert np.array_equal(np.array(run["act"], np.float32), reference["act"].values, equal_nan=True)
    xr.testing.assert_identical(mw.open_cube(target), stored)


def test_two_processes_fill_one_store_and_split_the_batches(
    toy, reference, stored, cache, tmp_path
):
    model, task = toy
    target = tmp_path / "c.zarr"
    reports = [tmp_path / "a.json", tmp_path / "b.json"]
    meet = FORK.Barrier(2)
    children = [in_child(extract_and_report, model, task, target, r, 0.05, meet) for r in reports]
    assert [joined(c) for c in children] == [0, 0]
    runs = [json.loads(r.read_text()) for r in reports]
    assert sum(r["passes"] for r in runs) == N // BATCH  # every batch computed exactly once
    assert all(r["passes"] > 0 for r in runs)  # both did work
    for run in runs:
        assert np.array_equal(np.array(run["act"], np.float32), reference["act"].values)
    xr.testing.assert_identical(mw.open_cube(target), stored)


def test_a_changed_committed_batch_fails_its_checksum(toy, cache, tmp_path):
    model, task = toy
    target = tmp_path / "c.zarr"
    mw.extract(model, task, batch_size=BATCH, store=target)
    shard = target / "act" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CubeError, match=r"fails its checksum \('act', samples from 16\)"):
        mw.open_cube(target)


def test_a_store_of_another_request_or_foreign_files_is_refused(toy, cache, tmp_path):
    model, task = toy
    target = tmp_path / "c.zarr"
    mw.extract(model, task, batch_size=BATCH, store=target)
    with pytest.raises(CubeError, match="holds the cube of another request"):
        mw.extract(model, task, batch_size=BATCH, store=target, layers=[0])
    mine = tmp_path / "mine.zarr"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(CubeError, match="not an unfinished cube of this request"):
        mw.extract(model, task, batch_size=BATCH, store=mine)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_cache_list_shows_stores_with_their_committed_batches(toy, cache, tmp_path, capsys):
    model, task = toy
    done, partial = tmp_path / "done.zarr", tmp_path / "partial.zarr"
    mw.extract(model, task, batch_size=BATCH, store=done)
    layout = extractor.plan_extraction(model).layout(N, model.d_model)
    with mw.extract.__globals__["cache_store"].cube_writer(
        partial, layout, {"sample_id": np.arange(N)}, {"cache_key": "k", "model": "m"}, BATCH
    ) as out:
        start, stop = next(out.batches())
        out.write(start, np.zeros((stop - start, *layout.shapes()["act"][1:]), np.float32))
    assert main(["cache", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(str(done) in line and " zarr " in line for line in lines)
    assert any(str(partial) in line and "zarr 1/5" in line for line in lines)
    assert main(["cache", "clear"]) == 0
    assert done.is_dir()  # clearing forgets the store, leaves its data
