"""Activation patching over a full grid against attribution patching of the same grid.

On a random-weight model shaped like Pythia-70m (6 layers, d_model 512, 8 heads, d_mlp
2048, vocabulary 50304; ``bench/extract.py`` builds it), clean/corrupt pairs of 16 random
tokens that differ in one token, metric: a logit difference at the last token. The grid:
the residual stream (embeddings and every block), attention and MLP writes at every
position (19 x 16 = 304 cells), and every head over all positions (6 x 8 = 48 cells).

- activation patching: ``mw.patch(..., attribution=False)``, one edited run per cell, the
  cells stacked into batched passes;
- one cell per traced pass, timed on a sample of cells and extrapolated: what stacking
  saves;
- attribution patching: ``mw.attribution_patch``, one source pass, one forward and one
  backward pass for the whole grid.

Prints one JSON object: wall-clock and CPU seconds per method, their ratio, and the
agreement (Pearson, Spearman) of the two estimates over the grid.

    python bench/patching.py --threads 1 --pairs 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from extract import pythia70m_shaped, random_texts  # noqa: E402  (the shared bench model)

import mechwidgets as mw  # noqa: E402
from mechwidgets.actions.interventions.edits import Source, run_cells  # noqa: E402
from mechwidgets.actions.interventions.grid import (  # noqa: E402
    PatchResult,
    agreement,
    plan_patching,
)

SEQ = 16
T = TypeVar("T")
#: (grid, components) of the two halves of the full grid
GRIDS = (
    (("layer", "component", "position"), ["resid", "attn", "mlp"]),
    (("layer", "component"), ["head"]),
)


def pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Clean texts of SEQ tokens and corrupt ones with token 3 replaced."""
    clean = random_texts(n, SEQ, seed)
    swap = random_texts(n, 1, seed + 1)
    corrupt = [
        " ".join([*c.split()[:3], s, *c.split()[4:]]) for c, s in zip(clean, swap, strict=True)
    ]
    return clean, corrupt


def timed(fn: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """``fn()`` and its wall-clock and CPU seconds (CPU time is steadier on a shared machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, {
        "wall": round(time.perf_counter() - wall, 3),
        "cpu": round(time.process_time() - cpu, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the fast methods")
    parser.add_argument("--naive-sample", type=int, default=24, help="cells timed one per pass")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = pythia70m_shaped()
    clean, corrupt = pairs(args.pairs)
    metric = mw.metrics.logit_diff("w10", "w11")
    kw = {"behavior": metric, "resamples": 200}

    def activation() -> list[PatchResult]:
        return [
            mw.patch(model, clean, corrupt, grid=g, components=c, attribution=False, **kw)
            for g, c in GRIDS
        ]

    def attribution() -> list[PatchResult]:
        return [
            mw.attribution_patch(model, clean, corrupt, grid=g, components=c, **kw)
            for g, c in GRIDS
        ]

    attribution()  # warm-up
    act, act_s = timed(activation)
    runs = [timed(attribution) for _ in range(args.repeats)]
    atp = runs[0][0]
    atp_s = {k: statistics.median(r[1][k] for r in runs) for k in ("wall", "cpu")}

    # one traced pass per cell, on a sample of the cells, extrapolated to the grid
    plan = plan_patching(model, clean, corrupt, metric, *GRIDS[0], "denoise", None)
    sample = np.random.default_rng(0).choice(len(plan.cells), args.naive_sample, replace=False)
    _, one_s = timed(
        lambda: [
            run_cells(model, plan.base, [plan.cells[i]], Source(plan.source), [plan.pairs.scorer])
            for i in sample
        ]
    )
    cells = sum(len(r.table) for r in act)
    one_s = {k: round(v * cells / args.naive_sample, 2) for k, v in one_s.items()}

    a = np.concatenate([r.table["effect"].to_numpy() for r in act])
    b = np.concatenate([r.table["effect"].to_numpy() for r in atp])
    print(
        json.dumps(
            {
                "pairs": args.pairs,
                "tokens": SEQ,
                "cells": cells,
                "threads": args.threads,
                "activation_s": act_s,
                "attribution_s": atp_s,
                "ratio": {k: round(act_s[k] / atp_s[k], 1) for k in act_s},
                "one_pass_per_cell_s": one_s,
                "stacking_speedup": {k: round(one_s[k] / act_s[k], 2) for k in act_s},
                "agreement": agreement(a, b),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
