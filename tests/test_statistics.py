"""Scores, bootstrap intervals, permutation p-values and corrections against known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, r2_score, roc_auc_score

from mechwidgets.analysis.statistics import (
    adjust_pvalues,
    batch_score,
    bootstrap_pvalue,
    bootstrap_weights,
    cluster_bootstrap_weights,
    effective_n,
    normal_tail_fits,
    percentile_interval,
    permutation_pvalue,
    proportion_interval,
    score,
    simultaneous_interval,
)
from mechwidgets.core.errors import SpecError


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 2, n)
    dec = y[:, None] * 0.8 + rng.normal(size=(n, 5))
    dec[:, 4] = np.round(dec[:, 4])  # many ties
    dec[:40, 3] = 0.0
    value = rng.normal(size=n)
    pred = value[:, None] + rng.normal(size=(n, 3))
    return rng, y, dec, value, pred


def test_batch_score_equals_sklearn_with_unit_weights(data):
    _, y, dec, value, pred = data
    classes = (dec > 0.4).astype(int)
    np.testing.assert_allclose(
        batch_score("accuracy", y, classes)[0], [accuracy_score(y, c) for c in classes.T]
    )
    np.testing.assert_allclose(batch_score("auc", y, dec)[0], [roc_auc_score(y, d) for d in dec.T])
    np.testing.assert_allclose(
        batch_score("r2", value, pred)[0], [r2_score(value, p) for p in pred.T]
    )
    assert score("auc", y, dec[:, 0]) == pytest.approx(roc_auc_score(y, dec[:, 0]))


def test_bootstrap_weights_equal_explicit_resamples(data):
    rng, y, dec, value, pred = data
    w = bootstrap_weights(len(y), 6, rng)
    assert w.shape == (6, len(y)) and (w.sum(axis=1) == len(y)).all()
    rows = [np.repeat(np.arange(len(y)), row.astype(int)) for row in w]
    auc = batch_score("auc", y, dec, w)
    r2 = batch_score("r2", value, pred, w)
    for r, idx in enumerate(rows):
        assert auc[r, 4] == pytest.approx(roc_auc_score(y[idx], dec[idx, 4]))
        assert r2[r, 1] == pytest.approx(r2_score(value[idx], pred[idx, 1]))


def test_batch_score_keeps_leading_dims(data):
    _, y, dec, _, _ = data
    stacked = np.stack([dec, -dec])  # (2, n, 5)
    out = batch_score("auc", y, stacked)
    assert out.shape == (1, 2, 5)
    np.testing.assert_allclose(out[0, 0] + out[0, 1], 1.0)


def test_percentile_interval_matches_binomial_width():
    rng = np.random.default_rng(1)
    n, p = 500, 0.8
    correct = (rng.random(n) < p).astype(int)
    boot = batch_score("accuracy", correct, np.ones((n, 1), int), bootstrap_weights(n, 2000, rng))
    lo, hi = percentile_interval(boot[:, 0], 0.95)
    acc = correct.mean()
    half = 1.96 * np.sqrt(acc * (1 - acc) / n)
    assert lo < acc < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)


def test_simultaneous_interval_covers_the_family_jointly():
    rng = np.random.default_rng(2)
    draws = rng.normal(size=(15, 4000))  # 15 independent estimates
    lo, hi, g = simultaneous_interval(draws, 0.95)
    inside_all = ((draws >= lo[:, None]) & (draws <= hi[:, None])).all(axis=0).mean()
    assert inside_all >= 0.95
    assert inside_all < 0.97  # calibrated, not arbitrarily wide
    assert 0.05 / 15 * 0.8 <= g <= 0.05  # about Bonferroni for independent estimates
    mlo, mhi = percentile_interval(draws, 0.95)
    assert (lo <= mlo).all() and (hi >= mhi).all()
    same = np.repeat(draws[:1], 15, axis=0)  # perfectly dependent: no widening needed
    assert simultaneous_interval(same, 0.95)[2] == pytest.approx(0.05, abs=0.002)


def test_permutation_pvalue_floor_and_rank():
    null = np.arange(200.0)
    assert permutation_pvalue(np.array(1000.0), null) == pytest.approx(1 / 201)
    assert permutation_pvalue(np.array(-1.0), null) == pytest.approx(1.0)
    assert permutation_pvalue(np.array(149.5), null) == pytest.approx(51 / 201)


def test_bootstrap_pvalue_counts_draws_at_or_below_zero():
    assert bootstrap_pvalue(np.ones(999)) == pytest.approx(1 / 1000)
    assert bootstrap_pvalue(np.r_[np.zeros(500), np.ones(499)]) == pytest.approx(501 / 1000)


def test_holm_and_bh_on_a_worked_example():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    np.testing.assert_allclose(adjust_pvalues(p, "holm")[:4], [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(adjust_pvalues(p, "bh")[:4], [0.02, 0.04, 0.04, 0.02])
    assert np.isnan(adjust_pvalues(p, "holm")[4])
    with pytest.raises(SpecError, match="unknown correction"):
        adjust_pvalues(p, "bonferoni")


def test_holm_controls_familywise_error_on_null_pvalues():
    rng = np.random.default_rng(3)
    families = rng.random((2000, 15))
    raw_any = (families < 0.05).any(axis=1).mean()
    holm_any = np.mean([(adjust_pvalues(f, "holm") < 0.05).any() for f in families])
    assert raw_any > 0.4  # thirty-ish unadjusted tests reject somewhere most of the time
    assert holm_any <= 0.06


def test_cluster_bootstrap_resamples_whole_units():
    rng = np.random.default_rng(4)
    units = np.repeat([3, 7, 1, 9, 4], [2, 5, 1, 3, 4])
    w = cluster_bootstrap_weights(units, 200, rng)
    for u in np.unique(units):
        block = w[:, units == u]
        assert (block == block[:, :1]).all()  # a unit's items travel together
    firsts = np.unique(units, return_index=True)[1]
    assert (w[:, firsts].sum(axis=1) == 5).all()  # five unit draws per resample
    items = np.arange(30)  # every item its own unit: the item bootstrap, draw for draw
    np.testing.assert_array_equal(
        cluster_bootstrap_weights(items, 50, np.random.default_rng(5)),
        bootstrap_weights(30, 50, np.random.default_rng(5)),
    )


def test_exact_interval_has_width_at_the_ceiling_and_matches_scipy():
    lo, hi = proportion_interval(1.0, 40.0)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 40))  # [0.912, 1], not a point
    for k, n in [(39, 40), (20, 40), (0, 40), (113, 120)]:
        ref = binomtest(k, n).proportion_ci(0.95, method="exact")
        got = proportion_interval(k / n, float(n))
        assert got == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_effective_n_counts_units_not_items_when_they_cluster():
    p, n = 0.8, 400
    binomial = p * (1 - p) / n
    assert effective_n(p, binomial * 199 / 200, n, n_units=n) == pytest.approx(n)
    clustered = effective_n(p, 4 * binomial * 39 / 40, n, n_units=40)
    assert 60 < clustered < 100  # deff 4, then t with 39 df
    assert effective_n(p, 100 * binomial, n, n_units=40) < 40  # never more spread than units
    assert effective_n(p, binomial, n, n_units=5) == 5  # too few units: each one counts once
    assert effective_n(1.0, 0.0, n, n_units=n) == n  # ceiling: nothing says items cluster


def test_permutation_pvalue_resolves_below_one_over_draws_with_a_checked_tail():
    rng = np.random.default_rng(6)
    null = rng.normal(0.5, 0.035, size=(3, 1000))
    p = permutation_pvalue(np.array([0.99, 0.62, 0.5]), null, tail=True)
    assert p[0] < 1e-20  # 14 sd above the null: far below 1 / 1001
    assert p[1] == pytest.approx(permutation_pvalue(np.array(0.62), null[1]))  # within draws
    assert p[2] > 0.3
    # a null whose tail is heavier than a normal's is not extrapolated: the floor stays
    lumpy = np.r_[np.full(600, 0.5), rng.normal(0.5, 0.05, 400)]
    assert not normal_tail_fits(lumpy)
    assert permutation_pvalue(np.array(0.99), lumpy, tail=True) == pytest.approx(1 / 1001)


def test_mid_p_counts_ties_half():
    null = np.r_[np.full(60, 0.5), np.linspace(0.3, 0.45, 20), np.linspace(0.55, 0.7, 20)]
    assert permutation_pvalue(np.array(0.5), null) == pytest.approx(81 / 101)
    assert permutation_pvalue(np.array(0.5), null, ties="mid") == pytest.approx(50.5 / 101)
    with pytest.raises(SpecError, match="ties"):
        permutation_pvalue(np.array(0.5), null, ties="random")


def test_144_strong_slices_all_significant_after_holm_at_the_defaults():
    rng = np.random.default_rng(7)
    null = rng.binomial(80, 0.5, size=(144, 1000)) / 80  # 5 seeds x 200 permutations
    observed = np.full(144, 0.99)
    assert (adjust_pvalues(permutation_pvalue(observed, null), "holm") > 0.05).all()  # floor
    assert (adjust_pvalues(permutation_pvalue(observed, null, tail=True), "holm") < 0.05).all()


def test_ceiling_coverage_of_the_exact_effective_n_interval():
    """Coverage >= 0.93 at accuracies 0.97-0.999 with 40 and 120 test items (Monte Carlo,
    binomial allowance), where percentile bootstrap intervals covered 0.48-0.85."""
    rng = np.random.default_rng(8)
    reps = 300
    for acc in (0.97, 0.99, 0.999):
        for n in (40, 120):
            correct = (rng.random((reps, n)) < acc).astype(float)
            w = bootstrap_weights(n, 500, rng)
            boot = w @ correct.T / n  # (resamples, reps)
            est = correct.mean(axis=1)
            lo, hi = proportion_interval(est, effective_n(est, boot.var(axis=0), n, n))
            hits = int(((lo <= acc) & (acc <= hi)).sum())
            assert binomtest(hits, reps, 0.93, alternative="less").pvalue > 1e-3, (acc, n, hits)
            assert (hi > lo).all()


def test_special_functions_give_scipy_stats_values_bit_for_bit():
    """The intervals, the t correction and the fitted tail use scipy.special (importing
    scipy.stats is most of a first display); every value equals scipy.stats' own."""
    from scipy.stats import beta, binom, norm
    from scipy.stats import t as student_t

    from mechwidgets.analysis.statistics import _binomial_sf, _fitted_tail

    rng = np.random.default_rng(3)
    p, n = rng.uniform(0, 1, 2000), rng.uniform(2, 800, 2000)
    p[:50] = 1.0  # the ceiling
    x, tail = p * n, (1 - 0.95) / 2
    lo, hi = proportion_interval(p, n)
    with np.errstate(invalid="ignore"):
        want_lo = np.where(x > 0, beta.ppf(tail, np.maximum(x, 1e-12), n - x + 1), 0.0)
        want_hi = np.where(x < n, beta.ppf(1 - tail, x + 1, np.maximum(n - x, 1e-12)), 1.0)
    assert np.array_equal(lo, want_lo) and np.array_equal(hi, want_hi)

    k = np.arange(-1, 202)
    for share in (0.1, 0.03, 0.01):
        assert np.array_equal(_binomial_sf(k, 200, share), binom.sf(k, 200, share))

    null = rng.normal(0.5, 0.02, (40, 200))
    observed = rng.normal(0.6, 0.05, 40)
    z = (observed - null.mean(-1)) / (null.std(-1, ddof=1) * np.sqrt(1 + 1 / 200))
    want = np.where(normal_tail_fits(null), student_t.sf(z, 199), 1.0)
    assert np.array_equal(_fitted_tail(observed, null), want)
    assert (want < 1).sum() > 30  # the tail was used, not the fallback

    boot_var, units = rng.uniform(1e-4, 1e-2, 50), 12
    got = effective_n(np.full(50, 0.8), boot_var, n_items=200, n_units=units)
    n_eff = np.clip(0.8 * 0.2 / (boot_var * units / (units - 1)), units, 200)
    assert np.allclose(got, n_eff * (norm.ppf(0.975) / student_t.ppf(0.975, 11)) ** 2)
