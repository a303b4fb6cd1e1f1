"""compare on cubes with known emergence layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import mechwidgets as mw
from mechwidgets.actions.compare import curve_points
from mechwidgets.core.errors import CubeError, SpecError
from mechwidgets.probes.synthetic import planted_cube


@pytest.fixture(scope="module")
def staggered():
    """'early' planted at layer 1 only, 'late' at layer 3 only."""
    cube = planted_cube(
        {"early": {1: 3.0}, "late": {3: 3.0}}, n_samples=800, seed=2, types_per_class=80
    )
    return mw.compare(cube, labels=["late", "early"], seeds=2)


def test_earlier_feature_is_named_and_significant(staggered):
    s = staggered.summary()
    assert s["earliest"] == "early"
    assert s["curves"]["early"]["onset_layer"] == 1 and s["curves"]["late"]["onset_layer"] == 3
    assert s["curves"]["early"]["peak_layer"] == 1 and s["curves"]["late"]["peak_layer"] == 3
    (test,) = s["tests"]
    assert (test["earlier"], test["later"]) == ("early", "late")
    assert test["peak_diff"] == 2 and test["peak_diff_ci"][0] > 0
    assert test["onset_p_adj"] < 0.05 and test["peak_p_adj"] < 0.05
    assert s["significant"] and s["peak_significant"]
    assert staggered.verdict().startswith("'early' emerges before 'late' in resid")


def test_aligned_curves_share_layers_and_items(staggered):
    real = staggered.table[staggered.table["control"] == "none"]
    layers = {label: sorted(rows["layer"]) for label, rows in real.groupby("label")}
    assert layers["early"] == layers["late"]
    area = staggered.summary()["curves"]["early"]["area"]
    lo, hi = staggered.summary()["curves"]["early"]["area_ci"]
    assert lo <= area <= hi
    assert staggered.data["onset"].dims == ("label", "component")
    assert staggered.chart().to_dict()["facet"]["column"]["field"] == "component"


def test_same_layer_is_not_a_significant_difference():
    cube = planted_cube(
        {"a": {2: 3.0}, "b": {2: 3.0}}, n_samples=800, seed=3, n_layers=4, types_per_class=80
    )
    s = mw.compare(cube, labels=["a", "b"], seeds=1, permutations=50).summary()
    (test,) = s["tests"]
    assert test["onset_diff"] == 0 and test["peak_diff"] == 0
    assert not s["significant"] and not s["peak_significant"]


def test_curve_points_on_hand_made_curves():
    scores = np.array([[0.5, 0.6, 0.9, 0.8], [0.5, np.nan, 0.55, 0.7]])
    points = curve_points(scores, np.arange(4), np.array([0.75, 0.75]))
    np.testing.assert_array_equal(points["onset"], [2, 4])  # 4 = never (past the last layer)
    np.testing.assert_array_equal(points["peak"], [2, 3])
    assert points["area"][0] == pytest.approx((0.55 + 0.75 + 0.85) / 3)


def test_needs_two_labels():
    cube = planted_cube({"a": {1: 2.0}}, n_samples=200, n_layers=2)
    with pytest.raises(SpecError, match="two or more labels"):
        mw.compare(cube, labels=["a"], seeds=1)


#: a fast protocol for the Monte Carlo tests: one seed, no controls, 200 resamples
FAST = {"seeds": 1, "controls": [], "resamples": 200}


def small_cube(plants: dict, seed: int) -> xr.Dataset:
    """4 layers of resid, 400 items, about one item per word type (items independent)."""
    return planted_cube(
        plants, n_samples=400, dim=16, n_layers=4, components=("resid",), types_per_class=40,
        seed=seed,
    )  # fmt: skip


def test_area_test_null_rate_and_power():
    """Two labels planted alike: the area difference is significant in at most the 5%
    nominal share of cubes (binomial allowance); planted 2x stronger everywhere: nearly always."""
    reps = 30
    alike = {"a": dict.fromkeys((1, 2, 3), 1.5), "b": dict.fromkeys((1, 2, 3), 1.5)}
    null = [mw.compare(small_cube(alike, r), labels=["a", "b"], **FAST) for r in range(reps)]
    rejected = sum(r.summary()["tests"][0]["area_p_adj"] < 0.05 for r in null)
    assert rejected <= 4  # P(X >= 5) = 0.016 for Binomial(30, 0.05)
    assert all(r.summary()["design"] == "paired" for r in null)
    apart = {"a": dict.fromkeys((1, 2, 3), 2.5), "b": dict.fromkeys((1, 2, 3), 0.8)}
    strong = [mw.compare(small_cube(apart, r), labels=["a", "b"], **FAST) for r in range(6)]
    for res in strong:
        (t,) = res.summary()["tests"]
        assert t["area_p_adj"] < 0.05 and res.summary()["area_significant"]
        curves = res.summary()["curves"]
        assert t["area_diff"] == pytest.approx(
            curves[t["later"]]["area"] - curves[t["earlier"]]["area"]
        )
        assert t["area_diff_ci"][0] <= t["area_diff"] <= t["area_diff_ci"][1]
    assert "area " in strong[0].verdict()


def test_compare_across_tasks_unpaired():
    """Two cubes of different items (two tasks) from one model: the early task's label is
    named first, with an unpaired bootstrap; the same label twice is told apart."""
    syntax = small_cube({"number": {1: 3.0, 2: 3.0, 3: 3.0}}, seed=1).assign_attrs(task="syn")
    semantics = small_cube({"sentiment": {3: 3.0}}, seed=2).assign_attrs(task="sem")
    res = mw.compare([semantics, syntax], labels=["sentiment", "number"], **FAST)
    s = res.summary()
    assert s["design"] == "unpaired" and s["labels"] == ["sentiment", "number"]
    assert s["earliest"] == "number" and s["significant"]
    (t,) = s["tests"]
    assert t["onset_diff"] == 2 and t["onset_p_adj"] < 0.05
    assert t["area_diff"] < 0 and t["area_p_adj"] < 0.05
    assert "unpaired" in res.verdict()
    assert set(res.table["label"]) == {"sentiment", "number"}
    assert res.params["cube_labels"] == ["sentiment", "number"]
    same = mw.compare([syntax, syntax.assign_attrs(task="syn2")], labels="number", **FAST)
    assert same.summary()["labels"] == ["number (syn)", "number (syn2)"]
    assert not same.summary()["significant"]


def test_compare_across_tasks_unpaired_null():
    """The same planting in two cubes of different items (800 training items, so the
    probes' own fitting noise is small; see the compare module): no significant area
    difference in more than the nominal share (binomial allowance)."""

    def cube(seed: int) -> xr.Dataset:
        return planted_cube(
            {"x": dict.fromkeys((1, 2, 3), 1.5)}, n_samples=1000, dim=16, n_layers=4,
            components=("resid",), types_per_class=100, fractions=(0.8, 0.1, 0.1), seed=seed,
        )  # fmt: skip

    reps = 20
    rejected = sum(
        mw.compare([cube(2 * r), cube(2 * r + 1)], labels="x", **FAST)
        .summary()["tests"][0]["area_p_adj"] < 0.05
        for r in range(reps)
    )  # fmt: skip
    assert rejected <= 3  # P(X >= 4) = 0.016 for Binomial(20, 0.05)


def test_compare_across_tasks_refuses_other_models_and_layers():
    a = small_cube({"x": {1: 2.0}}, seed=1).assign_attrs(model="pythia-70m")
    cases = [
        (a.assign_attrs(model="gpt2"), CubeError, "different models"),
        (a.isel(layer=[0, 1, 2]), CubeError, "different layers"),
        (a.isel(dim=slice(0, 8)), CubeError, "different widths"),
    ]
    for other, error, message in cases:
        with pytest.raises(error, match=message) as info:
            mw.compare([a, other], labels="x", **FAST)
        assert "\n" not in str(info.value)
    with pytest.raises(SpecError, match="one label per cube"):
        mw.compare([a, a, a], labels=["x", "x"], **FAST)


def test_too_few_units_gives_no_p_values():
    """Two labels whose word types link every test item into a few units: no test."""
    cube = planted_cube({"a": {1: 3.0}, "b": {3: 3.0}}, n_samples=400, n_layers=4, seed=1)
    res = mw.compare(cube, labels=["a", "b"], **FAST)
    s = res.summary()
    assert s["few_units"] and np.isnan(s["tests"][0]["onset_p_adj"])
    assert not s["significant"] and res.verdict().startswith("cannot test differences")


def test_compare_across_tasks_from_a_config_and_the_magic():
    """A config's ``tasks`` (or the flat/magic ``task: a,b``) reaches compare as a cube list."""
    from mechwidgets.actions.base import RunContext, run_action
    from mechwidgets.core.specs import RunSpec
    from mechwidgets.jupyter.magics import build_parser, spec_from_args

    line = "compare --task subject_number,sentiment --labels subject_number,sentiment --n 300"
    spec = RunSpec.from_dict(spec_from_args(build_parser().parse_args(line.split())))
    assert spec.dataset.name == "subject_number" and spec.dataset.n == 300
    assert [(t.name, t.n) for t in spec.tasks] == [("sentiment", 300)]
    nested = RunSpec.from_yaml(
        "action: {name: compare, params: {labels: [a, b]}}\n"
        "dataset: {name: subject_number}\ntasks: [{name: sentiment, n: 500}]\n"
        "extraction: {model_name: toy-grammar}\n"
    )
    assert nested.tasks[0].n == 500 and RunSpec.from_dict(nested.to_dict()) == nested
    root = Path(__file__).resolve().parents[1]
    shipped = RunSpec.from_yaml(root / "configs" / "feature_comparison_across_tasks_toy.yaml")
    assert [t.name for t in shipped.tasks] == ["sentiment"]
    with pytest.raises(SpecError, match="'tasks' .* is for compare across tasks, not detect"):
        RunSpec.from_dict({"action": "detect", "model": "toy-grammar", "task": "a,b"})
    # what the runner hands the action for such a spec: one cube per task
    a = small_cube({"x": {1: 3.0, 2: 3.0, 3: 3.0}}, seed=1)
    b = small_cube({"y": {3: 3.0}}, seed=2)
    params = {"labels": ["x", "y"], "seeds": 1, "resamples": 200}
    res = run_action("compare", RunContext(cube=[a, b], params=params, controls=[]))
    assert res.summary()["design"] == "unpaired" and res.summary()["earliest"] == "x"
