"""Debiased CKA between layers against numpy with cached centred Gram matrices.

Protocol (BENCHMARKS.md, "CKA"): 12 layers of N = 4,000 samples x d = 768, float32 as a
cube stores them, every pair of layers, the debiased estimator. Both sides run in one
process, one BLAS thread, in interleaved rounds; time is CPU time (``time.process_time``,
steadier than wall time on a shared machine), memory is the peak of numpy allocations
above the inputs (``tracemalloc``, which numpy reports its buffers to).

- **ours**: ``mechwidgets.analysis.geometry.cka_matrix`` (streamed, bounded memory).
- **numpy, cached centred Grams**: what a capable researcher writes from Kornblith et
  al.'s code: each layer's Gram matrix ``X X^T`` once (numpy uses the symmetric BLAS
  product for it), centred the unbiased way (``center_gram(unbiased=True)``), kept, then
  one inner product per pair.

    OPENBLAS_NUM_THREADS=1 python bench/cka.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from mechwidgets.analysis.geometry import cka_matrix  # noqa: E402

TIME_TARGET = 0.5
MEMORY_TARGET = 1.0


def layers(n_layers: int, n: int, d: int, seed: int = 0) -> list[np.ndarray]:
    """Correlated layers: each the previous plus fresh noise, float32 like a cube."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    out = []
    for _ in range(n_layers):
        x = x + 0.5 * rng.normal(size=(n, d)).astype(np.float32)
        out.append(x.copy())
    return out


def numpy_cached_grams(xs: list[np.ndarray]) -> np.ndarray:
    """Debiased CKA from cached, unbiasedly centred Gram matrices (Kornblith et al. 2019)."""
    grams = []
    for x in xs:
        x64 = x.astype(np.float64)
        gram = x64 @ x64.T
        n = len(gram)
        np.fill_diagonal(gram, 0)
        means = gram.sum(axis=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
        grams.append(gram)
    size = len(grams)
    hsic = np.empty((size, size))
    for i in range(size):
        for j in range(i, size):
            hsic[i, j] = hsic[j, i] = grams[i].ravel() @ grams[j].ravel()
    norms = np.sqrt(np.diag(hsic))
    return hsic / np.outer(norms, norms)


def ours(xs: list[np.ndarray]) -> np.ndarray:
    return cka_matrix(dict(enumerate(xs))).values


def measure(fn: Callable[[], np.ndarray]) -> tuple[float, float, np.ndarray]:
    """CPU seconds, peak MB of numpy allocations, result."""
    tracemalloc.start()
    start = time.process_time()
    result = fn()
    seconds = time.process_time() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--d", type=int, default=768)
    args = parser.parse_args()
    xs = layers(args.layers, args.n, args.d)
    sides = {"ours": lambda: ours(xs), "numpy": lambda: numpy_cached_grams(xs)}
    times: dict[str, list[float]] = {k: [] for k in sides}
    peaks: dict[str, float] = {}
    results = {}
    for _ in range(args.rounds):
        for name, fn in sides.items():
            seconds, peak, results[name] = measure(fn)
            times[name].append(seconds)
            peaks[name] = max(peaks.get(name, 0.0), peak)
    diff = float(np.max(np.abs(results["ours"] - results["numpy"])))
    print(
        f"{args.layers} layers, N={args.n}, d={args.d}, float32 inputs "
        f"({sum(x.nbytes for x in xs) / 2**20:.0f} MB), load {os.getloadavg()[0]:.1f}"
    )
    for name in sides:
        t = times[name]
        print(
            f"{name:6s}: CPU median {statistics.median(t):.2f} s (min {min(t):.2f}, "
            f"max {max(t):.2f}), peak {peaks[name]:.0f} MB above the inputs"
        )
    ratios = [a / b for a, b in zip(times["ours"], times["numpy"], strict=True)]
    ratio = statistics.median(ratios)
    memory = peaks["ours"] / peaks["numpy"]
    print(
        f"time   ours / numpy: {ratio:.2f}x (per round {min(ratios):.2f}-{max(ratios):.2f})"
        f"   target <= {TIME_TARGET}x   {'PASS' if ratio <= TIME_TARGET else 'FAIL'}"
    )
    print(
        f"memory ours / numpy: {memory:.2f}x   target <= {MEMORY_TARGET}x   "
        f"{'PASS' if memory <= MEMORY_TARGET else 'FAIL'}"
    )
    print(f"max |ours - numpy| over the {args.layers}x{args.layers} matrix: {diff:.1e}")


if __name__ == "__main__":
    main()
