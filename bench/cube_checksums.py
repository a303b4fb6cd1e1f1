"""What the cube's block checksums cost, on a 418 MB cube (17,000 x 8 layers x 3 x 256).

Times writing with and without checksums, a plain open (no data read), opening with the
whole-file check, opening with per-block checks, and reading all of ``act`` or one layer x
component through each. "cold" drops the file from the page cache first
(``posix_fadvise``). Best of three; the numbers quoted in ``mechwidgets/extract/cube.py``.

    python bench/cube_checksums.py [folder]   # default: a temporary folder
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from mechwidgets.extract import cube as C

N = 17_000
LAYOUT = C.CubeLayout(N, tuple(range(8)), ("resid", "attn", "mlp"), 256)


def main(folder: Path) -> None:
    path = folder / "cube.nc"
    batch = np.random.default_rng(0).normal(size=(64, 8, 3, 256)).astype(np.float32)

    def write(checksums: bool = True) -> None:
        original = C.CubeWriter._checksum
        if not checksums:
            C.CubeWriter._checksum = lambda *a: None
        try:
            with C.CubeWriter(path, LAYOUT, {"sample_id": np.arange(N)}, {"model": "m"}) as w:
                for s in range(0, N, 64):
                    w.write(s, batch[: min(64, N - s)])
        finally:
            C.CubeWriter._checksum = original

    def best(f, n: int = 3, cold: bool = False) -> float:
        times = []
        for _ in range(n):
            if cold:
                fd = os.open(path, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
        return min(times)

    def plain() -> None:  # what open_cube did before checksums
        ds = xr.open_dataset(path, engine="netcdf4")
        ds.chunk({"sample": LAYOUT.block_rows})
        ds.close()

    def opened(limit: int, read=None):
        def run() -> None:
            C.VERIFY_ON_OPEN_BYTES = limit
            cube = C.open_cube(path, LAYOUT)
            if read is not None:
                read(cube).compute()
            cube.close()

        return run

    print(f"write without checksums: {best(lambda: write(False), 2):.2f} s")
    print(f"write with checksums:    {best(write, 2):.2f} s")
    print(f"file: {path.stat().st_size / 1e6:.0f} MB")
    whole, lazy = 2**40, 0
    slab = lambda c: c["act"].sel(layer=3, component="mlp")  # noqa: E731
    for cold in (False, True):
        tag = "cold" if cold else "warm"
        for name, f in [
            ("plain open, no check", plain),
            ("open, whole-file check", opened(whole)),
            ("open, per-block check", opened(lazy)),
            ("open + read all, whole-file check", opened(whole, lambda c: c["act"])),
            ("open + read all, per-block check", opened(lazy, lambda c: c["act"])),
            ("open + read one slab, whole-file check", opened(whole, slab)),
            ("open + read one slab, per-block check", opened(lazy, slab)),
        ]:
            print(f"[{tag}] {name:40s} {best(f, cold=cold):.3f} s")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
