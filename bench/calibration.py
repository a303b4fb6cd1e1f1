"""Calibration of the public statistics on synthetic cubes whose truth is known (BENCHMARKS.md,
"Calibration").

Every design builds replicate cubes with a known answer, runs the public API on each
(``mw.detect``, ``compare``, ``collapse``, ``polysemantic``) and counts how often the
result is wrong (error rates against their nominal level), how often an interval covers
the truth (coverage against 95%) or how often a planted effect is found (power). Each
rate is printed with its Clopper-Pearson interval next to the nominal level and the target.

- ``iid_null_*``: random balanced labels on Gaussian, t(3), lognormal, anisotropic and
  low-rank noise: detect's family-wise false-positive rate; the best slice's interval
  covering chance.
- ``clustered_null_*``: items nested in word types (20 x 50 or 100 x 10, types split
  60/20/20 between train/val/test), the label a coin per type (balanced per split), each
  type a random offset of 0.3 or 1.0 sd: nothing transfers to new types, so the truth is
  chance. ``clustered_signal``: the same with a planted direction that does transfer.
- ``iid_signal``: independent items, one planted slice of four: detect's power.
- ``ceiling_a<acc>_n<test>``: the label is a planted feature flipped at rate ``1 - acc``,
  so a probe that reads the feature scores ``acc`` in the population exactly; five
  slices read it through extra flips of 0, 0, 1, 3 and 10% of items. Coverage of the
  marginal 95% interval (slice 0) and of the simultaneous intervals (all five).
- ``many_slices``: 12 layers x 12 heads, every slice decoded at ~0.99: all 144
  significant after Holm at the defaults?
- ``subspace_null``: coin-flip labels on noise: the random-subspace control's FWER.
- ``poly_null_*``: 0/1, Gaussian or lognormal features unrelated to 4,096 neurons
  (Gaussian, ReLU or lognormal): polysemantic's FWER. ``poly_power``: planted
  two-feature neurons among noise neurons: the share found.
- ``compare_null`` / ``compare_power``: two labels on the same / a shifted layer ramp.
- ``collapse_null`` / ``collapse_drop``: a flat curve / a planted final-layer drop.

    python bench/calibration.py --reps 200 [--design NAME ...] [--jobs N] [--out FILE.json]

``--baseline FILE.json`` adds the numbers of an earlier run (e.g. before a fix) as a
column; power passes when it is not significantly below the baseline's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from scipy.stats import beta as beta_dist
from threadpoolctl import threadpool_limits

import mechwidgets as mw

SPLITS = ("train", "val", "test")
NOMINAL_ALPHA = 0.05
NOMINAL_COVERAGE = 0.95
#: the issue's target for every coverage
COVERAGE_TARGET = 0.93
#: the per-neuron p-value threshold of the polysemantic tail check
TAIL = 1e-3
#: the measure kinds and how each passes
KINDS = ("error", "coverage", "power", "all", "check")
Hit = bool | tuple[int, int]


# ----------------------------------------------------------------------------- statistics


def clopper_pearson(hits: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial rate ``hits / trials``."""
    a = (1 - level) / 2
    lo = 0.0 if hits == 0 else float(beta_dist.ppf(a, hits, trials - hits + 1))
    hi = 1.0 if hits == trials else float(beta_dist.ppf(1 - a, hits + 1, trials - hits))
    return lo, hi


@dataclass(frozen=True)
class Measure:
    """One rate a design measures: what it is, its kind and its nominal level."""

    label: str
    kind: str  # error | coverage | power | all | check
    nominal: float | None = None

    @property
    def target(self) -> str:
        if self.kind == "error":
            return f"<= {self.nominal:g}"
        if self.kind == "coverage":
            return f">= {COVERAGE_TARGET:g}"
        return "no worse than before" if self.kind == "power" else "1"


@dataclass
class Outcome:
    """A measured rate with its Clopper-Pearson interval, nominal level and verdict."""

    design: str
    measure: str
    label: str
    kind: str
    hits: int
    trials: int
    reps: int
    nominal: float | None
    target: str
    seconds: float
    baseline: float | None = None
    interval: tuple[float, float] = field(default=(0.0, 1.0))

    def __post_init__(self) -> None:
        self.interval = clopper_pearson(self.hits, self.trials)

    @property
    def rate(self) -> float:
        return self.hits / self.trials if self.trials else float("nan")

    @property
    def passed(self) -> bool | None:
        """error: interval contains the nominal level or lies below it; coverage: >= 0.93;
        power: not significantly below the baseline (None without one); all/check: 1."""
        if self.kind == "error":
            return self.interval[0] <= float(self.nominal or 0)
        if self.kind == "coverage":
            return self.rate >= COVERAGE_TARGET
        if self.kind == "power":
            return None if self.baseline is None else self.interval[1] >= self.baseline
        return self.hits == self.trials

    def row(self) -> str:
        lo, hi = self.interval
        nominal = "" if self.nominal is None else f"{self.nominal:g}"
        digits = 5 if self.nominal is not None and self.nominal < 0.01 else 3
        base = "" if self.baseline is None else f"{self.baseline:.{digits}f}"
        ok = {True: "pass", False: "FAIL", None: "-"}[self.passed]
        return (
            f"| {self.design} | {self.label} | {self.reps} | **{self.rate:.{digits}f}** "
            f"[{lo:.{digits}f}, {hi:.{digits}f}] | {nominal} | {self.target} | {base} | {ok} |"
        )


HEADER = (
    "| design | measure | R | rate [95% CP] | nominal | target | before | pass |\n"
    "|---|---|---|---|---|---|---|---|"
)


# ----------------------------------------------------------------------------- cubes


def random_split(rng: np.random.Generator, sizes: Sequence[int]) -> np.ndarray:
    """A shuffled split column with ``sizes`` train / val / test items."""
    return rng.permutation(np.repeat(np.array(SPLITS), sizes))


def balanced_labels(rng: np.random.Generator, split: np.ndarray) -> np.ndarray:
    """0/1 labels balanced within every split (chance is exactly 0.5)."""
    y = np.empty(split.size, int)
    for name in SPLITS:
        where = np.flatnonzero(split == name)
        y[where] = rng.permutation(np.arange(where.size) % 2)
    return y


def noise(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Noise ``(sample, layer, component, dim)`` of one shape family."""
    n, *_, d = shape
    if kind == "gaussian":
        return rng.standard_normal(shape)
    if kind == "t3":
        return rng.standard_t(3, shape)
    if kind == "lognormal":
        return np.exp(rng.standard_normal(shape))
    if kind == "anisotropic":  # variances over four decades, in a random basis
        rot, _ = np.linalg.qr(rng.standard_normal((d, d)))
        return (rng.standard_normal(shape) * np.logspace(0, -2, d)) @ rot
    if kind == "lowrank":  # two shared factors carry most of the variance
        factors = rng.standard_normal((*shape[:-1], 2))
        return 3 * factors @ rng.standard_normal((2, d)) + 0.3 * rng.standard_normal(shape)
    raise ValueError(f"unknown noise {kind!r}")


def make_cube(
    act: np.ndarray,
    split: np.ndarray,
    labels: Mapping[str, np.ndarray],
    components: Sequence[str] | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
) -> xr.Dataset:
    """A cube following the cube contract from ``act`` ``(sample, layer, component, dim)``."""
    n, n_layers, n_comp, _ = act.shape
    comps = list(components or (["resid"] if n_comp == 1 else [f"h{i}" for i in range(n_comp)]))
    data = {name: ("sample", np.asarray(v)) for name, v in {**labels, **(extra or {})}.items()}
    return xr.Dataset(
        {"act": (("sample", "layer", "component", "dim"), act.astype(np.float32)), **data},
        coords={
            "split": ("sample", split),
            "sample_id": ("sample", np.arange(n)),
            "layer": np.arange(n_layers),
            "component": comps,
        },
    )


def plant(rng: np.random.Generator, act: np.ndarray, y: np.ndarray, strengths: np.ndarray) -> None:
    """Add ``strength * (+-1 code) * u`` to every slice, ``u`` a random unit direction per
    slice; ``strengths`` is ``(layer, component)``. At strength s a binary label's Bayes
    accuracy is Phi(s)."""
    sign = 2.0 * y - 1.0
    for (li, ci), s in np.ndenumerate(strengths):
        if s:
            u = rng.standard_normal(act.shape[-1])
            act[:, li, ci] += s * sign[:, None] * (u / np.linalg.norm(u))


def iid_cube(
    rng: np.random.Generator,
    kind: str = "gaussian",
    strengths: np.ndarray | None = None,
    sizes: Sequence[int] = (180, 60, 60),
    dim: int = 8,
    coin: bool = False,
) -> xr.Dataset:
    """Independent items, one 0/1 label ``y`` (balanced per split, or a coin per item)
    planted at ``strengths`` ``(layer, component)`` (default: 4 layers of pure noise)."""
    strengths = np.zeros((4, 1)) if strengths is None else np.asarray(strengths, float)
    split = random_split(rng, sizes)
    y = rng.integers(0, 2, split.size) if coin else balanced_labels(rng, split)
    act = noise(rng, (split.size, *strengths.shape, dim), kind)
    plant(rng, act, y, strengths)
    return make_cube(act, split, {"y": y})


def clustered_cube(
    rng: np.random.Generator,
    n_types: int,
    per_type: int,
    offset_sd: float,
    strength: float = 0.0,
    dim: int = 16,
    n_layers: int = 4,
) -> xr.Dataset:
    """Items nested in word types (``wordtype_y``), types split 60/20/20, ``y`` one coin per
    type (half the types of each split are class 1), each type a random offset of
    ``offset_sd`` per dim shared by its items in every slice, plus ``strength`` of a
    direction that does transfer to new types."""
    counts = np.round(np.array([0.6, 0.2, 0.2]) * n_types).astype(int)
    type_split = rng.permutation(np.repeat(np.array(SPLITS), counts))
    type_y = balanced_labels(rng, type_split)
    types = np.repeat(np.arange(n_types), per_type)
    act = rng.standard_normal((types.size, n_layers, 1, dim))
    act += offset_sd * rng.standard_normal((n_types, 1, 1, dim))[types]
    y = type_y[types]
    plant(rng, act, y, np.full((n_layers, 1), strength))
    return make_cube(act, type_split[types], {"y": y}, extra={"wordtype_y": types})


#: the extra item flips of the five ceiling slices (slice 0 reads the feature as it is)
CEILING_FLIPS = (0.0, 0.0, 0.01, 0.03, 0.1)


def ceiling_cube(
    rng: np.random.Generator, accuracy: float, n_test: int, dim: int = 4
) -> tuple[xr.Dataset, np.ndarray, np.ndarray]:
    """A label whose best probe scores ``accuracy`` in the population, by construction.

    A balanced feature ``z``; the label ``y`` is ``z`` flipped for a share ``1 - accuracy``
    of items. Slice k holds ``w_k`` (``z`` with a further share
    ``CEILING_FLIPS[k]`` of items flipped) 24 sd apart in one dim, so a probe predicts
    ``w_k`` without error (checked) and its population accuracy is
    ``(1 - q) * accuracy + q * (1 - accuracy)``.

    Returns the cube, the five true accuracies and ``w_0`` on the test items.
    """
    split = random_split(rng, (400, 200, n_test))
    z = balanced_labels(rng, split)
    # test items flip at random (their accuracy varies as a sample's would); train and val
    # flip the same number of items of each class, so the labels stay exactly balanced and
    # the probe's intercept is 0 even when a large L2 strength shrinks its slope
    flip = rng.random(split.size) > accuracy
    for name in SPLITS[:2]:
        for cls in (0, 1):
            rows = rng.permutation(np.flatnonzero((split == name) & (z == cls)))
            flip[rows] = np.arange(rows.size) < round((1 - accuracy) * rows.size)
    y = z ^ flip
    act = rng.standard_normal((split.size, len(CEILING_FLIPS), 1, dim))
    flips = np.asarray(CEILING_FLIPS)
    w = z[:, None] ^ (rng.random((split.size, flips.size)) < flips)
    act[:, :, 0, 0] += 12.0 * (2.0 * w - 1.0)
    truth = (1 - flips) * accuracy + flips * (1 - accuracy)
    return make_cube(act, split, {"y": y}), truth, w[split == "test", 0]


def neuron_cube(
    rng: np.random.Generator,
    kind: str,
    n: int = 400,
    n_neurons: int = 4096,
    n_features: int = 4,
    planted: Mapping[int, Mapping[int, float]] | None = None,
) -> xr.Dataset:
    """A ``neurons`` cube (one layer) with features ``f0..`` unrelated to the neurons, except
    ``planted`` neurons ({neuron: {feature: weight}}, added to the pre-activation).

    ``binary``: 0/1 features, ReLU(Gaussian + 0.5) neurons; ``gaussian``: Gaussian both;
    ``lognormal``: exp(standard normal) both (heavy right tails).
    """
    split = random_split(rng, np.round(np.array([0.6, 0.2, 0.2]) * n).astype(int))
    if kind == "binary":
        feats = np.stack([balanced_labels(rng, split) for _ in range(n_features)], axis=1)
        signal = 2.0 * feats - 1.0
    else:
        signal = rng.standard_normal((n, n_features))
        feats = np.exp(signal) if kind == "lognormal" else signal
    pre = rng.standard_normal((n, n_neurons))
    for j, loads in (planted or {}).items():
        for f, w in loads.items():
            pre[:, j] += w * signal[:, f]
    acts = {"binary": np.maximum(pre + 0.5, 0.0), "gaussian": pre, "lognormal": np.exp(pre)}[kind]
    return xr.Dataset(
        {"neurons": (("sample", "layer", "neuron"), acts[:, None, :].astype(np.float32))},
        coords={
            "layer": [0],
            "neuron": np.arange(n_neurons),
            "split": ("sample", split),
            **{f"f{i}": ("sample", feats[:, i]) for i in range(n_features)},
        },
    )


# ----------------------------------------------------------------------------- reading


def real_rows(res: Any) -> Any:
    return res.table[res.table["control"] == "none"]


def covers(
    rows: Any, truth: float | np.ndarray, low: str = "ci_low", high: str = "ci_high"
) -> bool:
    """Whether every row's interval ``[low, high]`` holds its truth."""
    lo, hi = rows[low].to_numpy(), rows[high].to_numpy()
    return bool(np.all((lo <= truth + 1e-12) & (truth - 1e-12 <= hi)))


def alpha_of(res: Any) -> float:
    return 1 - float(res.data.attrs["level"])


# ----------------------------------------------------------------------------- designs


@dataclass(frozen=True)
class Design:
    """A replicate function ``rep -> {measure: hit}`` and the measures it reports."""

    name: str
    replicate: Callable[[np.random.Generator, int], dict[str, Hit]]
    measures: dict[str, Measure]


def _detect_null(rng: np.random.Generator, rep: int, cube: xr.Dataset) -> dict[str, Hit]:
    """FWER of the verdict; coverage of chance by layer 0's interval and by the
    simultaneous intervals of all slices."""
    res = mw.detect(cube, label="y", seed=rep)
    rows = real_rows(res).sort_values("layer")
    return {
        "fwer": res.summary()["n_significant"] > 0,
        "covers": covers(rows.iloc[[0]], 0.5),
        "covers_adj": covers(rows, 0.5, "ci_adj_low", "ci_adj_high"),
    }


NULL_MEASURES = {
    "fwer": Measure("detect FWER (any of 4 slices significant)", "error", NOMINAL_ALPHA),
    "covers": Measure("layer 0's 95% interval covers chance", "coverage", NOMINAL_COVERAGE),
    "covers_adj": Measure(
        "simultaneous intervals (4 slices) cover chance", "coverage", NOMINAL_COVERAGE
    ),
}


def _iid_null(kind: str) -> Callable[[np.random.Generator, int], dict[str, Hit]]:
    return lambda rng, rep: _detect_null(rng, rep, iid_cube(rng, kind))


def _clustered_null(
    n_types: int, per_type: int, offset: float
) -> Callable[[np.random.Generator, int], dict[str, Hit]]:
    return lambda rng, rep: _detect_null(rng, rep, clustered_cube(rng, n_types, per_type, offset))


def _clustered_signal(rng: np.random.Generator, rep: int) -> dict[str, Hit]:
    cube = clustered_cube(rng, 100, 10, 1.0, strength=1.0)
    return {"power": mw.detect(cube, label="y", seed=rep).summary()["n_significant"] > 0}


def _iid_signal(rng: np.random.Generator, rep: int) -> dict[str, Hit]:
    cube = iid_cube(rng, strengths=np.array([[0.0], [0.6], [0.0], [0.0]]))
    rows = real_rows(mw.detect(cube, label="y", seed=rep))
    p_adj = rows.set_index("layer")["p_adj"]
    return {"power": bool(p_adj[1] < NOMINAL_ALPHA), "fwer": bool((p_adj.drop(1) < 0.05).any())}


def _ceiling(accuracy: float, n_test: int) -> Callable[[np.random.Generator, int], dict[str, Hit]]:
    def replicate(rng: np.random.Generator, rep: int) -> dict[str, Hit]:
        cube, truth, w0 = ceiling_cube(rng, accuracy, n_test)
        res = mw.detect(cube, label="y", controls=["label_shuffle"], permutations=20, seed=rep)
        rows = real_rows(res).sort_values("layer")
        out: dict[str, Hit] = {
            "covers": covers(rows.iloc[[0]], truth[0]),
            "covers_adj": covers(rows, truth, "ci_adj_low", "ci_adj_high"),
        }
        if accuracy > 0.5:  # the truth holds only if the probe reads the feature exactly
            pred = res.predictions
            at0 = pred[(pred["layer"] == 0)]
            out["as_designed"] = bool((at0["y_pred"].to_numpy() == w0).all())
        return out

    return replicate


def _many_slices(rng: np.random.Generator, rep: int) -> dict[str, Hit]:
    cube = iid_cube(rng, strengths=np.full((12, 12), 2.5), sizes=(240, 80, 80), dim=8)
    res = mw.detect(cube, label="y", seed=rep)
    s = res.summary()
    return {
        "all": s["n_significant"] == s["n_slices"] == 144,
        # each slice's own test accuracy is a binomial draw around ~0.99 on 80 items, so
        # the minimum of 144 of them is no check of the design; their mean is
        "mean_accuracy": bool(real_rows(res)["score"].mean() >= 0.98),
        "verdict": "not decodable" not in res.verdict(),
    }


def _subspace_null(rng: np.random.Generator, rep: int) -> dict[str, Hit]:
    cube = iid_cube(rng, strengths=np.zeros((6, 1)), sizes=(120, 40, 40), dim=16, coin=True)
    res = mw.detect(cube, label="y", controls=["random_subspace"], seed=rep)
    rows = res.table[res.table["control"] == "random_subspace"]
    return {"fwer": bool((rows["p_adj"] < alpha_of(res)).any())}


def _poly_null(kind: str) -> Callable[[np.random.Generator, int], dict[str, Hit]]:
    def replicate(rng: np.random.Generator, rep: int) -> dict[str, Hit]:
        res = mw.polysemantic(neuron_cube(rng, kind), seed=rep)
        p = res.data["p_value"].sel(feature="f0").values.ravel()
        # given the features, neurons are independent: a valid p-value puts a binomial
        # count of at most 0.1% of them below 0.001
        return {
            "fwer": res.summary()["n_polysemantic"] > 0,
            "tail": (int((p < TAIL).sum()), p.size),
        }

    return replicate


#: planted polysemantic neurons: two features each at weight 0.3 (binary features)
POLY_PLANTED = {j: {j % 4: 0.3, (j + 1) % 4: 0.3} for j in range(16)}


def _poly_power(rng: np.random.Generator, rep: int) -> dict[str, Hit]:
    cube = neuron_cube(rng, "binary", n_neurons=1024, planted=POLY_PLANTED)
    table = mw.polysemantic(cube, seed=rep).table.set_index("neuron")
    flagged = table["polysemantic"]
    planted = list(POLY_PLANTED)
    return {
        "power": (int(flagged.loc[planted].sum()), len(planted)),
        "fwer": bool(flagged.drop(planted).any()),
    }


#: compare's layer ramps: 'a' and 'b' identical (null), or 'b' two layers later (power)
COMPARE_RAMP = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.0])


def _two_label_cube(rng: np.random.Generator, shift: int) -> xr.Dataset:
    split = random_split(rng, (240, 80, 80))
    ya, yb = balanced_labels(rng, split), balanced_labels(rng, split)
    act = rng.standard_normal((split.size, COMPARE_RAMP.size, 1, 8))
    later = np.concatenate([np.zeros(shift), COMPARE_RAMP[: COMPARE_RAMP.size - shift]])
    plant(rng, act, ya, COMPARE_RAMP[:, None])
    plant(rng, act, yb, later[:, None])
    return make_cube(act, split, {"a": ya, "b": yb})


def _compare(shift: int) -> Callable[[np.random.Generator, int], dict[str, Hit]]:
    def replicate(rng: np.random.Generator, rep: int) -> dict[str, Hit]:
        s = mw.compare(_two_label_cube(rng, shift), labels=["a", "b"], seed=rep).summary()
        out: dict[str, Hit] = {"onset": bool(s["significant"]), "peak": bool(s["peak_significant"])}
        areas = [t["area_p_adj"] for t in s["tests"] if "area_p_adj" in t]
        if areas:  # the area-difference test, where compare has one
            out["area"] = bool(min(areas) < NOMINAL_ALPHA)
        return out

    return replicate


def _collapse(final: float) -> Callable[[np.random.Generator, int], dict[str, Hit]]:
    def replicate(rng: np.random.Generator, rep: int) -> dict[str, Hit]:
        strengths = np.array([[1.0], [2.0], [2.0], [2.0], [final]])
        cube = iid_cube(rng, strengths=strengths, sizes=(240, 80, 80))
        s = mw.collapse(cube, label="y", seed=rep).summary()
        final_drop = [d for d in s["drop_points"] if d["to_layer"] == 4]
        return {
            "collapsed": bool(s["collapsed"]),
            "drops": bool(s["drop_points"]),
            "final_drop": bool(final_drop),
        }

    return replicate


def designs() -> dict[str, Design]:
    """Every design, by name."""
    out: list[Design] = []
    for kind in ("gaussian", "t3", "lognormal", "anisotropic", "lowrank"):
        out.append(Design(f"iid_null_{kind}", _iid_null(kind), NULL_MEASURES))
    for n_types, per_type, offset in ((20, 50, 0.3), (20, 50, 1.0), (100, 10, 1.0)):
        name = f"clustered_null_{n_types}x{per_type}_sd{offset:g}"
        out.append(Design(name, _clustered_null(n_types, per_type, offset), NULL_MEASURES))
    out.append(
        Design(
            "clustered_signal_100x10",
            _clustered_signal,
            {"power": Measure("detect power (planted, transfers to new types)", "power")},
        )
    )
    out.append(
        Design(
            "iid_signal",
            _iid_signal,
            {
                "power": Measure("power on the planted slice (Holm)", "power"),
                "fwer": Measure("FWER on the 3 noise slices", "error", NOMINAL_ALPHA),
            },
        )
    )
    for acc in (0.5, 0.9, 0.97, 0.99, 0.999):
        for n_test in (40, 120, 400, 2000):
            measures = {
                "covers": Measure("95% interval covers the truth", "coverage", NOMINAL_COVERAGE),
                "covers_adj": Measure(
                    "simultaneous intervals (5 slices) cover", "coverage", NOMINAL_COVERAGE
                ),
            }
            if acc > 0.5:
                measures["as_designed"] = Measure(
                    "probe predicts the feature (design check)", "check"
                )
            out.append(Design(f"ceiling_a{acc:g}_n{n_test}", _ceiling(acc, n_test), measures))
    out.append(
        Design(
            "many_slices",
            _many_slices,
            {
                "all": Measure("all 144 slices significant (Holm, defaults)", "all"),
                "mean_accuracy": Measure("mean test accuracy >= 0.98 (design check)", "check"),
                "verdict": Measure("verdict does not say 'not decodable'", "all"),
            },
        )
    )
    out.append(
        Design(
            "subspace_null",
            _subspace_null,
            {"fwer": Measure("random-subspace FWER (6 slices)", "error", NOMINAL_ALPHA)},
        )
    )
    for kind in ("binary", "gaussian", "lognormal"):
        out.append(
            Design(
                f"poly_null_{kind}",
                _poly_null(kind),
                {
                    "fwer": Measure("polysemantic FWER (4,096 neurons)", "error", NOMINAL_ALPHA),
                    "tail": Measure("share of neurons with p < 0.001 (feature f0)", "error", TAIL),
                },
            )
        )
    out.append(
        Design(
            "poly_power",
            _poly_power,
            {
                "power": Measure("share of 16 planted neurons flagged", "power"),
                "fwer": Measure("any of 1,008 noise neurons flagged", "error", NOMINAL_ALPHA),
            },
        )
    )
    compare_tests = {
        "onset": "onset difference significant",
        "peak": "peak difference significant",
        "area": "area difference significant",
    }
    out.append(
        Design(
            "compare_null",
            _compare(0),
            {k: Measure(v, "error", NOMINAL_ALPHA) for k, v in compare_tests.items()},
        )
    )
    out.append(
        Design(
            "compare_power",
            _compare(2),
            {k: Measure(v + " (b two layers later)", "power") for k, v in compare_tests.items()},
        )
    )
    out.append(
        Design(
            "collapse_null",
            _collapse(2.0),
            {
                "collapsed": Measure("verdict 'collapses'", "error", NOMINAL_ALPHA),
                "drops": Measure("any drop point", "error", NOMINAL_ALPHA),
            },
        )
    )
    out.append(
        Design(
            "collapse_drop",
            _collapse(0.5),
            {
                "collapsed": Measure("verdict 'collapses' (final 2.0 -> 0.5)", "power"),
                "final_drop": Measure("final-layer drop point", "power"),
            },
        )
    )
    return {d.name: d for d in out}


# ----------------------------------------------------------------------------- running


def _seed(name: str, rep: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(name.encode()), rep])


def run_replicate(name: str, rep: int) -> dict[str, Hit]:
    """One replicate of one design, on one BLAS thread."""
    with threadpool_limits(1):
        return designs()[name].replicate(_seed(name, rep), rep)


def run_design(
    name: str,
    reps: int,
    jobs: int = 1,
    baseline: Mapping[str, float] | None = None,
    first: int = 0,
) -> list[Outcome]:
    """Replicates ``first .. first + reps - 1`` of design ``name``, one Outcome per measure.
    ``baseline`` maps ``design/measure`` to an earlier rate (e.g. before a fix)."""
    design, last = designs()[name], first + reps
    start = time.perf_counter()
    work = partial(run_replicate, name)
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            results = pool.map(work, range(first, last), chunksize=1)
    else:
        results = [work(rep) for rep in range(first, last)]
    seconds = time.perf_counter() - start
    out = []
    for key, measure in design.measures.items():
        values = [r[key] for r in results if key in r]
        if not values:
            continue
        pairs = [v if isinstance(v, tuple) else (int(v), 1) for v in values]
        hits, trials = (int(sum(col)) for col in zip(*pairs, strict=True))
        out.append(
            Outcome(
                name,
                key,
                measure.label,
                measure.kind,
                hits,
                trials,
                len(values),
                measure.nominal,
                measure.target,
                seconds,
                (baseline or {}).get(f"{name}/{key}"),
            )  # fmt: skip
        )
    return out


def merge(old: Outcome, new: Outcome) -> Outcome:
    """Two runs of the same design and measure on disjoint replicates, as one."""
    return Outcome(
        new.design, new.measure, new.label, new.kind, old.hits + new.hits,
        old.trials + new.trials, old.reps + new.reps, new.nominal, new.target,
        old.seconds + new.seconds, new.baseline,
    )  # fmt: skip


def load_outcomes(path: Path, baseline: Mapping[str, float] | None = None) -> list[Outcome]:
    """The outcomes a run saved with ``--out`` (with ``baseline`` rates attached)."""
    rows = json.loads(path.read_text())
    keep = set(Outcome.__dataclass_fields__) - {"interval", "baseline"}
    return [
        Outcome(
            **{k: r[k] for k in keep},
            baseline=(baseline or {}).get(f"{r['design']}/{r['measure']}"),
        )
        for r in rows
    ]


def select(patterns: Iterable[str] | None) -> list[str]:
    """Design names matching any of ``patterns`` (a name, else a prefix); all when None."""
    names = list(designs())
    if not patterns:
        return names
    chosen = [
        n for n in names if any(n == p or (p not in names and n.startswith(p)) for p in patterns)
    ]
    if not chosen:
        raise SystemExit(f"no design matches {list(patterns)}; designs: {', '.join(names)}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=200, help="replicate cubes per design")
    parser.add_argument("--design", nargs="*", help="design names or prefixes (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--first", type=int, default=0, help="first replicate; > 0 adds to --out's counts"
    )
    parser.add_argument("--out", type=Path, help="merge the outcomes into this JSON file")
    parser.add_argument("--baseline", type=Path, help="JSON of an earlier run, for 'before'")
    parser.add_argument(
        "--table", type=Path, nargs="+", help="only print the table of these JSON runs"
    )
    args = parser.parse_args()
    baseline = None
    if args.baseline:
        baseline = {f"{o.design}/{o.measure}": o.rate for o in load_outcomes(args.baseline)}
    print(HEADER, flush=True)
    if args.table:
        order = {name: i for i, name in enumerate(designs())}
        best: dict[tuple[str, str], Outcome] = {}
        for o in (o for path in args.table for o in load_outcomes(path, baseline)):
            key = (o.design, o.measure)
            if key not in best or o.reps > best[key].reps:  # a design run twice: the larger
                best[key] = o
        saved = list(best.values())
        for o in sorted(saved, key=lambda o: order.get(o.design, len(order))):
            print(o.row())
        return
    for name in select(args.design):
        outcomes = run_design(name, args.reps, args.jobs, baseline, args.first)
        print(f"<!-- {name}: {outcomes[0].seconds:.0f} s -->", flush=True)
        if args.out:
            saved = load_outcomes(args.out) if args.out.exists() else []
            earlier = {o.measure: o for o in saved if o.design == name}
            if args.first > 0:
                outcomes = [
                    merge(earlier[o.measure], o) if o.measure in earlier else o for o in outcomes
                ]
            kept = [o for o in saved if o.design != name] + outcomes
            rows = [asdict(o) | {"rate": o.rate, "passed": o.passed} for o in kept]
            args.out.write_text(json.dumps(rows, indent=1) + "\n")
        for o in outcomes:
            print(o.row(), flush=True)


if __name__ == "__main__":
    main()
