"""detect on cubes with a known answer: the planted layer wins, controls stay at chance."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import mechwidgets as mw
from mechwidgets.actions.base import RunContext
from mechwidgets.actions.detect import DetectResult
from mechwidgets.core.errors import CubeError, MechError, SpecError
from mechwidgets.core.registry import get_action
from mechwidgets.probes.synthetic import planted_cube

CHANCE = 0.5


@pytest.fixture(scope="module")
def cube():
    """15 slices (5 layers x 3 components); 'number' planted at layer 2, resid only."""
    return planted_cube({"number": {(2, "resid"): 2.5}}, n_samples=800, seed=1)


@pytest.fixture(scope="module")
def result(cube):
    return mw.detect(cube, label="number", controls=["label_shuffle", "random_subspace"], seeds=2)


def test_planted_layer_ranks_first_and_excludes_chance(result):
    best = result.summary()["best"]
    assert (best["layer"], best["component"]) == (2, "resid")
    assert best["ci"][0] > CHANCE and best["ci_adj"][0] > CHANCE
    assert best["p_adj"] < 0.05
    runner_up = result.summary()["best_vs_next"]
    assert runner_up["diff"] > 0.2 and runner_up["diff_ci"][0] > 0  # paired, same test items
    assert runner_up["p_value"] < 0.01


def test_shuffled_intervals_include_chance_once_adjusted(result):
    shuffled = result.table[result.table["control"] == "label_shuffle"]
    assert len(shuffled) == 15
    assert ((shuffled["ci_adj_low"] <= CHANCE) & (shuffled["ci_adj_high"] >= CHANCE)).all()
    # adjusted intervals are the simultaneous ones: never narrower than the marginal ones
    assert (shuffled["ci_adj_low"] <= shuffled["ci_low"]).all()
    assert (shuffled["ci_adj_high"] >= shuffled["ci_high"]).all()


def test_no_false_positive_among_noise_slices_after_correction(result):
    real = result.table[result.table["control"] == "none"]
    noise = real[(real["layer"] != 2) | (real["component"] != "resid")]
    assert len(noise) == 14
    assert (noise["p_adj"] >= 0.05).all()
    assert (real["p_adj"] >= real["p_value"]).all()
    assert set(real["correction"]) == {"holm"}
    assert result.summary()["n_significant"] == 1


def test_controls_gap_and_selectivity(result):
    s = result.summary()
    shuffle = s["controls"]["label_shuffle"]
    assert abs(shuffle["score"] - CHANCE) < 0.1
    assert shuffle["gap"] == pytest.approx(s["best"]["score"] - shuffle["score"])
    assert shuffle["gap_ci"][0] > 0
    assert set(s["controls"]) == {"label_shuffle", "random_subspace"}


def test_table_data_and_predictions_have_named_shape(result, cube):
    table = result.table
    assert list(table.columns[:7]) == [
        "label",
        "layer",
        "component",
        "control",
        "score",
        "ci_low",
        "ci_high",
    ]
    assert {"p_value", "p_adj", "selectivity", "ci_adj_low", "seed_sd", "chance"} <= set(table)
    assert len(table) == 15 * 3
    assert not table.duplicated(["label", "layer", "component", "control"]).any()
    assert result.data["boot"].dims[-1] == "resample"
    assert result.data.sizes["resample"] == 1000 and result.data.sizes["draw"] == 200
    preds = result.predictions
    n_test = int((cube["split"] == "test").sum())
    assert list(preds.columns) == [
        "sample_id",
        "label",
        "layer",
        "component",
        "y_true",
        "y_pred",
        "y_score",
    ]
    assert len(preds) == 15 * n_test
    at_peak = preds[(preds["layer"] == 2) & (preds["component"] == "resid")]
    assert (at_peak["y_true"] == at_peak["y_pred"]).mean() == pytest.approx(
        result.summary()["best"]["score"]
    )


def test_plain_repr_is_deterministic(cube, result):
    again = mw.detect(cube, label="number", controls=["label_shuffle", "random_subspace"], seeds=2)
    assert repr(again) == repr(result)
    assert "0x" not in repr(result) and repr(result).startswith("DetectResult(detect): 'number'")


def test_chart_is_built_from_the_table(result):
    spec = result.chart().to_dict()
    assert spec["facet"]["column"]["field"] == "component"


def test_runs_through_the_registry_with_control_task(cube):
    action = get_action("detect")
    context = RunContext(
        cube=cube,
        params={"seeds": 1, "permutations": 50, "correction": "bh"},
        controls=["control_task"],
        seed=7,
    )
    res = action.run(action.prepare(context))
    assert isinstance(res, DetectResult)
    summary = action.summarize(res)
    assert summary["label"] == "number"  # the cube's only label
    assert summary["correction"] == "bh"
    assert summary["selectivity"] == pytest.approx(
        summary["best"]["score"] - summary["controls"]["control_task"]["score"]
    )
    assert list(res.data["seed"].values) == [7]


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert isinstance(exc.value, MechError) and "\n" not in message
    return message


def test_bad_inputs_are_one_line_errors(cube):
    small = dict(seeds=1, permutations=10, resamples=100)
    one_class = cube.assign(number=("sample", np.zeros(cube.sizes["sample"], int)))
    with pytest.raises(CubeError) as exc:
        mw.detect(one_class, label="number", **small)
    assert "one class" in one_line(exc)
    tiny_val = cube.assign(split=cube["split"].where(cube["split"] != "val", "train"))
    with pytest.raises(CubeError) as exc:
        mw.detect(tiny_val, label="number", **small)
    assert "split 'val' has 0 samples" in one_line(exc)
    act = cube["act"].values.copy()
    act[3, 1, 0, 5] = np.nan
    with pytest.raises(CubeError) as exc:
        mw.detect(cube.assign(act=(cube["act"].dims, act)), label="number", **small)
    assert "NaN" in one_line(exc) and "layer 1" in one_line(exc)
    with pytest.raises(SpecError) as exc:
        mw.detect(cube, label="number", controls=["label_shufle"], **small)
    assert "unknown control 'label_shufle'" in one_line(exc)
    with pytest.raises(CubeError) as exc:
        mw.detect(cube.drop_vars("split"), label="number", **small)
    assert "no 'split'" in one_line(exc)
    with pytest.raises(CubeError) as exc:
        mw.detect(cube, label="tense", **small)
    assert "no label 'tense'" in one_line(exc) and "number" in one_line(exc)
    with pytest.raises(SpecError) as exc:
        mw.detect(cube, label="number", bootstraps=5, **small)
    assert "unknown parameter(s) bootstraps" in one_line(exc)
    few = cube.assign(number=("sample", (np.arange(cube.sizes["sample"]) == 0).astype(int)))
    with pytest.raises(CubeError) as exc:
        mw.detect(few, label="number", **small)
    assert "needs 2+ per split" in one_line(exc)


def test_absent_slices_are_skipped_not_errors(cube):
    act = cube["act"].values.copy()
    act[:, 0, 1, :] = np.nan  # no attention output at the embedding layer
    res = mw.detect(
        cube.assign(act=(cube["act"].dims, act)), label="number", seeds=1, permutations=20
    )
    real = res.table[res.table["control"] == "none"]
    assert len(real) == 14
    assert not ((real["layer"] == 0) & (real["component"] == "attn")).any()
    assert not bool(res.data["probed"].sel(layer=0, component="attn"))


def test_lazy_netcdf_cube_gives_the_same_numbers(cube, tmp_path):
    path = tmp_path / "cube.nc"
    cube.to_netcdf(path)
    small = dict(label="number", seeds=1, permutations=20, resamples=200)
    with xr.open_dataset(path, chunks={"sample": 128}) as lazy:
        assert lazy["act"].chunks is not None  # dask-backed: slices load one at a time
        from_disk = mw.detect(lazy, **small)
    np.testing.assert_allclose(from_disk.table["score"], mw.detect(cube, **small).table["score"])
