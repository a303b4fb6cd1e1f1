"""The default ridge probe against the logistic probe, slice by slice, on realistic cubes.

Both probes run the same ``detect`` protocol (standardise on train, L2 strength chosen
from the same 8 values on validation, test accuracy); only ``probe=`` differs. Cubes:

- planted: ``planted_cube`` with held-out word types (types disjoint between splits, each
  adding a random offset), one binary label planted at strengths 0.5 / 1 / 1.5 / 2 / 3 over
  5 layers (test accuracy ~0.55 to 1.0), at N = 300 to 4,000 items and d = 64 to 768;
- toy-grammar: the built-in ``grammar_all`` task on the toy model, every layer of the
  residual stream, its four labels (held-out word types by construction).

Printed: per cube, the ridge - logistic test accuracy over slices (mean, mean |.|, max |.|,
share within 1 point), and the largest gap among slices either probe scores >= 0.9; then,
at matched strength (each of the 8, no selection: ``fit_probe`` with one strength), the
largest |ridge - logistic| over the cube's slices, per strength (``--matched``; skips the
N = 4,000, d = 768 cube, whose logistic fits take minutes).

    .venv/bin/python bench/probe_agreement.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import mechwidgets as mw
from mechwidgets.probes.linear import DEFAULT_STRENGTHS, fit_probe
from mechwidgets.probes.synthetic import planted_cube

PLANTED = ((300, 64), (1000, 64), (1000, 256), (4000, 64), (1000, 768), (4000, 768))
STRENGTHS = (0.5, 1.0, 1.5, 2.0, 3.0)
PROTOCOL = {"controls": [], "seeds": 1, "resamples": 100}


def scores(cube, label: str, probe: str) -> np.ndarray:
    """Test accuracy of the real probe per (layer, component) slice."""
    res = mw.detect(cube, label=label, probe=probe, **PROTOCOL)
    real = res.real.sort_values(["layer", "component"])
    return real["score"].to_numpy()


def matched(cube, label: str) -> np.ndarray:
    """``(strengths,)`` largest |ridge - logistic| test accuracy (points) over slices."""
    split = np.asarray(cube["split"].values).astype(str)
    y = np.asarray(cube[label].values)
    gaps = []
    for layer in cube["layer"].values:
        for comp in cube["component"].values:
            x = cube["act"].sel(layer=layer, component=comp).values
            one = [np.array([s]) for s in DEFAULT_STRENGTHS]
            ridge = [fit_probe(x, y, split, strengths=s).test_score for s in one]
            logistic = [
                fit_probe(x, y, split, probe="logistic", strengths=s).test_score for s in one
            ]
            gaps.append(100 * np.abs(np.subtract(ridge, logistic)))
    return np.max(gaps, axis=0)


def row(name: str, ridge: np.ndarray, logistic: np.ndarray, seconds: float) -> str:
    diff = 100 * (ridge - logistic)
    high = (ridge >= 0.9) | (logistic >= 0.9)
    top = f"{np.abs(diff[high]).max():.2f}" if high.any() else "-"
    return (
        f"| {name} | {diff.size} | {diff.mean():+.2f} | {np.abs(diff).mean():.2f} | "
        f"{np.abs(diff).max():.2f} | {np.mean(np.abs(diff) <= 1):.2f} | {top} | {seconds:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grammar-n", type=int, default=1500)
    parser.add_argument("--skip-planted", action="store_true", help="only the toy-grammar cube")
    parser.add_argument("--matched", action="store_true", help="only the matched-strength table")
    args = parser.parse_args()
    if args.matched:
        return matched_table(args)
    print(
        "| cube | slices | mean ridge - logistic (points) | mean abs | max abs | share "
        "within 1 point | max abs where acc >= 0.9 | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    pooled = []
    for n, dim in () if args.skip_planted else PLANTED:
        cube = planted_cube(
            {"y": dict(enumerate(STRENGTHS))}, n_samples=n, dim=dim, components=("resid",),
            seed=n + dim,
        )  # fmt: skip
        t = time.perf_counter()
        ridge, logistic = scores(cube, "y", "ridge"), scores(cube, "y", "logistic")
        pooled.append((ridge, logistic))
        print(row(f"planted N={n} d={dim}", ridge, logistic, time.perf_counter() - t), flush=True)
    model = mw.load_model("toy-grammar")
    task = mw.get_task("grammar_all", n=args.grammar_n, seed=0)
    cube = mw.extract(model, task, components=["resid"], cache=False)
    for label in ("subject_number", "animacy", "sentiment", "tense"):
        t = time.perf_counter()
        ridge, logistic = scores(cube, label, "ridge"), scores(cube, label, "logistic")
        pooled.append((ridge, logistic))
        name = f"toy-grammar {label} (N={len(task)}, d={cube.sizes['dim']})"
        print(row(name, ridge, logistic, time.perf_counter() - t), flush=True)
    ridge, logistic = (np.concatenate(v) for v in zip(*pooled, strict=True))
    print(row("all slices", ridge, logistic, 0))


def matched_table(args: argparse.Namespace) -> None:
    """Largest |ridge - logistic| per strength (as a multiple of n_train), per cube."""
    head = " | ".join(f"{s:.0e}" for s in DEFAULT_STRENGTHS)
    print(f"| cube | {head} |")
    print("|---|" + "---|" * len(DEFAULT_STRENGTHS))
    for n, dim in () if args.skip_planted else PLANTED[:-1]:
        cube = planted_cube(
            {"y": dict(enumerate(STRENGTHS))}, n_samples=n, dim=dim, components=("resid",),
            seed=n + dim,
        )  # fmt: skip
        gaps = " | ".join(f"{g:.2f}" for g in matched(cube, "y"))
        print(f"| planted N={n} d={dim} | {gaps} |", flush=True)
    model = mw.load_model("toy-grammar")
    task = mw.get_task("grammar_all", n=args.grammar_n, seed=0)
    cube = mw.extract(model, task, components=["resid"], cache=False)
    for label in ("subject_number", "animacy", "sentiment", "tense"):
        gaps = " | ".join(f"{g:.2f}" for g in matched(cube, label))
        print(f"| toy-grammar {label} | {gaps} |", flush=True)


if __name__ == "__main__":
    main()
