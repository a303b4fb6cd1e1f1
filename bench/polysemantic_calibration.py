"""polysemantic's loading test under the null and on planted neurons, before and after.

"before" is the Pearson loading with a Gaussian tail (the test up to issue 9); "after" is
the test polysemantic runs now: the same loading on normal scores (ranks -> normal
quantiles, the neuron's ties broken at random). Each replicate is one layer of 4,096
neurons and 3 features; p-values are corrected with Holm across all neurons as the action
does. Null designs report two family-wise rates: any neuron flagged polysemantic (>= 2
features at |loading| >= 0.2, the default) and any single loading significant (threshold 0,
the stricter family), with Clopper-Pearson 95% intervals, and how often p < 1e-4 occurs
relative to its nominal rate. The power design plants 32 neurons that load on two
features and reports the share flagged.

    .venv/bin/python bench/polysemantic_calibration.py --reps 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import beta as beta_dist

from mechwidgets.analysis.neurons import (
    count_features,
    feature_loadings,
    loading_z,
    rank_test,
    two_sided_p,
)

N_NEURONS, N_FEATURES, THRESHOLD = 4096, 3, 0.2


def features(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 3)`` features of one kind."""
    if kind == "binary":
        return rng.integers(0, 2, (n, N_FEATURES)).astype(float)
    if kind == "rare binary":
        return (rng.random((n, N_FEATURES)) < 0.1).astype(float)
    if kind == "gaussian":
        return rng.standard_normal((n, N_FEATURES))
    return rng.lognormal(0.0, 1.5, (n, N_FEATURES))


def activations(kind: str, pre: np.ndarray) -> np.ndarray:
    """Neurons from pre-activations ``pre`` (unit-variance noise plus any signal)."""
    if kind == "gaussian":
        return pre
    if kind == "lognormal":
        return np.exp(1.5 * pre)
    if kind == "sparse relu":
        return np.maximum(pre - 1.0, 0.0)  # exactly 0 for ~84% of inputs
    return np.maximum(pre + 1.5, 0.0)  # "relu": 0 for ~7%


def pvalues(method: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(features, neurons)`` p-values of the loadings, by the old or the new test."""
    if method == "after":
        return two_sided_p(rank_test(x, y, rng).z)
    return two_sided_p(loading_z(feature_loadings(x, y), len(x)))


def flags(p: np.ndarray, beta: np.ndarray, threshold: float) -> np.ndarray:
    """Per neuron: how many features count (Holm across neurons, level 0.95)."""
    return count_features(p.T, beta.T, threshold, 0.95, "holm").n_features


def clopper(k: int, n: int) -> tuple[float, float]:
    lo = beta_dist.ppf(0.025, k, n - k + 1) if k else 0.0
    hi = beta_dist.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


def null_design(feat: str, act: str, reps: int, n: int, method: str) -> dict[str, float]:
    poly = anyone = small = 0
    for r in range(reps):
        rng = np.random.default_rng([r, 11])
        y = features(feat, n, rng)
        x = activations(act, rng.standard_normal((n, N_NEURONS)))
        p = pvalues(method, x, y, rng)
        beta = feature_loadings(x, y).beta
        poly += bool((flags(p, beta, THRESHOLD) >= 2).any())
        anyone += bool((flags(p, beta, 0.0) >= 1).any())
        small += int((p < 1e-4).sum())
    return {
        "poly": poly / reps,
        "poly_ci": clopper(poly, reps),
        "any": anyone / reps,
        "any_ci": clopper(anyone, reps),
        "p<1e-4 x nominal": small / (reps * N_FEATURES * N_NEURONS * 1e-4),
    }


def power_design(act: str, weight: float, reps: int, n: int, method: str) -> float:
    """Share of 32 planted two-feature neurons flagged (Gaussian 0/1-coded features)."""
    hit = 0
    for r in range(reps):
        rng = np.random.default_rng([r, 12])
        y = features("binary", n, rng)
        pre = rng.standard_normal((n, N_NEURONS))
        signs = 2.0 * y - 1.0
        for j in range(32):
            a, b = j % 3, (j + 1) % 3
            pre[:, j] += weight * (signs[:, a] + signs[:, b])
        x = activations(act, pre)
        p = pvalues(method, x, y, rng)
        beta = feature_loadings(x, y).beta
        hit += int((flags(p, beta, THRESHOLD)[:32] >= 2).sum())
    return hit / (32 * reps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--methods", default="before,after", help="which tests to run")
    args = parser.parse_args()
    print(
        f"null: {args.reps} replicates x {N_NEURONS} neurons x {N_FEATURES} features, "
        f"n={args.n}; nominal family-wise rate 0.05"
    )
    print(
        "| features | activations | test | FWER polysemantic [95% CI] | FWER any loading "
        "[95% CI] | p<1e-4 / nominal |"
    )
    print("|---|---|---|---|---|---|")
    for feat, act in (
        ("binary", "gaussian"),
        ("gaussian", "gaussian"),
        ("lognormal", "lognormal"),
        ("binary", "sparse relu"),
        ("rare binary", "sparse relu"),
    ):
        for method in args.methods.split(","):
            t = time.time()
            s = null_design(feat, act, args.reps, args.n, method)
            print(
                f"| {feat} | {act} | {method} | {s['poly']:.3f} [{s['poly_ci'][0]:.3f}, "
                f"{s['poly_ci'][1]:.3f}] | {s['any']:.3f} [{s['any_ci'][0]:.3f}, "
                f"{s['any_ci'][1]:.3f}] | {s['p<1e-4 x nominal']:.2f} | "
                f"<!-- {time.time() - t:.0f}s -->",
                flush=True,
            )
    reps = max(4, args.reps // 5)
    print(f"\npower: share of 32 planted two-feature neurons flagged, {reps} replicates")
    print("| activations | weight | " + " | ".join(args.methods.split(",")) + " |")
    print("|---|---|" + "---|" * len(args.methods.split(",")))
    for act, weight in (
        ("relu", 0.3), ("relu", 0.4), ("gaussian", 0.3), ("lognormal", 0.3),
        ("sparse relu", 0.5), ("sparse relu", 0.8),
    ):  # fmt: skip
        shares = [power_design(act, weight, reps, args.n, m) for m in args.methods.split(",")]
        print(f"| {act} | {weight} | " + " | ".join(f"{v:.3f}" for v in shares) + " |", flush=True)


if __name__ == "__main__":
    main()
