"""compare on cubes with known emergence layers."""

from __future__ import annotations

import numpy as np
import pytest

import mechwidgets as mw
from mechwidgets.actions.compare import curve_points
from mechwidgets.core.errors import SpecError
from mechwidgets.probes.synthetic import planted_cube


@pytest.fixture(scope="module")
def staggered():
    """'early' planted at layer 1 only, 'late' at layer 3 only."""
    cube = planted_cube({"early": {1: 3.0}, "late": {3: 3.0}}, n_samples=800, seed=2)
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
    cube = planted_cube({"a": {2: 3.0}, "b": {2: 3.0}}, n_samples=800, seed=3, n_layers=4)
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
