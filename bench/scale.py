"""dask.distributed against the single-process path: extraction and the default detect.

Extraction: the toy-grammar zoo model over ``N_TEXTS`` texts into a Zarr cube (batches of
``BATCH``), in this process and with ``client=`` on a LocalCluster of 1 and 2 worker
processes (1 thread each). Every path is warmed first (one extraction, so each worker
has loaded the model and traced once; one detect, so each worker has opened the cube);
the workers' cold first extraction is reported apart. The local extraction runs on one
torch thread, as each worker does; the default (one per core) is reported apart.
Detect: the default protocol (5 seeds, 200 permutations, 1000 resamples, label-shuffle
and random-subspace controls) on a planted netCDF cube of ``SAMPLES`` x ``LAYERS``
layers x 3 components x ``DIM``.

Then a paper projection for 16 and 256 workers from the measured parts: the client's
serial part (reading labels, drawing controls, statistics), the per-slice task cost, and
the scheduler's per-task overhead (measured with no-op tasks).

    python bench/scale.py [--quick | --large]
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import mechwidgets as mw
from mechwidgets.cluster import save_cube
from mechwidgets.probes.synthetic import planted_cube

QUICK, LARGE = "--quick" in sys.argv, "--large" in sys.argv
N_TEXTS, BATCH = (128, 32) if QUICK else (1024, 64) if LARGE else (256, 32)
SAMPLES, LAYERS, DIM = (600, 4, 64) if QUICK else (2000, 8, 256) if LARGE else (800, 6, 64)
DETECT = {"seeds": 2, "permutations": 50, "resamples": 200} if QUICK else {}


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if hasattr(out, "close"):
        out.close()
    return time.perf_counter() - start


def cluster(n: int):
    from dask.distributed import Client, LocalCluster

    lc = LocalCluster(
        n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    return lc, Client(lc)


def noop_overhead(client, n: int = 400) -> float:
    """Seconds of scheduler + round trip per task, from ``n`` no-op tasks."""
    client.gather(client.map(abs, range(-20, 0), pure=False))  # warm
    start = time.perf_counter()
    client.gather(client.map(abs, range(-n, 0), pure=False))
    return (time.perf_counter() - start) / n


def main() -> None:
    load0 = os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="mw-scale-"))
    model = mw.load_model("toy-grammar")
    task = mw.get_task("subject_number", n=N_TEXTS)
    ext = {"batch_size": BATCH, "progress": False}
    cube = mw.open_cube(
        save_cube(
            planted_cube({"number": {(2, "resid"): 2.0}}, n_samples=SAMPLES, dim=DIM,
                         n_layers=LAYERS),
            folder / "cube.nc",
        )
    )  # fmt: skip
    n_slices = LAYERS * 3
    times: dict[str, float] = {}
    timed(mw.extract, model, task, store=folder / "warm.zarr", **ext)  # first trace: warm-up
    threads = torch.get_num_threads()
    times[f"extract local {threads}t"] = timed(
        mw.extract, model, task, store=folder / "l.zarr", **ext
    )
    torch.set_num_threads(1)  # as each worker (1 thread); on busy cores much the faster
    times["extract local"] = timed(mw.extract, model, task, store=folder / "local.zarr", **ext)
    res = mw.detect(cube, "number", **DETECT)
    times["detect local"] = timed(mw.detect, cube, "number", **DETECT)
    probes_s, stats_s = res.timings["probes"], res.timings["statistics"]
    overhead = {}
    for n in (1, 2):
        lc, client = cluster(n)
        try:
            store = folder / f"w{n}-cold.zarr"
            times[f"extract {n}w cold"] = timed(
                mw.extract, model, task, store=store, client=client, **ext
            )
            store = folder / f"w{n}.zarr"
            times[f"extract {n}w"] = timed(
                mw.extract, model, task, store=store, client=client, **ext
            )
            mw.detect(cube, "number", client=client, **DETECT)  # workers open the cube once
            times[f"detect {n}w"] = timed(mw.detect, cube, "number", client=client, **DETECT)
            overhead[n] = noop_overhead(client)
        finally:
            client.close()
            lc.close()
    load1 = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores; load average (1 min) {load0[0]:.1f} before, "
          f"{load1[0]:.1f} after")  # fmt: skip
    print(f"extraction: {N_TEXTS} texts, batches of {BATCH} ({-(-N_TEXTS // BATCH)} tasks); "
          f"detect: {SAMPLES} x {LAYERS} layers x 3 x {DIM}, {n_slices} slices, "
          f"protocol {DETECT or 'default'}")  # fmt: skip
    for name, s in times.items():
        print(f"  {name:<20} {s:8.2f} s")
    print("ratio                              measured  target")
    for what in ("extract", "detect"):
        local = times[f"{what} local"]
        print(f"  {what} 1 worker / local        {times[f'{what} 1w'] / local:8.2f}  <= 1.2")
        print(f"  {what} speed-up 2 workers      {local / times[f'{what} 2w']:8.2f}  >= 1.6")
    # projection: T(W) = serial + ceil(tasks / W) * per_task + tasks * scheduler
    sched = overhead[2]
    per_task = probes_s / n_slices  # upper bound: includes the labels' and draws' setup
    serial = stats_s
    print(f"paper projection (detect): per slice {per_task * 1e3:.0f} ms, scheduler "
          f"{sched * 1e3:.2f} ms/task, client serial part {serial:.2f} s")  # fmt: skip
    for tasks in (n_slices, 1024):
        for w in (1, 16, 256):
            t = serial + math.ceil(tasks / w) * per_task + tasks * sched
            t1 = serial + tasks * per_task + tasks * sched
            print(f"  {tasks:5d} slices, {w:3d} workers: {t:8.2f} s (speed-up {t1 / t:6.1f})")
    stop = per_task / sched
    print(f"  scaling stops at min(slices, per-slice / scheduler = {stop:.0f}) workers, and "
          f"at most (serial + compute) / serial x over the serial part")  # fmt: skip


if __name__ == "__main__":
    main()
