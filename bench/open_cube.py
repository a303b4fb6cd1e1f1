"""Opening a cached cube against xarray opening the same file without dask.

A cube of ``--samples`` samples x 7 layers x 3 components x 512 dims (float32; 10,000
samples = 410 MB of activations, the size of bench/cube_checksums.py) is written with
``CubeWriter`` into a temporary cache folder under its key, then opened, in interleaved
rounds, CPU time (``time.process_time``):

- **xarray**: ``xr.open_dataset(path, engine="netcdf4")``, no dask, no checks: the floor.
- **first open**: ``cache.load`` of a cube never opened before: the full checksum read,
  then the stamp (paid once per cube; the stamp is removed before each round).
- **stamped**: ``cache.load`` in a process that has not opened it yet (a fresh kernel):
  the stamp vouches for the file, no full read.
- **again**: ``cache.load`` of a cube this process opened before (a repeated cell).

Target: the stamped open <= 1.5x xarray.

    python bench/open_cube.py --samples 10000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mechwidgets.extract import cache as cache_store
from mechwidgets.extract.cube import CubeLayout, CubeWriter

TARGET = 1.5


def write_cube(n: int) -> tuple[str, CubeLayout]:
    """A random cube of ``n`` samples in the cache folder under its key."""
    layout = CubeLayout(n, tuple(range(-1, 6)), ("resid", "attn", "mlp"), 512)
    request = {"bench": "open_cube", "samples": n}
    key = cache_store.cache_key(request)
    per_sample = {
        "sample_id": np.arange(n),
        "text": np.array([f"text number {i} of the bench" for i in range(n)], dtype=object),
        "split": np.array(["train", "val", "test"] * (n // 3) + ["train"] * (n % 3), object),
        "label": np.arange(n) % 2,
    }
    attrs = {"cache_key": key, "request": json.dumps(request, sort_keys=True)}
    rng = np.random.default_rng(0)
    path = cache_store.cache_path(key)
    with cache_store.writing(path) as tmp, CubeWriter(tmp, layout, per_sample, attrs) as out:
        for start in range(0, n, 500):
            rows = min(500, n - start)
            out.write(start, rng.normal(size=(rows, 7, 3, 512)).astype(np.float32))
    old = time.time_ns() - 60 * 10**9  # written a minute ago: past the stamp's racy window
    os.utime(path, ns=(old, old))
    return key, layout


def cpu(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import xarray as xr

    with tempfile.TemporaryDirectory() as folder:
        os.environ["MECHWIDGETS_CACHE"] = folder
        key, layout = write_cube(args.samples)
        path = cache_store.cache_path(key)
        stamp = Path(f"{path}{cache_store.VERIFIED}")

        def plain() -> None:
            xr.open_dataset(path, engine="netcdf4").close()

        def first() -> None:
            stamp.unlink(missing_ok=True)
            cache_store._OPENED.clear()
            cache_store.load(key, layout).close()

        def stamped() -> None:
            cache_store._OPENED.clear()
            cache_store.load(key, layout).close()

        def again() -> None:
            cache_store.load(key, layout).close()

        sides = {"xarray": plain, "first open": first, "stamped": stamped, "again": again}
        for fn in sides.values():
            fn()
        times: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(args.rounds):
            for name, fn in sides.items():
                times[name].append(cpu(fn))
        size = path.stat().st_size / 2**20
    print(f"cube file {size:.0f} MB, {args.samples} samples, load {os.getloadavg()[0]:.1f}")
    for name, values in times.items():
        ratios = [v / x for v, x in zip(values, times["xarray"], strict=True)]
        verdict = ""
        if name == "stamped":
            ok = statistics.median(ratios) <= TARGET
            verdict = f"   target <= {TARGET}x   {'PASS' if ok else 'FAIL'}"
        print(
            f"{name:10s} {statistics.median(values) * 1e3:8.1f} ms CPU (min "
            f"{min(values) * 1e3:.1f}, max {max(values) * 1e3:.1f})   "
            f"{statistics.median(ratios):.2f}x xarray{verdict}"
        )


if __name__ == "__main__":
    main()
