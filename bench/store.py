"""Zarr cube against netCDF cube: write and read throughput on a local disk.

A synthetic cube of N samples x 8 layers x 3 components x 256 (float32), written batch by
batch (64 samples, checksums included) by each format's writer, then opened (the open
checks every block: both cubes are under ``VERIFY_ON_OPEN_BYTES``) and read whole, and
one layer x component read alone. Best of ``REPEAT``; MB/s of ``act`` bytes, per wall
second and per CPU second of this process (``time.process_time``: what the other jobs of a
shared machine do not change; the load average is printed). Then where a Zarr write's
time goes: claiming a batch, its rows (one shard), its checksums, its flag.

    python bench/store.py [folder]   # default: a temporary folder
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mechwidgets.extract.cube import CubeLayout, CubeWriter, block_crcs, open_cube
from mechwidgets.extract.store import StoreWriter

N, BATCH, REPEAT = 6_400, 64, 3
LAYOUT = CubeLayout(N, tuple(range(8)), ("resid", "attn", "mlp"), 256)
PER_SAMPLE = {"sample_id": np.arange(N), "text": np.array([f"text {i}" for i in range(N)], object)}
ATTRS = {"model": "bench", "cache_key": "bench"}


def write(target: Path, batch: np.ndarray) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    writer = (
        StoreWriter(target, LAYOUT, PER_SAMPLE, ATTRS, BATCH)
        if target.suffix == ".zarr"
        else CubeWriter(target, LAYOUT, PER_SAMPLE, ATTRS)
    )
    with writer as out:
        for lo, hi in out.batches(BATCH):
            out.write(lo, batch[: hi - lo])
    return time.perf_counter() - start, time.process_time() - cpu


def timed(fn) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()``."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def main(folder: Path) -> None:
    batch = np.random.default_rng(0).normal(size=(BATCH, 8, 3, 256)).astype(np.float32)
    size = N * 8 * 3 * 256 * 4 / 2**20
    print(f"cube: {N} x 8 x 3 x 256 float32 = {size:.0f} MB, batches of {BATCH}; "
          f"load average {os.getloadavg()[0]:.1f}; MB/s per wall s (per CPU s)")  # fmt: skip
    print(f"{'format':8} {'write MB/s':>11} {'open+read all MB/s':>19} {'one slice s':>12}")
    for name in ("cube.nc", "cube.zarr"):
        target = folder / name
        writes, reads, slices = [], [], []
        for _ in range(REPEAT):
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(
                missing_ok=True
            )
            writes.append(write(target, batch))
            reads.append(timed(lambda t=target: open_cube(t)["act"].values))
            slices.append(
                timed(lambda t=target: open_cube(t)["act"].sel(layer=3, component="mlp").values)
            )
        best = [[min(runs) for runs in zip(*each, strict=True)] for each in (writes, reads, slices)]
        (write_s, write_cpu), (read_s, read_cpu), (slice_s, slice_cpu) = best
        print(
            f"{target.suffix[1:]:8} {size / write_s:5.0f} ({size / write_cpu:3.0f})"
            f" {size / read_s:12.0f} ({size / read_cpu:3.0f}) {slice_s:7.2f} ({slice_cpu:.2f})"
        )
    zarr_write_split(folder, batch)


def zarr_write_split(folder: Path, batch: np.ndarray) -> None:
    """Seconds per step of one Zarr write, summed over the batches."""
    writer = StoreWriter(folder / "split.zarr", LAYOUT, PER_SAMPLE, ATTRS, BATCH)
    arrays, spent = writer._arrays, dict.fromkeys(("claim", "rows", "checksums", "flag"), 0.0)
    batches = writer.batches(BATCH)
    while True:
        start = time.perf_counter()
        try:
            lo, hi = next(batches)
        except StopIteration:
            break
        spent["claim"] += time.perf_counter() - start
        block, start = lo // BATCH, time.perf_counter()
        arrays["act"][lo:hi] = batch
        spent["rows"] += time.perf_counter() - start
        start = time.perf_counter()
        arrays["act_crc32"][block] = block_crcs(batch)
        spent["checksums"] += time.perf_counter() - start
        start = time.perf_counter()
        arrays["committed"][block] = 1
        spent["flag"] += time.perf_counter() - start
    print("zarr write, s per step over all batches:", {k: round(v, 2) for k, v in spent.items()})


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
