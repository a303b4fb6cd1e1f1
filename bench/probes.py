"""Probe protocol speed against a smart scikit-learn user, side by side (BENCHMARKS.md, "Probes").

The full ``detect`` protocol on N = 4,000 samples (2,400 / 800 / 800 train / val / test),
d = 512, a binary label planted at a strength that rises over the slices (6 layers x
resid / attn / mlp = 18 slices): standardise on train, L2 strength chosen from 8 on
validation, label-shuffle and random-subspace controls, 5 seeds x 200 draws each.

- ours: ``mw.detect`` end to end (controls, 1,000 bootstrap resamples per seed, p-values,
  intervals, table).
- scikit-learn: what a capable user writes with it: ``StandardScaler`` on train; per
  strength one multi-output ``Ridge`` fit of the real labels and all 1,000 shuffled
  labellings at once (same penalty ``alpha = strength x n_train``, +-1 targets, as our
  ridge probe); accuracies computed with numpy on the predictions' signs, every column's
  strength chosen on validation (ties to the stronger penalty); the random-subspace
  control as one ``Ridge`` per draw and strength on the 1-D projection (each draw has its
  own design, so no multi-output fit covers them). Same shuffles and subspaces as ours, so
  the accuracies can be compared column by column. No bootstrap, intervals or p-values
  (that favours scikit-learn).

Both sides run on one BLAS thread, in the same process, in interleaved rounds (the order
alternates); CPU seconds (``time.process_time``) are reported as the steadier figure on a
shared machine. ``--layers`` restricts both sides to the first layers (3 slices each).

    python bench/probes.py --layers 6 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import mechwidgets as mw
from mechwidgets.probes import sweep as sw
from mechwidgets.probes.linear import DEFAULT_STRENGTHS
from mechwidgets.probes.synthetic import planted_cube

N, DIM, LAYERS, COMPONENTS = 4000, 512, 6, ("resid", "attn", "mlp")
SEEDS, DRAWS, RESAMPLES = 5, 200, 1000
CONTROLS = ("label_shuffle", "random_subspace")
SPEED_TARGET = 20.0
T = TypeVar("T")


def bench_cube():
    """The benchmark cube: signal strength rising from 0.3 to 2.5 over the 18 slices."""
    slices = [(layer, comp) for layer in range(LAYERS) for comp in COMPONENTS]
    strengths = np.linspace(0.3, 2.5, len(slices))
    plant = {key: float(s) for key, s in zip(slices, strengths, strict=True)}
    return planted_cube({"f": plant}, n_samples=N, dim=DIM, n_layers=LAYERS, seed=0)


def cpu(fn: Callable[[], T]) -> tuple[T, float, float]:
    """``fn()``, its CPU seconds and its wall-clock seconds."""
    start, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - start, time.perf_counter() - wall


def ours(cube, layers: tuple[int, ...]):
    return mw.detect(
        cube, label="f", controls=list(CONTROLS), seeds=SEEDS, permutations=DRAWS,
        resamples=RESAMPLES, layers=layers,
    )  # fmt: skip


def selected(val: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per column, test accuracy at the best validation accuracy over the strengths
    (axis 0, ascending); ties go to the stronger penalty, as ours."""
    best = val.shape[0] - 1 - np.argmax(val[::-1], axis=0)
    return np.take_along_axis(test, best[None], axis=0)[0]


def sklearn_protocol(
    cube, layers: tuple[int, ...], spent: dict[str, float]
) -> dict[tuple[int, str], dict]:
    """The same protocol with scikit-learn (see the module docstring); adds the CPU
    seconds of its multi-output part and of its subspace loop to ``spent``."""
    protocol = sw.Protocol(controls=CONTROLS, seeds=tuple(range(SEEDS)), permutations=DRAWS)
    view = sw.read_cube(cube, ["f"], protocol)
    lab = view.labels["f"]
    draw = sw._draws(lab, view, protocol, DIM)  # the same shuffles and subspaces as ours
    tr, va, te = view.masks
    y_tr, y_va, y_te = draw.columns
    alphas = np.asarray(DEFAULT_STRENGTHS) * tr.sum()
    out = {}
    for layer in layers:
        for comp in COMPONENTS:
            start = time.process_time()
            x = cube["act"].sel(layer=layer, component=comp).values.astype(np.float64)
            z = StandardScaler().fit(x[tr]).transform(x)
            val, test = [], []
            for a in alphas:
                fit = Ridge(alpha=a).fit(z[tr], 2.0 * y_tr - 1.0)
                val.append(((fit.predict(z[va]) > 0) == y_va).mean(axis=0))
                test.append(((fit.predict(z[te]) > 0) == y_te).mean(axis=0))
            columns = selected(np.array(val), np.array(test))
            spent["multi_output"] += time.process_time() - start
            start = time.process_time()
            sub_val = np.empty((len(alphas), len(draw.subspace)))
            sub_test = np.empty_like(sub_val)
            target = 2.0 * lab.codes[tr] - 1.0
            for b, basis in enumerate(draw.subspace):
                p = z @ basis.astype(np.float64)[:, None]
                for i, a in enumerate(alphas):
                    fit = Ridge(alpha=a).fit(p[tr], target)
                    sub_val[i, b] = np.mean((fit.predict(p[va]) > 0) == lab.codes[va])
                    sub_test[i, b] = np.mean((fit.predict(p[te]) > 0) == lab.codes[te])
            spent["subspace_loop"] += time.process_time() - start
            out[(layer, comp)] = {
                "real": columns[0],
                "label_shuffle": columns[1:],
                "random_subspace": selected(sub_val, sub_test),
            }
    return out


def agreement(res, theirs: dict[tuple[int, str], dict]) -> dict:
    """Column-by-column accuracy differences, ours - scikit-learn."""
    data = res.data.sel(label="f")
    diffs: dict[str, list[np.ndarray]] = {"real": [], "label_shuffle": [], "random_subspace": []}
    for (layer, comp), cols in theirs.items():
        at = data.sel(layer=layer, component=comp)
        diffs["real"].append(at["seed_score"].sel(control="none").values[:1] - cols["real"])
        for c in CONTROLS:
            mine = at["null"].sel(control=c).values.reshape(-1)  # seed-major, as the draws
            diffs[c].append(mine - cols[c])
    out = {}
    for key, parts in diffs.items():
        d = np.concatenate(parts)
        out[key] = {
            "columns": int(d.size),
            "identical_share": float(np.mean(d == 0)),
            "max_abs_points": float(np.abs(d).max() * 100),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=LAYERS, help="layers (3 slices each)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--json", help="write the numbers to this file")
    parser.add_argument("--table", help="write our result table (CSV) to this file")
    args = parser.parse_args()
    cube = bench_cube().load()
    layers = tuple(range(args.layers))
    times: dict[str, list[float]] = {"ours": [], "sklearn": []}
    walls: dict[str, list[float]] = {"ours": [], "sklearn": []}
    res = theirs = None
    spent = {"multi_output": 0.0, "subspace_loop": 0.0}
    with threadpool_limits(1):
        ours(cube, layers[:1])  # warm-up: the first detect imports the model stack
        for r in range(args.rounds):
            order = ("ours", "sklearn") if r % 2 == 0 else ("sklearn", "ours")
            for side in order:
                if side == "ours":
                    res, c, w = cpu(lambda: ours(cube, layers))
                else:
                    theirs, c, w = cpu(lambda: sklearn_protocol(cube, layers, spent))
                times[side].append(c)
                walls[side].append(w)
    med = {k: statistics.median(v) for k, v in times.items()}
    report = {
        "slices": len(layers) * len(COMPONENTS),
        "rounds": args.rounds,
        "cpu_s": times,
        "wall_s": walls,
        "ratio_median_cpu": med["sklearn"] / med["ours"],
        "ratio_per_round": [s / o for o, s in zip(times["ours"], times["sklearn"], strict=True)],
        "target": SPEED_TARGET,
        "sklearn_parts_cpu_s_per_round": {k: v / args.rounds for k, v in spent.items()},
        "agreement": agreement(res, theirs),
        "load_average": os.getloadavg(),
    }
    print(
        f"{report['slices']} slices, {args.rounds} interleaved rounds, one thread per side, "
        f"load average {report['load_average'][0]:.1f}\n"
        f"ours (mw.detect, full protocol): CPU {med['ours']:.2f} s (median; "
        f"{', '.join(f'{t:.2f}' for t in times['ours'])})\n"
        f"scikit-learn (multi-output Ridge + subspace loop): CPU {med['sklearn']:.2f} s "
        f"({', '.join(f'{t:.2f}' for t in times['sklearn'])}; per round "
        f"{spent['multi_output'] / args.rounds:.2f} s multi-output, "
        f"{spent['subspace_loop'] / args.rounds:.2f} s subspace loop)\n"
        f"measured ratio {report['ratio_median_cpu']:.1f}x   (target >= {SPEED_TARGET:.0f}x)\n"
        f"accuracies, ours - scikit-learn: {json.dumps(report['agreement'])}"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    if args.table and res is not None:
        res.table.to_csv(args.table)


if __name__ == "__main__":
    main()
