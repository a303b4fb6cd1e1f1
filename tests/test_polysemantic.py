"""polysemantic against planted ground truth: synthetic neurons with known loadings, and a
neuron planted into toy-grammar that fires for plural subjects and negative sentiment."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
from scipy.stats import norm

import mechwidgets as mw
from mechwidgets.actions.base import RunContext, run_action
from mechwidgets.analysis.neurons import (
    conjunction_pvalues,
    count_features,
    feature_loadings,
    loading_index,
    loading_z,
    normal_scores,
    rank_test,
    shuffled_loading_z,
    two_sided_p,
)
from mechwidgets.core.errors import CubeError, SpecError
from mechwidgets.intervene.prompts import Prompts
from mechwidgets.probes.linear import fit_probe

FEATURES = ["f0", "f1", "f2", "f3"]
#: neuron -> {feature: weight}; neurons 16..39 are pure noise
PLANTED = {
    **{j: {j % 4: 1.0} for j in range(8)},  # monosemantic, two per feature
    8: {0: 0.8, 1: 0.8},
    9: {2: 0.8, 3: 0.8},
    10: {0: 0.8, 3: 0.8},
    11: {1: 0.8, 2: -0.8},
    12: {0: 0.7, 1: 0.7, 2: 0.7},
    13: {1: 1.0, 3: 0.5},
    14: {0: -0.8, 2: 0.8},
    15: {0: 1.0, 2: 0.12},  # a second feature too weak to count (|loading| < threshold)
}
POLY = {8, 9, 10, 11, 12, 13, 14}


def neuron_cube(
    features: np.ndarray, weights: dict[int, dict[int, float]], n_neurons: int, seed: int
) -> xr.Dataset:
    """Neurons = ReLU(sum of +-1 features x weights + noise + offset), as an MLP would."""
    rng = np.random.default_rng(seed)
    n = len(features)
    mix = np.zeros((features.shape[1], n_neurons))
    for j, loads in weights.items():
        for f, w in loads.items():
            mix[f, j] = w
    pre = (2.0 * features - 1.0) @ mix + rng.standard_normal((n, n_neurons)) + 1.5
    split = np.array(["train", "val", "test"])[rng.permutation(np.arange(n) % 5 // 2)]
    return xr.Dataset(
        {"neurons": (("sample", "layer", "neuron"), np.maximum(pre, 0.0)[:, None, :])},
        coords={
            "layer": [0],
            "neuron": np.arange(n_neurons),
            "split": ("sample", split),
            **{f"f{i}": ("sample", features[:, i]) for i in range(features.shape[1])},
        },
    )


def balanced_features(n: int, k: int, seed: int) -> np.ndarray:
    """``(n, k)`` 0/1 features, every combination equally often (jointly balanced)."""
    grid = (np.arange(2**k)[:, None] >> np.arange(k)) & 1
    return np.random.default_rng(seed).permutation(np.resize(grid, (n, k)), axis=0)


@pytest.fixture(scope="module")
def synthetic():
    return neuron_cube(balanced_features(1600, 4, 0), PLANTED, 40, seed=1)


@pytest.fixture(scope="module")
def synthetic_result(synthetic):
    return mw.polysemantic(synthetic, labels=FEATURES)


def test_shortlist_is_exactly_the_planted_polysemantic_neurons(synthetic_result):
    res = synthetic_result
    assert set(res.shortlist["neuron"]) == POLY
    assert list(res.shortlist.columns[:7]) == [
        "layer", "neuron", "loading_index", "n_features", "features", "p_value", "p_adj",
    ]  # fmt: skip
    assert (res.shortlist["p_adj"] < 0.05).all()
    # most polysemantic first, and the shortlist heads the table
    assert res.shortlist["loading_index"].is_monotonic_decreasing
    assert list(res.table["neuron"][: len(POLY)]) == list(res.shortlist["neuron"])
    rows = res.shortlist.set_index("neuron")
    assert rows.loc[12, "n_features"] == 3
    assert set(rows.loc[12, "features"].split(", ")) == {"f0", "f1", "f2"}
    assert set(rows.loc[9, "features"].split(", ")) == {"f2", "f3"}
    # the loading signs follow the planted weights
    assert rows.loc[11, "loading[f2]"] < 0 < rows.loc[11, "loading[f1]"]


def test_monosemantic_and_weak_neurons_count_one_feature(synthetic_result):
    table = synthetic_result.table.set_index("neuron")
    for j in range(8):
        assert table.loc[j, "n_features"] == 1 and table.loc[j, "features"] == f"f{j % 4}"
    assert table.loc[15, "n_features"] == 1  # f2's loading is real but under the threshold
    assert table.loc[list(range(16, 40)), "n_features"].eq(0).all()


def test_alignment_selectivity_and_probe_numbers(synthetic_result):
    res = synthetic_result
    d = res.data
    long = res.loadings.set_index(["neuron", "feature"])
    # decoder alignment: shares of |w| add to 1; the f0 probe leans most on f0's own neurons
    np.testing.assert_allclose(d["mass"].sum("neuron").values, 1.0)
    cos0 = d["cosine"].sel(layer=0, feature="f0").values
    assert set(np.argsort(-np.abs(cos0))[:2]) <= {0, 4, 8, 10, 12, 14, 15}
    # AUROC agrees with the loading's sign on every counted feature
    for neuron in POLY:
        for f in res.table.set_index("neuron").loc[neuron, "features"].split(", "):
            load, roc = long.loc[(neuron, f), ["loading", "auroc"]]
            assert np.sign(roc - 0.5) == np.sign(load) and abs(roc - 0.5) > 0.1
    assert (d["probe_score"].values > 0.9).all()
    s = res.summary()
    assert s["n_polysemantic"] == len(POLY) and s["correction"] == "holm"
    assert 0.9 < s["null_sd"] < 1.1
    json.dumps(s)
    assert res.verdict().startswith(f"{len(POLY)} of 40 neurons load on 2+ of 4 features")


def test_shuffled_labels_flag_no_neuron(synthetic):
    rng = np.random.default_rng(5)
    shuffled = synthetic.assign_coords(
        {f: ("sample", rng.permutation(synthetic[f].values)) for f in FEATURES}
    )
    res = mw.polysemantic(shuffled, labels=FEATURES, permutations=400)
    assert res.shortlist.empty
    assert res.verdict().startswith("none of 40 neurons")
    # the normal-tail p-values agree with the sampled permutations where those can resolve
    d = res.data
    p, perm = d["p_value"].values.ravel(), d["p_perm"].values.ravel()
    assert np.corrcoef(p, perm)[0, 1] > 0.95
    assert res.chart().to_dict()["title"]["text"].endswith("top 10 by index")


def test_correlated_features_are_not_double_counted():
    rng = np.random.default_rng(3)
    a = np.resize([0, 1], 1500)
    b = np.where(rng.random(1500) < 0.15, 1 - a, a)  # agrees with a 85% of the time
    c = rng.permutation(np.resize([0, 1], 1500))
    cube = neuron_cube(np.stack([a, b, c], 1), {0: {0: 1.0}, 1: {0: 0.8, 2: 0.8}}, 12, seed=4)
    cube = cube.rename({"f0": "a", "f1": "b", "f2": "c"})
    marginal = np.corrcoef(cube["neurons"].values[:, 0, 0], b)[0, 1]
    assert marginal > 0.3  # neuron 0 correlates with b only through a
    res = mw.polysemantic(cube, labels=["a", "b", "c"])
    assert list(res.shortlist["neuron"]) == [1]
    assert abs(float(res.data["loading"].sel(layer=0, feature="b", neuron=0))) < 0.1


def test_chart_bundle_and_registry(synthetic, synthetic_result, tmp_path):
    spec = synthetic_result.chart().to_dict()
    units = {row["unit"] for row in spec["datasets"][spec["data"]["name"]]}
    assert units == {f"neuron:0.{j}" for j in POLY}
    assert set(synthetic_result.charts()) == {"main", "auroc"}
    folder = synthetic_result.to_bundle(tmp_path / "bundle")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["summary"]["n_polysemantic"] == len(POLY)
    assert (folder / "charts" / "auroc.vl.json").is_file()
    ctx = RunContext(cube=synthetic, params={"labels": FEATURES, "seeds": 1, "permutations": 50})
    again = run_action("polysemantic", ctx)
    assert set(again.shortlist["neuron"]) == POLY
    assert again.params["threshold"] == 0.2 and again.params["correction"] == "holm"


def test_loading_math_against_plain_numpy():
    rng = np.random.default_rng(0)
    y = np.stack([rng.integers(0, 2, 400), rng.standard_normal(400)], 1).astype(float)
    x = rng.standard_normal((400, 6)) + y @ rng.standard_normal((2, 6))
    x[:, 5] = 2.0  # a dead neuron
    load = feature_loadings(x, y)
    design = np.column_stack([np.ones(400), (y - y.mean(0)) / y.std(0)])
    coef = np.linalg.lstsq(design, (x[:, :5] - x[:, :5].mean(0)) / x[:, :5].std(0), rcond=None)
    np.testing.assert_allclose(load.beta[:, :5], coef[0][1:], atol=1e-10)
    assert np.isnan(load.beta[:, 5]).all() and not load.valid[5]
    # sampled shuffles have the exact null moments: mean 0, unit variance
    orders = np.stack([rng.permutation(400) for _ in range(3000)], 1)
    null = shuffled_loading_z(x, y, orders)
    assert abs(np.nanmean(null)) < 0.03 and abs(np.nanstd(null) - 1) < 0.03
    assert np.allclose(
        loading_z(load, 400)[:, :5] ** 2,
        (load.beta[:, :5] ** 2) * 399 / np.diag(load.gram_inv)[:, None],
    )
    assert loading_index(np.array([[0.1, 0.7, 0.5]]), axis=1)[0] == 0.5
    pc = conjunction_pvalues(np.array([[0.001, 0.01, 0.5]]))
    np.testing.assert_allclose(pc[0], [0.003, 0.02, 0.5])


def test_bad_input_fails_in_one_line(synthetic):
    cases = [
        (synthetic.drop_vars("neurons"), {"labels": FEATURES}, CubeError, "no 'neurons' variable"),
        (synthetic, {"labels": ["f0"]}, SpecError, "at least 2 features"),
        (synthetic, {"labels": ["f0", "nope"]}, CubeError, "no label 'nope'"),
        (synthetic, {"labels": FEATURES, "threshold": 1.5}, SpecError, "threshold"),
        (synthetic, {"labels": FEATURES, "layers": [3]}, SpecError, r"layer\(s\) \[3\]"),
    ]
    for cube, kwargs, error, message in cases:
        with pytest.raises(error, match=message) as info:
            mw.polysemantic(cube, **kwargs)
        assert "\n" not in str(info.value)
    three = synthetic.assign_coords(f0=("sample", synthetic["f0"].values + synthetic["f1"].values))
    with pytest.raises(SpecError, match="has 3 classes"):
        mw.polysemantic(three, labels=FEATURES)
    with pytest.raises(SpecError, match="collinear"):
        mw.polysemantic(synthetic.assign_coords(g=synthetic["f0"]), labels=["f0", "g"])


# --- a neuron planted into toy-grammar -------------------------------------------------

LAYER, NEURON = 3, 7
GRAMMAR_LABELS = ["subject_number", "animacy", "sentiment", "tense"]


@pytest.fixture(scope="module")
def planted_grammar():
    """toy-grammar with MLP neuron 7 of layer 3 rewired to fire for plural subjects and for
    negative sentiment (and to write nothing, so the rest of the model is unchanged)."""
    model = mw.load_model("toy-grammar")
    task = mw.get_task("grammar_all", n=800, seed=1)
    prompts = Prompts.build(model, task.texts, task.positions)
    with torch.no_grad(), model.nn.trace(**prompts.inputs) as tracer:
        mlp_in = model.mlp(LAYER).input[torch.arange(len(prompts)), prompts.read].save()
        tracer.stop()
    h = mlp_in.numpy().astype(np.float64)
    # the directions of "plural" and "negative" in the MLP's input, from lightly regularised
    # probes (sharp directions), each scaled to a class contrast of 1 so both drive the
    # neuron equally
    parts = []
    for label, sign in (("subject_number", 1.0), ("sentiment", -1.0)):
        y = task.labels[label]
        probe = fit_probe(h, y, task.split, strengths=np.array([1e-3]))
        d = probe.decision(h)[:, 0]
        scale = sign / (d[y == 1].mean() - d[y == 0].mean())
        parts.append((probe.coef[:, 0] * scale, probe.intercept[0] * scale))
    w = parts[0][0] + parts[1][0]
    b = parts[0][1] + parts[1][1]
    b += 3.0 - (h @ w + b).min()  # keep the GELU in its linear range
    mlp = model.module("mlp", LAYER)
    with torch.no_grad():
        mlp.dense_h_to_4h.weight[NEURON] = torch.tensor(w, dtype=torch.float32)
        mlp.dense_h_to_4h.bias[NEURON] = float(b)
        mlp.dense_4h_to_h.weight[:, NEURON] = 0.0
    return model, task


@pytest.fixture(scope="module")
def grammar_result(planted_grammar):
    model, task = planted_grammar
    return mw.polysemantic(model, task, labels=GRAMMAR_LABELS, layers=[LAYER])


def test_planted_neuron_ranks_first_and_is_flagged(grammar_result):
    top = grammar_result.shortlist.iloc[0]
    assert (int(top["layer"]), int(top["neuron"])) == (LAYER, NEURON)
    assert set(top["features"].split(", ")) == {"subject_number", "sentiment"}
    assert top["p_adj"] < 1e-6 and top["loading_index"] > 0.6
    # natural neurons of toy-grammar load on sentiment and tense (conjunctions, ~0.58)
    runner_up = grammar_result.shortlist.iloc[1]
    assert top["loading_index"] > runner_up["loading_index"] + 0.05
    auc = grammar_result.loadings.set_index(["neuron", "feature"])["auroc"]
    assert auc[(NEURON, "subject_number")] > 0.8 and auc[(NEURON, "sentiment")] < 0.2
    assert grammar_result.params["layers"] == [LAYER]


def test_shuffled_grammar_labels_flag_no_neuron(planted_grammar):
    model, task = planted_grammar
    cube = mw.extract(model, task, layers=[LAYER], components=["resid"], neurons=True)
    rng = np.random.default_rng(0)
    cube = cube.assign_coords(
        {k: ("sample", rng.permutation(cube[k].values)) for k in GRAMMAR_LABELS}
    )
    res = mw.polysemantic(cube, labels=GRAMMAR_LABELS)
    assert res.shortlist.empty and res.summary()["n_polysemantic"] == 0


# --- calibration under heavy tails, and power -----------------------------------------


def lognormal_null(reps: int, n: int = 300, neurons: int = 1024):
    """Per replicate: the rank test's and the old Pearson test's p-values, lognormal
    activations against 3 lognormal features drawn independently of them."""
    for r in range(reps):
        rng = np.random.default_rng([r, 21])
        x = rng.lognormal(0.0, 1.5, (n, neurons))
        y = rng.lognormal(0.0, 1.5, (n, 3))
        rank = two_sided_p(rank_test(x, y, rng).z)
        pearson = two_sided_p(loading_z(feature_loadings(x, y), n))
        yield rank, pearson, feature_loadings(x, y).beta


def test_rank_test_holds_its_family_wise_rate_under_heavy_tails():
    """Holm over every (neuron, feature) loading: any rejection is a family-wise error.
    The Pearson test with a normal tail fails this design; the rank test must not."""
    reps, rank_errors, pearson_errors = 40, 0, 0
    for rank, pearson, beta in lognormal_null(reps):
        rank_errors += bool((count_features(rank.T, beta.T, 0.0, 0.95, "holm").n_features).any())
        pearson_errors += bool(
            (count_features(pearson.T, beta.T, 0.0, 0.95, "holm").n_features).any()
        )
    assert rank_errors <= 5  # P(X >= 6) = 0.014 for Binomial(40, 0.05)
    assert pearson_errors >= reps // 2  # the design is heavy-tailed enough to matter


def test_rank_test_keeps_the_power_on_planted_neurons():
    """32 neurons of 1,024 planted on two features (ReLU, as an MLP would): the rank test
    flags about as many as the Pearson test did (bench/polysemantic_calibration.py at this
    weight: 0.94 against 0.93)."""
    found = {"rank": 0, "pearson": 0}
    reps = 6
    for r in range(reps):
        rng = np.random.default_rng([r, 22])
        y = rng.integers(0, 2, (300, 3)).astype(float)
        pre = rng.standard_normal((300, 1024))
        for j in range(32):
            pre[:, j] += 0.4 * ((2 * y[:, j % 3] - 1) + (2 * y[:, (j + 1) % 3] - 1))
        x = np.maximum(pre + 1.5, 0.0)
        beta = feature_loadings(x, y).beta
        for name, p in (
            ("rank", two_sided_p(rank_test(x, y, rng).z)),
            ("pearson", two_sided_p(loading_z(feature_loadings(x, y), 300))),
        ):
            count = count_features(p.T, beta.T, 0.2, 0.95, "holm").n_features
            found[name] += int((count[:32] >= 2).sum())
            assert (count[32:] < 2).all()  # no noise neuron flagged
    total = 32 * reps
    assert found["rank"] >= 0.5 * total and found["rank"] >= found["pearson"] - 0.05 * total


def test_normal_scores_break_ties_at_random_and_keep_constants():
    a = np.array([[0.0, 0, 1, 0, 2], [5, 5, 5, 5, 5]]).T
    averaged = normal_scores(a)
    assert np.unique(averaged[[0, 1, 3], 0]).size == 1 and (averaged[:, 1] == 0).all()
    broken = normal_scores(a, np.random.default_rng(0))
    quantiles = norm.ppf(np.arange(1, 6) / 6)
    np.testing.assert_allclose(np.sort(broken[:, 0]), quantiles)
    assert broken[4, 0] == quantiles[-1] and broken[2, 0] == quantiles[-2]
    assert (broken[:, 1] == 0).all()


def test_heavy_tailed_cube_flags_nothing_through_the_action():
    rng = np.random.default_rng(8)
    n = 400
    cube = xr.Dataset(
        {"neurons": (("sample", "layer", "neuron"), rng.lognormal(0, 1.5, (n, 1, 512)))},
        coords={
            "layer": [0],
            "neuron": np.arange(512),
            "split": ("sample", np.array(["train", "val", "test"])[np.arange(n) % 5 // 2]),
            **{f"c{i}": ("sample", rng.lognormal(0, 1.5, n)) for i in range(3)},
        },
    )
    res = mw.polysemantic(cube, labels=["c0", "c1", "c2"], permutations=100)
    assert res.shortlist.empty
    d = res.data
    assert np.nanmin(d["p_value"].values) > 1e-4  # no extreme p-value from an outlier
    assert 0.9 < res.summary()["null_sd"] < 1.1
