"""Probe protocol speed and agreement against a loop of scikit-learn fits (BENCHMARKS.md, "Probes").

The full ``detect`` protocol on N = 4,000 samples (2,400 / 800 / 800 train / val / test),
d = 512, 18 slices (6 layers x resid / attn / mlp), a binary label planted at a strength
that rises over the slices (test accuracies ~0.52 to ~0.97): standardise on train, L2
strength chosen from 8 on validation, label-shuffle and random-subspace controls, 5
seeds x 200 draws per control for p-values, 1,000 bootstrap resamples.

- ours: ``mw.detect`` end to end (slices, controls, bootstrap, p-values, table).
- scikit-learn loop: the same protocol with one ``LogisticRegression`` (lbfgs) per slice,
  draw and strength: 18 x (8 + 5 x 200 x 8 x 2) = 288,144 fits. Timed on a subset (the 8
  real fits of every slice, and ``--draws`` draws of each control on ``--slices`` slices)
  and extrapolated linearly; the loop's bootstrap and p-values are not counted, which
  favours the loop.
- agreement: the real probe's test accuracy, ours against the scikit-learn protocol, on
  every slice; target: within 1 point.

    python bench/probes.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

import mechwidgets as mw
from mechwidgets.probes.controls import random_subspaces, shuffled_labels
from mechwidgets.probes.linear import DEFAULT_STRENGTHS, LOGISTIC_C, RidgePath
from mechwidgets.probes.synthetic import planted_cube

N, DIM, LAYERS, COMPONENTS = 4000, 512, 6, ("resid", "attn", "mlp")
SEEDS, DRAWS, RESAMPLES = 5, 200, 1000
SPEED_TARGET = 10.0
AGREEMENT_TARGET = 0.01


def bench_cube():
    """The benchmark cube: signal strength rising from 0.3 to 2.5 over the 18 slices."""
    slices = [(layer, comp) for layer in range(LAYERS) for comp in COMPONENTS]
    strengths = np.linspace(0.3, 2.5, len(slices))
    plant = {key: float(s) for key, s in zip(slices, strengths, strict=True)}
    return planted_cube({"f": plant}, n_samples=N, dim=DIM, n_layers=LAYERS, seed=0)


def sklearn_path(z: np.ndarray, y: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """``(2, 8)`` val and test accuracy of scikit-learn logistic fits at the 8 strengths."""
    tr, va, te = masks
    out = np.empty((2, len(DEFAULT_STRENGTHS)))
    for i, rel in enumerate(DEFAULT_STRENGTHS):
        fit = LogisticRegression(C=LOGISTIC_C / (rel * tr.sum()), max_iter=1000)
        fit = fit.fit(z[tr], y[tr])
        out[:, i] = fit.score(z[va], y[va]), fit.score(z[te], y[te])
    return out


def selected(path: np.ndarray) -> float:
    """Test accuracy at the best validation accuracy (ties: the stronger penalty, as ours)."""
    return float(path[1, len(path[0]) - 1 - np.argmax(path[0, ::-1])])


def ridge_path(z: np.ndarray, y: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """The same ``(2, 8)`` table for our ridge classifier (one eigendecomposition)."""
    tr, va, te = masks
    path = RidgePath(z[tr][None])
    path.fit((2.0 * y[tr] - 1.0)[None, :, None], np.asarray(DEFAULT_STRENGTHS) * tr.sum())
    out = np.empty((2, len(DEFAULT_STRENGTHS)))
    for i in range(len(DEFAULT_STRENGTHS)):
        for row, mask in enumerate((va, te)):
            dec = path.decision(path.project(z[mask][None]), np.full((1, 1), i))[0, :, 0]
            out[row, i] = np.mean((dec > 0) == y[mask])
    return out


def standardised(cube, layer: int, comp: str, train: np.ndarray) -> np.ndarray:
    x = cube["act"].sel(layer=layer, component=comp).values.astype(np.float64)
    return (x - x[train].mean(0)) / x[train].std(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads for both sides")
    parser.add_argument("--draws", type=int, default=10, help="timed control draws per slice")
    parser.add_argument("--slices", type=int, default=3, help="slices the control draws use")
    parser.add_argument("--json", help="write the numbers to this file")
    args = parser.parse_args()
    with threadpool_limits(args.threads):
        report = run(args)
    lines = [
        f"ours (mw.detect, full protocol):      {report['ours_s']:8.1f} s",
        f"scikit-learn loop (extrapolated):     {report['loop_s']:8.1f} s "
        f"({report['loop_fits']:,} fits; real fits {report['real_fit_s']:.1f} s measured, "
        f"{report['shuffle_draw_s'] * 1e3:.0f} ms per shuffle draw, "
        f"{report['subspace_draw_s'] * 1e3:.0f} ms per subspace draw)",
        f"speed-up:                             {report['speedup']:8.1f}x   "
        f"(target >= {SPEED_TARGET:.0f}x)",
        f"real-probe accuracy at the same strength, |ridge - logistic|: mean "
        f"{report['matched_mean_diff'] * 100:.2f}, max {report['matched_max_diff'] * 100:.2f} "
        "points over 18 x 8 fits",
        f"real-probe accuracy after choosing the strength on val, ours - sklearn: mean "
        f"{report['signed_diff'] * 100:+.2f}, mean |.| {report['mean_diff'] * 100:.2f}, "
        f"max |.| {report['max_diff'] * 100:.2f} points over 18 slices   (target: mean |.| <= "
        f"{AGREEMENT_TARGET * 100:.0f} point; sklearn's own test accuracy moves by up to "
        f"{report['logistic_spread_max'] * 100:.2f} points across its 8 strengths)",
        f"shuffled-label null mean: ours {report['ours_null']:.3f}, sklearn "
        f"{report['sklearn_null']:.3f} (chance 0.5)",
    ]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


def run(args: argparse.Namespace) -> dict:
    cube = bench_cube()
    split = cube["split"].values.astype(str)
    masks = [split == s for s in ("train", "val", "test")]
    y = cube["f"].values

    start = time.perf_counter()
    res = mw.detect(
        cube, label="f", controls=["label_shuffle", "random_subspace"], seeds=SEEDS,
        permutations=DRAWS, resamples=RESAMPLES,
    )  # fmt: skip
    ours_s = time.perf_counter() - start
    real = res.table[res.table["control"] == "none"].set_index(["layer", "component"])["score"]
    ours_null = float(res.data["null"].sel(control="label_shuffle").mean())

    diffs, matched, spread, real_fit_s = [], [], [], 0.0
    for layer in range(LAYERS):
        for comp in COMPONENTS:
            z = standardised(cube, layer, comp, masks[0])
            start = time.perf_counter()
            logistic = sklearn_path(z, y, masks)
            real_fit_s += time.perf_counter() - start
            ridge = ridge_path(z, y, masks)
            diffs.append(real[(layer, comp)] - selected(logistic))
            matched.append(ridge[1] - logistic[1])
            spread.append(np.ptp(logistic[1]))
    fits = LAYERS * len(COMPONENTS) * len(DEFAULT_STRENGTHS)
    diffs, matched = np.array(diffs), np.array(matched)

    rng = np.random.default_rng(0)
    shuffle_s = subspace_s = 0.0
    null = []
    chosen = [(layer, comp) for layer in range(LAYERS) for comp in COMPONENTS]
    chosen = chosen[:: max(1, len(chosen) // args.slices)][: args.slices]
    for layer, comp in chosen:
        z = standardised(cube, layer, comp, masks[0])
        start = time.perf_counter()
        for labels in shuffled_labels(y, split, args.draws, rng).T:
            null.append(selected(sklearn_path(z, labels, masks)))
        shuffle_s += time.perf_counter() - start
        start = time.perf_counter()
        for basis in random_subspaces(DIM, 1, args.draws, rng):
            sklearn_path(z @ basis, y, masks)
        subspace_s += time.perf_counter() - start
    n_timed = len(chosen) * args.draws
    per_shuffle, per_subspace = shuffle_s / n_timed, subspace_s / n_timed
    draws_total = LAYERS * len(COMPONENTS) * SEEDS * DRAWS
    loop_s = real_fit_s + draws_total * (per_shuffle + per_subspace)
    loop_fits = fits + draws_total * 2 * len(DEFAULT_STRENGTHS)
    return {
        "ours_s": ours_s,
        "ours_timings": res.timings,
        "loop_s": loop_s,
        "loop_fits": loop_fits,
        "real_fit_s": real_fit_s,
        "shuffle_draw_s": per_shuffle,
        "subspace_draw_s": per_subspace,
        "timed_draws": n_timed,
        "speedup": loop_s / ours_s,
        "max_diff": float(np.abs(diffs).max()),
        "mean_diff": float(np.abs(diffs).mean()),
        "signed_diff": float(diffs.mean()),
        "matched_mean_diff": float(np.abs(matched).mean()),
        "matched_max_diff": float(np.abs(matched).max()),
        "logistic_spread_max": float(np.max(spread)),
        "ours_null": ours_null,
        "sklearn_null": float(np.mean(null)),
        "ours_scores": [round(float(v), 4) for v in real.values],
        "threads": args.threads,
    }


if __name__ == "__main__":
    main()
