"""collapse on cubes where a feature is, or is not, erased after its peak."""

from __future__ import annotations

import numpy as np
import pytest

import mechwidgets as mw
from mechwidgets.core.errors import SpecError
from mechwidgets.probes.synthetic import planted_cube


@pytest.fixture(scope="module")
def erased():
    """Strong at layers 0-2, erased from layer 3; layer 0's attn output is constant."""
    cube = planted_cube({"tok": {0: 3.0, 1: 3.0, 2: 3.0}}, n_samples=800, seed=4)
    act = cube["act"].values.copy()
    act[:, 0, 1, :] = 1.5  # e.g. an output that is the same for every input
    cube = cube.assign(act=(cube["act"].dims, act))
    return mw.collapse(cube, label="tok", seeds=2)


@pytest.fixture(scope="module")
def kept():
    cube = planted_cube({"tok": dict.fromkeys(range(5), 2.0)}, n_samples=800, seed=5)
    return mw.collapse(cube, label="tok", seeds=2)


def test_erased_feature_has_positive_collapse_index(erased):
    s = erased.summary()
    assert s["component"] == "resid"
    assert s["collapse_index"] > 0.3
    lo, hi = s["collapse_ci"]
    assert 0 < lo <= s["collapse_index"] <= hi
    assert s["peak_layer"] in (0, 1, 2) and s["final_layer"] == 4
    assert s["collapsed"] and "collapses" in erased.verdict()
    assert {(d["component"], d["from_layer"], d["to_layer"]) for d in s["drop_points"]} >= {
        ("resid", 2, 3)
    }
    assert all(d["to_layer"] == 3 for d in s["drop_points"])  # only the real drop


def test_kept_feature_ci_includes_zero(kept):
    s = kept.summary()
    lo, hi = s["collapse_ci"]
    assert lo <= 0 <= hi
    assert not s["collapsed"] and "no collapse" in kept.verdict()
    assert s["drop_points"] == []


def test_peak_layer_is_chosen_on_validation(kept):
    d = kept.data
    val = d["seed_val_score"].sel(control="none", component="resid").isel(label=0).mean("seed")
    assert kept.summary()["peak_layer"] == int(val["layer"][int(np.argmax(val.values))])


def test_cka_heatmap_debiased_with_undefined_constant_layer(erased):
    cka = erased.data["cka"]
    assert cka.dims == ("component", "layer_a", "layer_b")
    assert cka.attrs["estimator"] == "debiased"
    resid = cka.sel(component="resid").values
    np.testing.assert_allclose(np.diag(resid), 1.0)
    attn = cka.sel(component="attn")
    assert np.isnan(attn.sel(layer_a=0)).all()
    assert erased.summary()["cka_undefined"] == {"resid": [], "attn": [0], "mlp": []}
    charts = erased.charts()
    assert set(charts) == {"main", "cka_resid", "cka_attn", "cka_mlp"}


def test_linear_cka_option_and_bad_estimator():
    cube = planted_cube({"tok": {0: 2.0}}, n_samples=300, n_layers=3, components=("resid",))
    res = mw.collapse(cube, label="tok", seeds=1, permutations=20, cka="linear")
    assert res.data["cka"].attrs["estimator"] == "linear" and res.summary()["cka"] == "linear"
    with pytest.raises(SpecError, match="'cka': choose one of debiased, linear"):
        mw.collapse(cube, label="tok", seeds=1, cka="rbf")


def test_significant_drop_is_reported_when_the_index_is_zero():
    """Decodable at layers 1-2, gone at 3, back (stronger) at the final layer 4: the
    validation-chosen peak is the final layer, so the index is 0, but the 2 -> 3 drop is real."""
    cube = planted_cube(
        {"tok": {1: 1.5, 2: 1.5, 4: 4.0}}, n_samples=800, seed=6, components=("resid",)
    )
    res = mw.collapse(cube, label="tok", seeds=1, permutations=20)
    s = res.summary()
    assert s["peak_layer"] == s["final_layer"] == 4 and s["collapse_index"] == 0
    assert not s["collapsed"]
    late = s["largest_drop"]
    assert (late["from_layer"], late["to_layer"]) == (2, 3) and late["p_adj"] < 0.05
    assert late["drop"] > 0.2
    verdict = res.verdict()
    assert verdict.startswith("no collapse of 'tok' in resid by the validation-chosen peak")
    assert f"significant drop of {late['drop']:.3f} from layer 2 to 3" in verdict
