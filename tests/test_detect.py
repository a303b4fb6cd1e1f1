"""detect on cubes with a known answer: the planted layer wins, controls stay at chance."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.stats import binomtest

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
    assert "unknown parameter 'bootstraps' for detect" in one_line(exc)
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


def clustered_cube(
    rng: np.random.Generator, n_types: int = 40, per_type: int = 10, offset: float = 1.0
) -> xr.Dataset:
    """Items nested in word types split 60/20/20, the label one coin per type (balanced per
    split) and each type a random offset: nothing transfers to new types (truth: chance)."""
    counts = (np.array([0.6, 0.2, 0.2]) * n_types).astype(int)
    type_split = rng.permutation(np.repeat(np.array(["train", "val", "test"]), counts))
    type_y = np.empty(n_types, int)
    for part in ("train", "val", "test"):
        where = np.flatnonzero(type_split == part)
        type_y[where] = rng.permutation(np.arange(where.size) % 2)
    types = np.repeat(np.arange(n_types), per_type)
    act = rng.standard_normal((types.size, 2, 1, 16))
    act += offset * rng.standard_normal((n_types, 1, 1, 16))[types]
    return xr.Dataset(
        {
            "act": (("sample", "layer", "component", "dim"), act.astype(np.float32)),
            "y": ("sample", type_y[types]),
            "wordtype_y": ("sample", types),
            "split": ("sample", type_split[types]),
        },
        coords={"layer": [0, 1], "component": ["resid"]},
    )


def test_clustered_null_false_positive_rate_stays_nominal():
    """Word types as the unit: on labels that do not transfer to new types the
    family-wise false-positive rate stays at 5% (binomial allowance), where treating items
    as independent called such labels significant in 13-99% of cubes."""
    rng = np.random.default_rng(11)
    reps, hits, covered = 30, 0, 0
    for rep in range(reps):
        res = mw.detect(
            clustered_cube(rng), label="y", seeds=1, permutations=50, resamples=100, seed=rep
        )
        hits += res.summary()["n_significant"] > 0
        first = res.real.iloc[0]
        covered += first["ci_low"] <= 0.5 <= first["ci_high"]
    assert binomtest(hits, reps, 0.05, alternative="greater").pvalue > 1e-3, hits
    assert binomtest(covered, reps, 0.93, alternative="less").pvalue > 1e-3, covered
    assert set(res.table["unit"]) == {"word type"} and set(res.table["n_units"]) == {8}
    assert "unit: word type, 8 test word types" in res.verdict()


def test_groups_names_the_unit_and_too_few_units_are_said():
    cube = clustered_cube(np.random.default_rng(12), n_types=20)  # 4 test types
    small = dict(label="y", seeds=1, permutations=20, resamples=100)
    res = mw.detect(cube, **small)
    verdict = res.verdict()
    assert res.summary()["few_units"] and "only 4 test word types: too few" in verdict
    first = res.real.iloc[0]
    assert first["ci_high"] - first["ci_low"] > 0.4  # four units cannot give a narrow interval
    items = mw.detect(cube, groups="items", **small)
    assert set(items.table["unit"]) == {"item"} and set(items.table["n_units"]) == {40}
    first_items = items.real.iloc[0]
    assert first_items["ci_high"] - first_items["ci_low"] < first["ci_high"] - first["ci_low"]
    noun = cube["wordtype_y"].values // 2
    by_noun = mw.detect(cube.assign(noun=("sample", noun)), groups="noun", **small)
    n_nouns = np.unique(noun[cube["split"].values == "test"]).size
    assert set(by_noun.table["unit"]) == {"group 'noun'"}
    assert set(by_noun.table["n_units"]) == {n_nouns}
    with pytest.raises(CubeError) as exc:
        mw.detect(cube, groups="lemma", **small)
    assert "groups 'lemma' is not a variable" in one_line(exc)


def test_random_subspace_null_familywise_rate():
    """Pure noise, a coin per item: the random-subspace p-values stay at 5% family-wise
    (binomial allowance); before, ties at the majority rate gave 8-25%."""
    rng = np.random.default_rng(13)
    reps, hits = 25, 0
    for rep in range(reps):
        n = 200
        split = rng.permutation(np.repeat(["train", "val", "test"], [120, 40, 40]))
        cube = xr.Dataset(
            {
                "act": (
                    ("sample", "layer", "component", "dim"),
                    rng.standard_normal((n, 6, 1, 16)),
                ),
                "y": ("sample", rng.integers(0, 2, n)),
                "split": ("sample", split),
            },
            coords={"layer": np.arange(6), "component": ["resid"]},
        )
        res = mw.detect(
            cube, label="y", controls=["random_subspace"], seeds=1, permutations=100,
            resamples=100, seed=rep,
        )  # fmt: skip
        rows = res.table[res.table["control"] == "random_subspace"]
        hits += bool((rows["p_adj"] < 0.05).any())
    assert "label_shuffle" in set(res.table["control"])  # brought along for its p-value
    assert binomtest(hits, reps, 0.05, alternative="greater").pvalue > 1e-3, hits


def test_many_slices_are_resolved_beyond_the_permutation_floor():
    """72 strongly decodable slices with 50 permutations: the permutation floor 1/51 could
    never pass Holm; the fitted tail resolves them and all are significant."""
    cube = planted_cube(
        {"f": {layer: 3.0 for layer in range(24)}}, n_layers=24, n_samples=400, dim=8, seed=3
    )
    res = mw.detect(cube, label="f", controls=["label_shuffle"], seeds=1, permutations=50,
                    resamples=100)  # fmt: skip
    s = res.summary()
    assert s["n_slices"] == 72 and s["n_significant"] == 72
    assert res.real["p_value"].max() < 1 / 51


def test_chance_is_the_control_baseline_and_majority_has_its_own_column(result):
    table = result.table
    shuffled = table[table["control"] == "label_shuffle"]
    assert table["chance"].iloc[0] == pytest.approx(
        float(result.data["null"].sel(control="label_shuffle").mean())
    )
    assert abs(table["chance"].iloc[0] - 0.5) < 0.01  # balanced classes: 1/2, by design
    assert (shuffled["chance"] == table["chance"].iloc[0]).all()
    test = result.predictions[(result.predictions["layer"] == 0)]
    majority = test["y_true"].value_counts(normalize=True).max()
    assert table["majority"].iloc[0] == pytest.approx(majority)


def test_control_task_close_to_the_probe_warns_of_memorised_word_types():
    """Types shared between splits and labels carried by the type: a control task scores
    as well as the probe, and the verdict says the probe can memorise word types."""
    rng = np.random.default_rng(14)
    n, n_types = 600, 30
    types = rng.integers(0, n_types, n)
    y = (types % 2).astype(int)
    act = rng.standard_normal((n, 1, 1, 16)) + 3.0 * rng.standard_normal((n_types, 1, 1, 16))[types]
    split = rng.permutation(np.repeat(["train", "val", "test"], [360, 120, 120]))
    cube = xr.Dataset(
        {
            "act": (("sample", "layer", "component", "dim"), act),
            "y": ("sample", y),
            "wordtype_y": ("sample", types),
            "split": ("sample", split),
        },
        coords={"layer": [0], "component": ["resid"]},
    )
    res = mw.detect(cube, label="y", controls=["control_task"], seeds=2, permutations=20,
                    resamples=100)  # fmt: skip
    s = res.summary()
    assert s["memorises"] and s["controls"]["control_task"]["score"] > s["best"]["score"] - 0.05
    assert "the probe can memorise word types: selectivity ~0" in res.verdict()
