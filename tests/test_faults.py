"""Faults a long run meets: kill -9 mid-extraction and mid-bundle, damaged and foreign cache
files, ``cache clear`` racing an extraction, read-only folders.

Each fault happens in a real child process, killed with a real SIGKILL at a chosen point.
Children are forked from the test process, so one starts in milliseconds with the toy model
already loaded (a fresh interpreter spends seconds importing torch); the kill points are
patched into the child only.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import dask
import numpy as np
import pytest
import torch

import mechwidgets as mw
from mechwidgets.cli import main
from mechwidgets.core.errors import MechError
from mechwidgets.data.catalog import get_task
from mechwidgets.extract import cache as cache_store
from mechwidgets.extract import extractor
from mechwidgets.extract.cube import CubeWriter
from mechwidgets.models.loading import load_model
from mechwidgets.report import bundle as bundle_mod
from mechwidgets.report.bundle import read_artifacts, write_bundle
from mechwidgets.runner import run_spec

FORK = multiprocessing.get_context("fork")
BATCH = 8
N = 40  # five batches
SPEC = {
    "run_name": "faults",
    "seed": 0,
    "dataset": {"name": "subject_number", "n": 60},
    "extraction": {"model_name": "toy-grammar", "selectors": ["resid:0-1"]},
    "action": {"name": "detect", "params": {"label": "subject_number"}},
    "controls": ["label_shuffle"],
}


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-grammar"), get_task("subject_number", n=N)


def in_child(target, *args, timeout: float = 60) -> int:
    """Run ``target(*args)`` in a forked child; its exit code (-9: killed by SIGKILL)."""
    child = FORK.Process(target=_child, args=(target, *args))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        pytest.fail(f"child running {target.__name__} hung")
    return child.exitcode


def _child(target, *args) -> None:
    torch.set_num_threads(1)  # the parent's thread pools do not survive a fork
    with dask.config.set(scheduler="synchronous"):
        target(*args)


def die_on_call(owner, name: str, call: int = 1) -> None:
    """Make the ``call``-th call of ``owner.name`` kill this process with SIGKILL."""
    original, calls = getattr(owner, name), []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) >= call:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, name, dying)


def without_chart_runtime() -> None:
    """Stand-ins for vl_convert's renderers in a forked child: the parent started their
    runtime's threads, which a fork does not copy, so the real ones would hang."""
    bundle_mod.vl_convert = SimpleNamespace(
        vegalite_to_svg=lambda spec: "<svg/>", vegalite_to_png=lambda spec, scale: b"png"
    )


def extract_and_report(model, texts, report: Path, slow: float = 0.0) -> None:
    """Extract ``texts`` (each list in turn); record forward passes, warnings, and whether
    each cube equals an uncached extraction of the same texts."""
    if slow:
        run_batch = extractor.run_batch
        extractor.run_batch = lambda *a: (time.sleep(slow), run_batch(*a))[1]
    passes: list[int] = []
    model.module("block", 0).register_forward_pre_hook(lambda *_: passes.append(1))
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("mechwidgets").addHandler(handler)
    out = []
    for t in texts:
        before = len(passes)
        cube = mw.extract(model, t, batch_size=BATCH)
        run = {"passes": len(passes) - before, "key": cube.attrs["cache_key"]}
        fresh = mw.extract(model, t, batch_size=BATCH, cache=False)
        out.append({**run, "equal": bool(np.array_equal(cube["act"].values, fresh["act"].values))})
    report.write_text(json.dumps({"runs": out, "warnings": warnings}))


def statuses() -> list[str]:
    return sorted(e.status for e in cache_store.list_cache())


def test_kill_during_extraction_then_rerun(toy, cache, tmp_path):
    model, task = toy
    texts = task.texts

    def dying():
        die_on_call(CubeWriter, "write", call=3)  # two batches written, then kill -9
        mw.extract(model, texts, batch_size=BATCH)

    assert in_child(dying) == -signal.SIGKILL
    assert statuses() == ["stale"]  # the dead writer's temp file is listed, no cube
    report = tmp_path / "report.json"
    assert in_child(extract_and_report, model, [texts], report) == 0
    [run] = json.loads(report.read_text())["runs"]
    assert run["passes"] == N // BATCH and run["equal"]  # all recomputed, nothing half served
    assert statuses() == ["cube"]  # no stray file listed
    assert sorted(p.name for p in cache.iterdir()) == [f"{run['key']}.nc"]


def test_kill_during_bundling_then_rerun(cache, tmp_path, caplog):
    result = run_spec(SPEC)
    out = write_bundle(result, tmp_path / "run")
    before = (out / "metrics.json").read_text()

    def dying_mid_fill():
        without_chart_runtime()
        die_on_call(bundle_mod.vl_convert, "vegalite_to_png")
        write_bundle(result, out)

    assert in_child(dying_mid_fill) == -signal.SIGKILL
    assert (out / "metrics.json").read_text() == before  # the old bundle stands
    assert [p.name[:9] for p in tmp_path.glob(".run.tmp-*")] == [".run.tmp-"]

    def dying_between_renames():
        without_chart_runtime()
        die_on_call(Path, "rename", call=2)  # the old bundle moved aside, the new one not in
        write_bundle(result, out)

    assert in_child(dying_between_renames) == -signal.SIGKILL
    assert not out.exists() and len(list(tmp_path.glob(".run.old-*"))) == 1

    with caplog.at_level(logging.WARNING, logger="mechwidgets"):
        assert read_artifacts(out)["action"] == "detect"  # restored on read
    assert "restored bundle" in caplog.text
    assert (out / "metrics.json").read_text() == before
    write_bundle(result, out)  # the re-run replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run"]


def test_corrupt_block_and_foreign_cube_are_rebuilt_with_a_warning(toy, cache, tmp_path):
    model, task = toy
    sets = [task.texts, task.texts[:32], task.texts[8:]]  # the last two of one shape
    keys = []
    for texts in sets:
        cube = mw.extract(model, texts, batch_size=BATCH)
        keys.append(cube.attrs["cache_key"])
        cube.close()
    cube = mw.extract(model, sets[0])
    row = cube["act"].values[20, 1, 0, :4].tobytes()  # 16 bytes in the middle of the data
    cube.close()
    corrupt = cache_store.cache_path(keys[0])
    data = bytearray(corrupt.read_bytes())
    middle = data.find(row)
    assert middle > 0
    data[middle : middle + 512] = bytes(512)  # a zeroed block inside the data
    corrupt.write_bytes(bytes(data))
    cache_store.cache_path(keys[1]).replace(cache_store.cache_path(keys[2]))  # foreign cube

    report = tmp_path / "report.json"
    assert in_child(extract_and_report, model, [sets[0], sets[2]], report) == 0
    done = json.loads(report.read_text())
    for run, texts in zip(done["runs"], [sets[0], sets[2]], strict=True):
        assert run["passes"] == -(-len(texts) // BATCH) and run["equal"]
    checksum, foreign = done["warnings"]
    assert "fails its checksum" in checksum and keys[0] in checksum
    assert "another request" in foreign and keys[1] in foreign
    assert all("\n" not in w and "quarantine" in w for w in done["warnings"])
    assert statuses() == ["cube", "cube", "quarantined", "quarantined"]


def test_cache_clear_racing_an_extraction_lets_it_finish(toy, cache, tmp_path, capsys):
    model, task = toy
    report = tmp_path / "report.json"
    child = FORK.Process(target=_child, args=(extract_and_report, model, [task.texts], report, 0.4))
    child.start()
    deadline = time.time() + 30
    while not list(cache.glob("*.nc.tmp-*")) and time.time() < deadline:
        time.sleep(0.05)
    assert statuses() == ["in progress"]
    assert main(["cache", "clear"]) == 0
    cleared = capsys.readouterr().out
    assert "removed 0 file(s)" in cleared and "left 1 file(s) of extractions in progress" in cleared
    child.join(60)
    assert child.exitcode == 0
    [run] = json.loads(report.read_text())["runs"]
    assert run["passes"] == N // BATCH and run["equal"]
    assert statuses() == ["cube"]
    assert main(["cache", "clear"]) == 0
    assert "removed 1 file(s)" in capsys.readouterr().out


def test_two_processes_asking_for_one_cube_compute_it_once(toy, cache, tmp_path):
    model, task = toy
    reports = [tmp_path / "a.json", tmp_path / "b.json"]
    children = [
        FORK.Process(target=_child, args=(extract_and_report, model, [task.texts], r, 0.2))
        for r in reports
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [c.exitcode for c in children] == [0, 0]
    runs = [json.loads(r.read_text())["runs"][0] for r in reports]
    assert sorted(r["passes"] for r in runs) == [0, N // BATCH]  # the second waited, then read
    assert all(r["equal"] for r in runs) and statuses() == ["cube"]


def test_read_only_folders_are_one_line_errors(toy, tmp_path, monkeypatch):
    model, task = toy
    result = run_spec(SPEC)
    base = Path(tempfile.mkdtemp())  # reachable by the unprivileged user the child becomes
    try:
        for name in ("cache", "out"):
            (base / name).mkdir()
            (base / name).chmod(0o555)
        (base / "report").mkdir(mode=0o777)
        (base / "report").chmod(0o777)
        base.chmod(0o755)

        def unprivileged():
            if os.geteuid() == 0:  # root ignores permission bits
                os.setgid(65534)
                os.setuid(65534)
            os.environ["MECHWIDGETS_CACHE"] = str(base / "cache")
            errors = []
            for attempt in (
                lambda: mw.extract(model, task, batch_size=BATCH),
                lambda: write_bundle(result, base / "out" / "run"),
            ):
                try:
                    attempt()
                    errors.append(None)
                except MechError as exc:
                    errors.append(str(exc))
            (base / "report" / "errors.json").write_text(json.dumps(errors))

        assert in_child(unprivileged) == 0
        cache_error, bundle_error = json.loads((base / "report" / "errors.json").read_text())
        assert cache_error.startswith(f"cannot write to cache folder {base / 'cache'}")
        assert "cache=False" in cache_error
        assert bundle_error.startswith(f"cannot write the bundle {base / 'out' / 'run'}")
        assert list((base / "cache").iterdir()) == [] and list((base / "out").iterdir()) == []
    finally:
        for name in ("cache", "out"):
            (base / name).chmod(0o755)
        shutil.rmtree(base)
