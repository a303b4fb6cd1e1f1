"""The probe engine and its controls: agreement with scikit-learn, determinism, chance."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge

from mechwidgets.core.errors import CubeError, SpecError
from mechwidgets.probes.controls import (
    check_controls,
    control_task_labels,
    random_subspaces,
    shuffled_labels,
)
from mechwidgets.probes.linear import LabelEncoding, RidgePath, fit_probe
from mechwidgets.probes.sweep import Protocol, aggregate, sweep
from mechwidgets.probes.synthetic import planted_cube

SPLIT = np.array(["train"] * 720 + ["val"] * 240 + ["test"] * 240)


@pytest.fixture(scope="module")
def problem():
    """A binary label that a linear probe reads at about 75-80% accuracy."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 64)) * rng.uniform(0.5, 3.0, size=64)
    w = rng.normal(size=64)
    y = ((x / x.std(0)) @ w / 8 + rng.normal(size=1200) * 0.7 > 0).astype(int)
    return x, y


def sklearn_protocol(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook protocol by hand: standardise on train, pick C on val, score test."""
    tr, va, te = (s == SPLIT for s in ("train", "val", "test"))
    mu, sd = x[tr].mean(0), x[tr].std(0)
    z = (x - mu) / sd
    fits = [LogisticRegression(C=c, max_iter=2000).fit(z[tr], y[tr]) for c in np.logspace(-4, 2, 8)]
    best = max(fits, key=lambda f: f.score(z[va], y[va]))
    return best.score(z[te], y[te])


def test_ridge_probe_agrees_with_sklearn_logistic(problem):
    x, y = problem
    reference = sklearn_protocol(x, y)
    ridge = fit_probe(x, y, SPLIT)
    logistic = fit_probe(x, y, SPLIT, probe="logistic")
    assert 0.7 < reference < 0.95
    assert abs(ridge.test_score - reference) <= 0.02
    assert abs(logistic.test_score - reference) <= 0.02


def test_fitted_probe_weights_act_on_raw_activations(problem):
    x, y = problem
    probe = fit_probe(x, y, SPLIT)
    te = SPLIT == "test"
    assert probe.coef.shape == (64, 1)
    assert np.mean(probe.predict(x[te]) == y[te]) == pytest.approx(probe.test_score)


@pytest.mark.parametrize("shape", [(200, 20), (30, 80)])  # eigh of X^T X, and of X X^T
def test_ridge_path_equals_sklearn_ridge(shape):
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape)
    x -= x.mean(0)
    t = rng.normal(size=(shape[0], 3))
    path = RidgePath(x[None])
    alphas = np.array([0.1, 10.0])
    path.fit(t[None], alphas)
    for a, alpha in enumerate(alphas):
        ref = Ridge(alpha=alpha).fit(x, t)
        weights = path.weights(np.full((1, 3), a))[0]
        np.testing.assert_allclose(weights, ref.coef_.T, atol=1e-8)
        dec = path.decision(path.project(x[None]), np.full((1, 3), a))[0]
        np.testing.assert_allclose(dec, ref.predict(x), atol=1e-8)


def test_multiclass_and_continuous_labels_decode_where_planted():
    cube = planted_cube(
        {"c3": {(1, "resid"): 3.0}, "v": {(1, "resid"): 3.0}},
        classes={"c3": 3, "v": 0},
        components=("resid",),
        n_layers=3,
    )
    raw = sweep(cube, ["c3", "v"], Protocol(controls=("label_shuffle",), seeds=(0,)))
    score = raw["score"].sel(control="none", component="resid", seed=0)
    assert list(raw["metric"].values) == ["accuracy", "r2"]
    assert score.sel(label="c3", layer=1) > 0.85
    assert score.sel(label="c3", layer=0) < 0.5
    assert score.sel(label="v", layer=1) > 0.8
    assert score.sel(label="v", layer=0) < 0.1


@pytest.fixture(scope="module")
def planted():
    return planted_cube({"f": {(2, "resid"): 3.0}}, n_layers=4, components=("resid", "mlp"))


def test_deterministic_for_a_seed(planted):
    protocol = Protocol(seeds=(3,), permutations=50, resamples=200)
    a, b = sweep(planted, ["f"], protocol), sweep(planted, ["f"], protocol)
    for name in ("score", "boot", "null", "alpha"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    other = sweep(planted, ["f"], Protocol(seeds=(4,), permutations=50, resamples=200))
    assert not np.array_equal(a["null"].values, other["null"].values)
    np.testing.assert_array_equal(  # the real probe itself does not depend on the seed
        a["score"].sel(control="none").values, other["score"].sel(control="none").values
    )


def test_shuffled_labels_fall_to_chance(planted):
    protocol = Protocol(controls=("label_shuffle",), seeds=(0, 1))
    raw = sweep(planted, ["f"], protocol)
    shuffled = raw["null"].sel(control="label_shuffle")
    assert abs(float(shuffled.mean()) - 0.5) < 0.02  # 2 x 200 draws x 8 slices
    per_slice = shuffled.mean(["seed", "draw"])
    assert (abs(per_slice - 0.5) < 0.05).all()
    real = raw["score"].sel(control="none", layer=2, component="resid")
    assert (real > 0.85).all()


def test_control_task_scores_chance_on_held_out_word_types(planted):
    protocol = Protocol(controls=("control_task",), seeds=(0,))
    agg = aggregate(sweep(planted, ["f"], protocol), protocol)
    row = agg.sel(label="f", layer=2, component="resid")
    control = float(row["score"].sel(control="control_task"))
    assert abs(control - 0.5) < 0.15  # types are disjoint between splits: nothing to memorise
    real = float(row["score"].sel(control="none"))
    assert float(row["selectivity"].sel(control="control_task")) == pytest.approx(real - control)
    assert float(row["p_value"].sel(control="control_task")) < 0.01


def test_controls_keep_what_they_must():
    rng = np.random.default_rng(0)
    codes = np.repeat([0, 1, 2], 20)
    train = np.arange(60) % 3 != 0
    cols = shuffled_labels(codes, train, 5, rng)
    for part in (train, ~train):
        assert all(sorted(col) == sorted(codes[part]) for col in cols[part].T)
    assert (cols != codes[:, None]).any(axis=0).all()
    types = np.arange(60) // 4  # 15 types of 4 samples, each type one class
    ctrl = control_task_labels(codes, types, 5, rng)
    for col in ctrl.T:
        assert all(len(set(col[types == t])) == 1 for t in range(15))  # one label per type
        assert sorted(np.bincount(col[::4])) == sorted(np.bincount(codes[::4]))  # type balance
    bases = random_subspaces(10, 2, 4, rng)
    np.testing.assert_allclose(
        np.swapaxes(bases, 1, 2) @ bases, np.broadcast_to(np.eye(2), (4, 2, 2)), atol=1e-12
    )


def test_unknown_control_and_label_problems_are_one_line_errors():
    with pytest.raises(SpecError, match="unknown control 'shuffle'") as err:
        check_controls(["label_shuffle", "shuffle"])
    assert "\n" not in str(err.value)
    with pytest.raises(CubeError, match="one class"):
        LabelEncoding.infer(np.zeros(10, int), "number")
    with pytest.raises(SpecError, match="metric 'r2' does not suit"):
        LabelEncoding.infer(np.arange(10) % 2).check_metric("r2")
    with pytest.raises(SpecError, match="'permutations'"):
        Protocol(permutations=0)


def test_label_permutations_respect_units():
    rng = np.random.default_rng(1)
    split = np.repeat(["train", "test"], 30)
    units = np.repeat(np.arange(12), 5)  # 12 units of 5 items, nested in the splits
    per_unit = np.array([0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 0])
    codes = per_unit[units]  # the label is constant within every unit
    cols = shuffled_labels(codes, split, 50, rng, units)
    for col in cols.T:
        assert all(len(set(col[units == u])) == 1 for u in range(12))  # whole units swap
        for part in ("train", "test"):  # and only within their split
            mask = split[::5] == part
            assert sorted(col[::5][mask]) == sorted(per_unit[mask])
    assert len({tuple(c[::5]) for c in cols.T}) > 10  # it does permute
    mixed = np.tile([0, 1, 1, 0, 1], 12)  # the label varies within units
    cols = shuffled_labels(mixed, split, 50, rng, units)
    for col in cols.T:  # each unit keeps its own label mix: permuted within units
        assert all(sorted(col[units == u]) == sorted(mixed[units == u]) for u in range(12))
    assert (cols != mixed[:, None]).any()
