"""CKA: known values, invariances, the debiased estimator, undefined cases, and the streamed
routes (same values as one Gram per layer, memory within two layers)."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from mechwidgets.analysis import geometry
from mechwidgets.analysis.geometry import STREAM_LAYERS, cka, cka_matrix
from mechwidgets.core.errors import SpecError


def unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Song et al. (2012), eq. 5, written directly on Gram matrices (the reference)."""
    n = len(k)
    k, l = k.copy(), l.copy()  # noqa: E741
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (
        np.trace(k @ l)
        + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * one @ k @ l @ one
    ) / (n * (n - 3))


def reference_dcka(x: np.ndarray, y: np.ndarray) -> float:
    k, l = x @ x.T, y @ y.T  # noqa: E741
    return unbiased_hsic(k, l) / np.sqrt(unbiased_hsic(k, k) * unbiased_hsic(l, l))


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


def test_identical_layers_score_one(rng):
    x = rng.normal(size=(80, 20))
    assert cka(x, x) == pytest.approx(1.0)
    assert cka(x, x, debiased=False) == pytest.approx(1.0)


@pytest.mark.parametrize("debiased", [True, False])
def test_invariant_to_rotation_and_isotropic_scaling(rng, debiased):
    x = rng.normal(size=(60, 30))
    y = x @ rng.normal(size=(30, 10)) + 0.5 * rng.normal(size=(60, 10))
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    base = cka(x, y, debiased)
    assert cka(3.7 * x @ q, y, debiased) == pytest.approx(base)
    assert cka(x, 0.2 * y, debiased) == pytest.approx(base)
    assert cka(x + 5.0, y, debiased) == pytest.approx(base)


def test_debiased_near_zero_where_linear_is_high(rng):
    # plain CKA's small-sample bias: two independent 50 x 384 matrices
    # gave linear 0.887, debiased 0.03
    x, y = rng.normal(size=(50, 384)), rng.normal(size=(50, 384))
    assert cka(x, y, debiased=False) > 0.8
    assert abs(cka(x, y)) < 0.1


@pytest.mark.parametrize("shape", [(40, 100), (300, 10)])  # Gram route and feature route
def test_debiased_matches_gram_reference(rng, shape):
    x = rng.normal(size=shape) + 1.0
    y = x[:, :5] @ rng.normal(size=(5, 7)) + rng.normal(size=(shape[0], 7))
    assert cka(x, y) == pytest.approx(reference_dcka(x, y), rel=1e-8)


def test_constant_representation_is_undefined_not_a_number(rng):
    x = rng.normal(size=(30, 8))
    const = np.full((30, 8), 2.5, dtype=np.float32)
    assert np.isnan(cka(x, const))
    assert np.isnan(cka(const, x, debiased=False))
    mat = cka_matrix({0: const, 1: x, 2: x[:, :4]})
    assert json.loads(mat.attrs["undefined"]) == [0]
    assert np.isnan(mat.values[0]).all() and np.isnan(mat.values[:, 0]).all()
    assert np.isfinite(mat.values[1:, 1:]).all()


def test_matrix_is_symmetric_with_unit_diagonal(rng):
    reps = {layer: rng.normal(size=(50, 12)) for layer in range(4)}
    mat = cka_matrix(reps)
    assert mat.dims == ("layer_a", "layer_b")
    np.testing.assert_allclose(mat.values, mat.values.T)
    np.testing.assert_allclose(np.diag(mat.values), 1.0)
    assert mat.attrs["estimator"] == "debiased"


def test_bad_inputs_are_one_line_errors(rng):
    with pytest.raises(SpecError, match="at least 4 samples"):
        cka(rng.normal(size=(3, 5)), rng.normal(size=(3, 5)))
    with pytest.raises(SpecError, match="row counts differ"):
        cka(rng.normal(size=(10, 5)), rng.normal(size=(11, 5)))


def all_pairs_reference(reps: dict) -> np.ndarray:
    """The estimator as it was: float64 copies, one n x n Gram per layer, all pairs."""
    keys = list(reps)
    xs = [np.asarray(reps[k], np.float64) for k in keys]
    return np.array([[reference_dcka(a, b) for b in xs] for a in xs])


@pytest.mark.parametrize(
    "n, widths",
    [(120, (40, 64, 64, 17)), (400, (3, 5, 4)), (80, (300, 5))],  # Gram, feature, Gram
)
def test_streamed_routes_match_the_all_grams_estimator(rng, n, widths):
    base = rng.normal(size=(n, max(widths)))
    reps = {
        i: (base[:, :w] @ rng.normal(size=(w, w)) + rng.normal(size=(n, w)) + 3.0).astype(
            np.float32 if i % 2 else np.float64
        )
        for i, w in enumerate(widths)
    }
    np.testing.assert_allclose(
        cka_matrix(reps).values, all_pairs_reference(reps), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("n, d", [(600, 200), (3000, 20)])  # Gram route, feature route
def test_memory_stays_within_two_layers_not_one_gram_per_layer(rng, n, d):
    reps = {i: rng.normal(size=(n, d)).astype(np.float32) for i in range(6)}
    tracemalloc.start()
    got = cka_matrix(reps).values
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    two_layers = STREAM_LAYERS * n * d * 8
    # one float64 Gram per layer would be 6 * n^2 * 8 bytes: 17 MB at n = 600
    assert peak <= 2 * two_layers + 2**20, (peak, two_layers)
    np.testing.assert_allclose(np.diag(got), 1.0)


def test_float32_gram_tiles_match_float64(rng, monkeypatch):
    """A large Gram route forms its tiles in float32 (sums in float64): the same CKA to
    1e-7, even with offsets a thousand times the spread and one dominant dimension, as
    real residual streams have; below the threshold every product stays float64."""
    n, widths = 200, (300, 256, 300)
    base = rng.normal(size=(n, max(widths)))
    reps = {}
    for i, w in enumerate(widths):
        x = base[:, :w] + 0.5 * rng.normal(size=(n, w))
        x[:, 0] *= 30.0  # a dominant dimension
        reps[i] = (x + 1000.0 * rng.normal(size=w)).astype(np.float32)  # large offsets
    exact = cka_matrix(reps)
    assert exact.attrs["products"] == "float64"
    monkeypatch.setattr(geometry, "FLOAT32_ABOVE", 0)
    fast = cka_matrix(reps)
    assert fast.attrs["products"] == "float32"
    np.testing.assert_allclose(fast.values, exact.values, rtol=0, atol=1e-7)
    assert np.abs(exact.values[np.triu_indices(len(widths), 1)]).max() > 0.1  # not all ~0
