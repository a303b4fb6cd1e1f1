"""Memory a probing run will need, estimated before the work, so an impossible run fails at once.

The probing protocol holds every control draw at once: one shuffled label column per
permutation and seed, one random basis per random-subspace draw, and the null and
bootstrap scores of every slice. With permutations or resamples in the millions that is
more memory than the machine has, and numpy's ``MemoryError`` (or the kernel killing the
process) would come only after the model loaded and the cube was extracted.
:func:`protocol_bytes` adds up those arrays; :func:`check_memory` refuses a run whose
total exceeds the memory free now, naming the parameter to lower.

The sum counts only arrays the protocol cannot do without, so it is a lower bound: a
run refused here could not have finished. Measured with ``tracemalloc`` on toy-grammar
detect runs (600-1,200 samples, 1,000-4,000 permutations, 1-3 seeds, one to three
controls), the peak was 1.34-1.52 times the estimate. For a 300-sample detect with 1 seed
and ``label_shuffle`` + ``random_subspace`` the estimate for ``permutations=10**8`` is 609
GiB (the shuffled labels alone are 224 GiB, the array numpy's ``MemoryError`` named).

>>> needed = protocol_bytes(n_samples=2000, n_test=400, dim=512, n_slices=18,
...     controls=("label_shuffle",), seeds=5, permutations=10**7, resamples=1000)
>>> check_memory(needed, {"permutations": 10**7})
Traceback (most recent call last):
SpecError: permutations=10000000 needs ~1,504 GiB of memory for the probes' draws, ...
"""

from __future__ import annotations

from collections.abc import Iterable

import psutil

from mechwidgets.core.errors import SpecError

#: controls whose draws are label columns (the others draw random bases)
LABEL_DRAWS = ("label_shuffle", "control_task")
GIB = 2**30


def protocol_bytes(
    *,
    n_samples: int,
    n_test: int,
    dim: int,
    n_slices: int,
    controls: Iterable[str],
    seeds: int,
    permutations: int,
    resamples: int,
    n_labels: int = 1,
    rank: int = 1,
) -> dict[str, int]:
    """Bytes of the arrays the protocol keeps, by the parameter that drives them.

    Parameters
    ----------
    n_samples, n_test : samples in the cube and in its test split.
    dim : activation width.
    n_slices : (layer, component) slices probed.
    controls : the control names.
    seeds, permutations, resamples : the protocol's counts.
    n_labels : labels probed together.
    rank : the random-subspace rank.

    Returns
    -------
    ``{"permutations": ..., "resamples": ...}``: the draws' label columns (int64, with
    their per-split copy), random bases (float32, as bases and as projections of every
    sample) and null scores (float64); the bootstrap weights and scores (float64).
    """
    controls = tuple(controls)
    draws = seeds * permutations
    label_columns = sum(c in controls for c in LABEL_DRAWS) * 2 * 8 * n_samples * draws
    subspaces = ("random_subspace" in controls) * 4 * draws * rank * (dim + n_samples)
    per_slice = n_labels * n_slices * (1 + len(controls)) * seeds * 8
    return {
        "permutations": n_labels * (label_columns + subspaces) + per_slice * permutations,
        "resamples": 8 * seeds * resamples * n_test + per_slice * resamples,
    }


def check_memory(
    needed: dict[str, int], settings: dict[str, int], available: int | None = None
) -> None:
    """Raise a one-line SpecError when ``needed`` (from :func:`protocol_bytes`) cannot fit.

    Parameters
    ----------
    needed : bytes per parameter.
    settings : the parameters' values, for the message.
    available : bytes free; default the memory free now (``psutil``).
    """
    free = psutil.virtual_memory().available if available is None else available
    total = sum(needed.values())
    if total <= free:
        return
    name = max(needed, key=needed.__getitem__)
    raise SpecError(
        f"{name}={settings.get(name)} needs ~{total / GIB:,.0f} GiB of memory for the probes' "
        f"draws, more than the {free / GIB:,.1f} GiB free; lower it or the seeds (200-2,000 "
        "permutations and 1,000 resamples are the usual range)"
    )
