"""Calibration by Monte Carlo: every design of ``bench/calibration.py`` at a small number of
replicate cubes, so a regression in an error rate, a coverage or a power fails here.

Each assertion is a binomial allowance, not one lucky seed: an error rate fails when its
98% Clopper-Pearson interval lies wholly above the nominal level (a 1% one-sided test),
a coverage when that interval lies wholly below 0.93, a power when it lies wholly below
the power measured before issue 9's fixes on the same design (``TODAY``, measured with
``bench/calibration.py`` on the tree before them). ``bench/calibration.py`` runs the same
designs at R >= 200 (BENCHMARKS.md, "Calibration").
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "calibration.py"
_spec = importlib.util.spec_from_file_location("calibration_bench", BENCH)
assert _spec is not None and _spec.loader is not None
cal = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cal  # dataclasses resolve their module by name
_spec.loader.exec_module(cal)

#: confidence of the allowance intervals (each assertion a 1% one-sided test)
LEVEL = 0.98
#: power before the fixes of issue 9, 50 cubes each (bench/results/calibration_before.json)
TODAY = {
    "iid_signal/power": 0.84,
    "clustered_signal_100x10/power": 1.0,
    "poly_power/power": 0.665,
    "compare_power/onset": 0.98,
    "collapse_drop/collapsed": 1.0,
    "collapse_drop/final_drop": 1.0,
}


def pooled(names: list[str], reps: int) -> dict[str, cal.Outcome]:
    """Every measure of ``names`` at ``reps`` replicates each, counts summed over designs."""
    out: dict[str, cal.Outcome] = {}
    for name in names:
        for o in cal.run_design(name, reps):
            if o.measure in out:
                first = out[o.measure]
                o = cal.Outcome(
                    "+".join((first.design, name)), o.measure, o.label, o.kind,
                    first.hits + o.hits, first.trials + o.trials, first.reps + o.reps,
                    o.nominal, o.target, first.seconds + o.seconds,
                )  # fmt: skip
            out[o.measure] = o
    return out


def describe(o: cal.Outcome) -> str:
    lo, hi = cal.clopper_pearson(o.hits, o.trials, LEVEL)
    return f"{o.design}: {o.label} = {o.hits}/{o.trials} = {o.rate:.3f} [{lo:.3f}, {hi:.3f}]"


def assert_error_rate(o: cal.Outcome) -> None:
    lo, _ = cal.clopper_pearson(o.hits, o.trials, LEVEL)
    assert lo <= o.nominal, f"error rate above nominal {o.nominal}: {describe(o)}"


def assert_coverage(o: cal.Outcome) -> None:
    _, hi = cal.clopper_pearson(o.hits, o.trials, LEVEL)
    assert hi >= cal.COVERAGE_TARGET, f"coverage below {cal.COVERAGE_TARGET}: {describe(o)}"


def assert_power(o: cal.Outcome) -> None:
    today = TODAY[f"{o.design}/{o.measure}"]
    _, hi = cal.clopper_pearson(o.hits, o.trials, LEVEL)
    assert hi >= today, f"power below today's {today:.3f}: {describe(o)}"


def test_iid_nulls_keep_the_family_wise_rate_and_cover_chance():
    names = [n for n in cal.designs() if n.startswith("iid_null_")]
    assert len(names) == 5  # Gaussian, t(3), lognormal, anisotropic, low-rank noise
    out = pooled(names, reps=3)
    assert_error_rate(out["fwer"])
    assert_coverage(out["covers"])
    assert_coverage(out["covers_adj"])


@pytest.mark.parametrize(
    "name",
    ["clustered_null_20x50_sd0.3", "clustered_null_20x50_sd1", "clustered_null_100x10_sd1"],
)
def test_clustered_nulls_are_not_called_decodable(name):
    out = {o.measure: o for o in cal.run_design(name, reps=6)}
    assert_error_rate(out["fwer"])
    assert_coverage(out["covers"])
    assert_coverage(out["covers_adj"])


def test_clustered_signal_is_found_on_enough_types():
    (power,) = cal.run_design("clustered_signal_100x10", reps=5)
    assert_power(power)


def test_iid_signal_power_and_noise_slices():
    out = {o.measure: o for o in cal.run_design("iid_signal", reps=12)}
    assert_power(out["power"])
    assert_error_rate(out["fwer"])


def test_intervals_cover_near_the_ceiling_and_at_chance():
    cells = ["ceiling_a0.99_n40", "ceiling_a0.999_n40", "ceiling_a0.97_n120", "ceiling_a0.5_n40"]
    out = pooled(cells, reps=6)
    assert out["as_designed"].hits == out["as_designed"].trials  # the truth is known
    assert_coverage(out["covers"])
    assert_coverage(out["covers_adj"])


def test_144_decodable_slices_are_all_significant_at_the_defaults():
    out = {o.measure: o for o in cal.run_design("many_slices", reps=1)}
    assert out["mean_accuracy"].hits == 1  # the design: slices decoded at ~0.99
    assert out["all"].hits == 1, "not all 144 slices significant after Holm"
    assert out["verdict"].hits == 1


def test_random_subspace_null_keeps_the_family_wise_rate():
    (fwer,) = cal.run_design("subspace_null", reps=16)
    assert_error_rate(fwer)


@pytest.mark.parametrize("kind", ["binary", "gaussian", "lognormal"])
def test_polysemantic_null_keeps_its_rates(kind):
    out = {o.measure: o for o in cal.run_design(f"poly_null_{kind}", reps=2)}
    assert_error_rate(out["fwer"])
    assert_error_rate(out["tail"])  # 2 x 4,096 neurons: a heavy tail shows here first


def test_polysemantic_finds_planted_neurons():
    out = {o.measure: o for o in cal.run_design("poly_power", reps=2)}
    assert_power(out["power"])
    assert_error_rate(out["fwer"])


def test_compare_null_and_power():
    null = cal.run_design("compare_null", reps=8)
    assert {o.measure for o in null} >= {"onset", "peak"}
    for o in null:
        assert_error_rate(o)
    power = {o.measure: o for o in cal.run_design("compare_power", reps=5)}
    assert_power(power["onset"])


def test_collapse_null_and_planted_drop():
    for o in cal.run_design("collapse_null", reps=8):
        assert_error_rate(o)
    drop = {o.measure: o for o in cal.run_design("collapse_drop", reps=5)}
    assert_power(drop["collapsed"])
    assert_power(drop["final_drop"])
