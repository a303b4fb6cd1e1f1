"""dask.distributed against the single-process path: extraction and the default detect.

Extraction: the toy-grammar zoo model over ``N_TEXTS`` texts into a Zarr cube (batches of
``BATCH``), in this process and with ``client=`` on a LocalCluster of 1 and of 2 worker
processes (1 thread each). Detect: the default protocol (5 seeds, 200 permutations, 1000
resamples, label-shuffle and random-subspace controls) on a planted cube of ``SAMPLES`` x
``LAYERS`` layers x 3 components x ``DIM``, a netCDF file (a Zarr store with ``--zarr``),
and the same on a cube of one such slice (``SAMPLES`` x ``DIM``): fewer slices than
workers, so each slice's seeds go out in blocks (one per worker thread).

One cluster at a time runs (the 1-worker one, then the 2-worker one), as a session has
one: an idle second cluster (its scheduler, nanny and worker) would take CPU from the one
measured. Each is started and every path warmed (one extraction, so each worker has
loaded the model and traced once; one detect, so each worker has opened the cube); then
``--rounds`` rounds run local and that cluster in turn (interleaved, so a change in the
machine's load hits both alike), and the median of each is reported (local: over both
clusters' rounds). The machine is shared: wall time follows the other jobs' load, so
every run also records CPU seconds, this process's (the client, the scheduler and the
nannies: LocalCluster runs them here) and each worker's (``time.process_time`` on the
worker). From those:

- overhead at 1 worker, CPU: (client + worker CPU) / local CPU: the work the distributed
  path adds, whatever the load; also less this process's idle CPU over the run (the
  LocalCluster's scheduler and nanny, measured over 5 s of sleep), which a client of a
  remote scheduler does not pay;
- speed-up at 2 workers on free cores: local CPU / (the client's main-thread CPU + the
  larger of the busier worker's CPU and the client's other threads' (scheduler, comms,
  nannies)): the wall time the 2-worker path would take with a core for each, the main
  thread's work (reading labels, drawing, statistics) being serial and the rest
  overlapping the workers;
- and the measured wall ratios, at the load printed beside them.

Then a paper projection for 16 and 256 workers from the measured parts: the client's
serial CPU, the worker CPU per slice, the part of it that each seed block repeats (the
1-slice cube's worker CPU at 2 workers, 2 blocks, less at 1 worker, 1 block), and the
scheduler's CPU per task (no-op tasks).

    python bench/scale.py [--quick | --large] [--zarr] [--rounds 3]

``--pairs N`` measures only the 2-worker detect against the local one, in N interleaved
pairs on one LocalCluster (warmed by an extraction, as above): the wall speed-up of each
pair and their median. Three rounds leave that ratio to the machine's noise (a pair
ranges over +-15% here); more pairs pin it down.

    python bench/scale.py --large --pairs 10
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import torch

import mechwidgets as mw
from mechwidgets.cluster import save_cube
from mechwidgets.probes.synthetic import planted_cube

SIZES = {  # texts, batch; samples, layers, dim
    "quick": ((128, 32), (600, 4, 64)),
    "default": ((256, 32), (800, 6, 64)),
    "large": ((4096, 128), (2000, 8, 256)),
}


def cluster(n: int) -> tuple[Any, Any]:
    from dask.distributed import Client, LocalCluster

    lc = LocalCluster(
        n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    return lc, Client(lc)


def worker_cpu(client: Any) -> dict[str, float]:
    return client.run(time.process_time) if client is not None else {}


def run(fn: Callable[[], Any], client: Any = None) -> dict[str, float]:
    """Wall, this process's CPU and each worker's CPU over one call of ``fn``.

    A local run uses dask's default local scheduler, as in a session without a cluster
    (a Client, once made, is dask's default scheduler for every later computation).
    """
    w0, c0, t0 = worker_cpu(client), time.process_time(), time.perf_counter()
    m0 = time.thread_time()
    with dask.config.set(scheduler="threads") if client is None else contextlib.nullcontext():
        out = fn()
    wall, cpu, main = time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - m0
    if hasattr(out, "close"):
        out.close()
    w1 = worker_cpu(client)
    per_worker = sorted((w1[k] - w0[k] for k in w0), reverse=True)
    return {
        "wall": wall,
        "client": cpu,
        "main": main,
        "workers": sum(per_worker),
        "busiest": per_worker[0] if per_worker else 0.0,
    }


def noop_overhead(client: Any, n: int = 400) -> tuple[float, float]:
    """Wall and client CPU seconds per task from ``n`` no-op tasks (scheduler + round trip,
    pipelined: throughput, not the latency of one task)."""
    client.gather(client.map(abs, range(-20, 0), pure=False))  # warm
    c0, t0 = time.process_time(), time.perf_counter()
    client.gather(client.map(abs, range(-n, 0), pure=False))
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def free_core(m: dict[str, float]) -> float:
    """Seconds a distributed run would take with a free core for each process."""
    return m["main"] + max(m["busiest"], m["client"] - m["main"])


def detect_pairs(cube: Any, model: Any, task: Any, folder: Path, pairs: int) -> None:
    """Print the 2-worker detect's wall speed-up over the local one in ``pairs``
    interleaved pairs, and their median."""
    lc, client = cluster(2)
    try:
        mw.extract(model, task, store=folder / "warm.zarr", progress=False, client=client).close()
        mw.detect(cube, "number", client=client)  # warm: each worker has opened the cube
        local, two = [], []
        for _ in range(pairs):
            local.append(run(lambda: mw.detect(cube, "number"))["wall"])
            two.append(run(lambda: mw.detect(cube, "number", client=client), client)["wall"])
    finally:
        client.close()
        lc.close()
    ratios = sorted(a / b for a, b in zip(local, two, strict=True))
    print(f"detect, 2 workers against local, {pairs} interleaved pairs, load "
          f"{os.getloadavg()[0]:.1f}: local {statistics.median(local):.2f} s, 2 workers "
          f"{statistics.median(two):.2f} s (medians)")  # fmt: skip
    print(f"  wall speed-up per pair: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"  median {statistics.median(ratios):.2f}  target >= 1.6")


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--large", action="store_true")
    parser.add_argument("--zarr", action="store_true", help="detect on a Zarr store")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=0, help="only detect, N pairs")
    args = parser.parse_args()
    size = "quick" if args.quick else "large" if args.large else "default"
    (n_texts, batch), (samples, layers, dim) = SIZES[size]
    detect_kw = {"seeds": 2, "permutations": 50, "resamples": 200} if args.quick else {}
    load0 = os.getloadavg()

    folder = Path(tempfile.mkdtemp(prefix="mw-scale-"))
    model = mw.load_model("toy-grammar")
    task = mw.get_task("subject_number", n=n_texts)
    planted = planted_cube(
        {"number": {(2, "resid"): 2.0}}, n_samples=samples, dim=dim, n_layers=layers
    )
    suffix = ".zarr" if args.zarr else ".nc"
    cube = mw.open_cube(save_cube(planted, folder / f"cube{suffix}"))
    single = planted_cube(
        {"number": {(0, "resid"): 2.0}}, n_samples=samples, dim=dim, n_layers=1,
        components=("resid",),
    )  # fmt: skip
    one_slice = mw.open_cube(save_cube(single, folder / f"one{suffix}"))
    n_slices = layers * 3
    torch.set_num_threads(1)  # as each worker (1 thread): the same work on every path
    if args.pairs:
        detect_pairs(cube, model, task, folder, args.pairs)
        return
    count = iter(range(10**6))

    def extract(client: Any) -> Any:
        store = folder / f"x{next(count)}.zarr"  # a new store each time: every batch computed
        return mw.extract(model, task, store=store, batch_size=batch, progress=False,
                          client=client)  # fmt: skip

    def detect(client: Any) -> Any:
        return mw.detect(cube, "number", client=client, **detect_kw)

    def detect1(client: Any) -> Any:
        return mw.detect(one_slice, "number", client=client, **detect_kw)

    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    cold = {"local": run(lambda: extract(None))["wall"]}
    detect(None)
    detect1(None)
    idle = {}
    for name, n in (("1w", 1), ("2w", 2)):  # one cluster at a time, as a session has
        lc, client = cluster(n)
        try:
            cold[name] = run(lambda c=client: extract(c), client)["wall"]  # warm
            detect(client)
            detect1(client)
            for _ in range(args.rounds):
                for what, fn in (("extract", extract), ("detect", detect), ("detect1", detect1)):
                    for path, c in (("local", None), (name, client)):
                        results.setdefault((what, path), []).append(run(lambda f=fn, c=c: f(c), c))
            if n == 2:
                sched_wall, sched_cpu = noop_overhead(client)
            idle0 = time.process_time()
            time.sleep(5)
            idle[name] = (time.process_time() - idle0) / 5  # its scheduler and nannies
        finally:
            client.close()
            lc.close()
    with dask.config.set(scheduler="threads"):
        local_detect = detect(None)
    load1 = os.getloadavg()

    print(f"machine: {os.cpu_count()} cores; load average (1 min) {load0[0]:.1f} before, "
          f"{load1[0]:.1f} after; {args.rounds} interleaved rounds, medians")  # fmt: skip
    print(f"extraction: {n_texts} texts, batches of {batch} ({-(-n_texts // batch)} tasks); "
          f"detect: {samples} x {layers} layers x 3 x {dim} ({'zarr' if args.zarr else 'netCDF'}), "
          f"{n_slices} slices, protocol {detect_kw or 'default'}")  # fmt: skip
    print(f"  cold first extraction (workers start, import, load the model): "
          f"{', '.join(f'{k} {v:.2f} s' for k, v in cold.items())}")  # fmt: skip
    print("  path              wall s   client CPU s (main thread)  workers CPU s  busiest s")
    paths = ("local", "1w", "2w")
    whats = ("extract", "detect", "detect1")  # detect1: the 1-slice cube
    med = {(w, n): median(results[(w, n)]) for w in whats for n in paths}
    for (what, name), m in med.items():
        print(f"  {what:<8}{name:<8}{m['wall']:8.2f}  {m['client']:12.2f} ({m['main']:5.2f})"
              f"  {m['workers']:13.2f}  {m['busiest']:9.2f}")  # fmt: skip
    print(f"  this process idle (the LocalCluster's scheduler, nannies): "
          f"{', '.join(f'{k} {v:.3f}' for k, v in idle.items())} CPU s per s")  # fmt: skip
    print("ratio                                  measured  target")
    for what in whats:
        local, one, two = med[(what, "local")], med[(what, "1w")], med[(what, "2w")]
        cpu = local["client"]
        rows = {
            "1 worker / local, CPU": ((one["client"] + one["workers"]) / cpu, "<= 1.2"),
            "1 worker / local, CPU less idle": (
                (one["client"] - idle["1w"] * one["wall"] + one["workers"]) / cpu,
                "<= 1.2",
            ),
            "1 worker / local, wall": (one["wall"] / local["wall"], "<= 1.2"),
            "2 workers, free-core speed-up": (cpu / free_core(two), ">= 1.6"),
            "2 workers, wall speed-up": (local["wall"] / two["wall"], ">= 1.6"),
        }
        for label, (value, target) in rows.items():
            print(f"  {what} {label:<31} {value:8.2f}  {target}")
    # projection: on W worker threads a slice is split into b = min(seeds, ceil(W / slices))
    # seed blocks (one while the slices fill the threads), each costing the repeated part
    # plus its share of the rest; T(W) = serial + ceil(units / W) * per_unit + units * sched
    one = med[("detect", "1w")]
    per_task = one["workers"] / n_slices  # a slice's probe on a worker, CPU
    serial = one["main"]  # the client's main thread: labels, draws, statistics
    few1, few2 = med[("detect1", "1w")], med[("detect1", "2w")]
    repeated = max(0.0, few2["workers"] - few1["workers"])  # what the second block repeats
    seeds = int(detect_kw.get("seeds", 5))
    print(f"paper projection (detect): per slice {per_task * 1e3:.0f} ms worker CPU, of which "
          f"each seed block repeats {repeated * 1e3:.0f} ms (1-slice cube: 1 block "
          f"{few1['workers'] * 1e3:.0f} ms, 2 blocks {few2['workers'] * 1e3:.0f} ms); scheduler "
          f"{sched_cpu * 1e3:.2f} ms CPU/task ({sched_wall * 1e3:.2f} ms wall), client serial "
          f"{serial:.2f} s CPU (local detect: probes {local_detect.timings['probes']:.2f} s, "
          f"statistics {local_detect.timings['statistics']:.2f} s)")  # fmt: skip

    def projected(slices: int, w: int) -> float:
        blocks = min(seeds, max(1, -(-w // slices)))
        unit = repeated + (per_task - repeated) / blocks
        return serial + math.ceil(slices * blocks / w) * unit + slices * blocks * sched_cpu

    for slices in (1, n_slices, 1024):
        for w in (1, 16, 256):
            t = projected(slices, w)
            print(f"  {slices:5d} slices, {w:3d} workers: {t:8.2f} s "
                  f"(speed-up {projected(slices, 1) / t:6.1f})")  # fmt: skip
    print(f"  scaling stops at min(slices x {seeds} seeds, per-unit / scheduler) workers, "
          f"each unit at least {repeated * 1e3:.0f} ms; past that the client's serial "
          f"{serial:.2f} s bounds it")  # fmt: skip


if __name__ == "__main__":
    main()
