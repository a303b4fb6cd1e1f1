"""Scores, bootstrap intervals, permutation p-values and multiple-testing corrections.

A probe score means little without its sampling noise, its seed spread and its controls.
This module holds the numbers behind every interval and p-value the actions report:
single evaluations go through scikit-learn's AUC and R^2 (accuracy is a mean of matches);
everything evaluated thousands of times (bootstrap resamples, permutation nulls, the
regularisation path) goes through one vectorised, weighted implementation of the same
metrics.

Items that share a unit (the word type of a built-in task, a user's ``groups``) are not
independent: :func:`cluster_bootstrap_weights` resamples whole units, and
:func:`effective_n` turns the resulting spread into the number of independent items an
exact binomial interval (:func:`proportion_interval`) should count, so intervals stay
honest under clustering and at the ceiling. :func:`permutation_pvalue` resolves below
``1 / (B + 1)`` with a checked fitted tail.

>>> w = cluster_bootstrap_weights(units, resamples=1000, rng=np.random.default_rng(0))
>>> boot = batch_score("accuracy", y_true, y_pred[:, None], w)     # (1000, 1)
>>> n_eff = effective_n(acc, boot[:, 0].var(), n_items=500, n_units=40)
>>> lo, hi = proportion_interval(acc, n_eff, level=0.95)
>>> adjust_pvalues(np.array([0.001, 0.02, 0.4]), "holm")
"""

from __future__ import annotations

import warnings

import numpy as np

# The quantiles and tails below are scipy.special's functions, the very ones scipy.stats'
# distributions call (same values, bit for bit: tests/test_statistics.py): importing
# scipy.stats costs 0.45-0.66 s of CPU, most of a notebook's first display. rankdata and
# false_discovery_control, needed off the default path, import it where they are used.
from scipy.special import betainc, betaincinv, ndtri, stdtr, stdtrit

from mechwidgets.core.errors import SpecError
from mechwidgets.core.params import CORRECTIONS, METRICS, Metric

#: largest (resamples x samples x columns) block the AUC evaluates at once
_AUC_BLOCK = 1 << 23
#: upper-tail shares of the fitted null at which the permutation draws check the fit
_TAIL_CHECKS = (0.1, 0.03, 0.01)
#: a fitted tail is rejected when the draws beyond any check point are this unlikely
_TAIL_REJECT = 1e-3


def score(metric: Metric, y_true: np.ndarray, output: np.ndarray) -> float:
    """One evaluation of a metric (scikit-learn's for AUC and R^2).

    Parameters
    ----------
    metric : ``"accuracy"`` (``output`` = predicted class), ``"auc"`` (``output`` = decision
        value, binary ``y_true`` in {0, 1}) or ``"r2"`` (``output`` = prediction).
    y_true, output : 1-D arrays of equal length.

    Returns
    -------
    The score; NaN for AUC when ``y_true`` holds one class (AUC is undefined then).
    """
    if metric == "accuracy":
        # numpy, not sklearn's accuracy_score: the protocol calls this for every control
        # and seed of every slice, and on a small detect (toy-grammar, 600 items) the
        # validation accuracy_score runs on each call was a quarter of the time; the
        # value is the same mean of matches
        return float(np.mean(np.asarray(y_true) == np.asarray(output)))
    if metric == "auc":
        if np.unique(y_true).size < 2:
            return float("nan")
        from sklearn.metrics import roc_auc_score  # here: detect's accuracy needs no sklearn

        return float(roc_auc_score(y_true, output))
    if metric == "r2":
        from sklearn.metrics import r2_score

        return float(r2_score(y_true, output))
    raise SpecError(f"unknown metric '{metric}': choose one of {', '.join(METRICS)}")


def batch_score(
    metric: Metric,
    y_true: np.ndarray,
    output: np.ndarray,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted scores of many output columns under many sample weightings at once.

    scikit-learn scores one vector per call; a bootstrap (1,000 resamples) times a
    permutation null (hundreds of columns) would be ~10^5 Python calls per slice. With the
    resamples written as multinomial count weights, accuracy and R^2 become matrix products
    and AUC a weighted rank sum, so all of them run as a few array operations. With unit
    weights the results equal :func:`score` (tests check it).

    Parameters
    ----------
    metric : as in :func:`score`.
    y_true : ``(n,)`` or ``(..., n, m)`` true values (class indices, or floats for r2),
        broadcast against ``output``.
    output : ``(..., n, m)`` predicted classes, decision values or predictions.
    weights : ``(R, n)`` non-negative sample weights (bootstrap counts); None = one unit row.

    Returns
    -------
    ``(R, ..., m)`` scores.
    """
    out = np.asarray(output)
    n, m = out.shape[-2:]
    y = np.asarray(y_true)
    y = np.broadcast_to(y[:, None] if y.ndim == 1 else y, out.shape)
    w = np.ones((1, n)) if weights is None else np.asarray(weights, float)
    # leading dims (e.g. one design per random-subspace draw) become extra columns
    flat = _columns(
        metric, np.moveaxis(y, -2, 0).reshape(n, -1), np.moveaxis(out, -2, 0).reshape(n, -1), w
    )
    return flat.reshape(w.shape[0], *out.shape[:-2], m)


def _columns(metric: Metric, y: np.ndarray, output: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``(R, m)`` weighted scores of ``(n, m)`` columns."""
    total = w.sum(axis=1, keepdims=True)
    if metric == "accuracy":
        return (w @ (y == output).astype(float)) / total
    if metric == "r2":
        y = y.astype(float)
        ss_res = w @ (y - output) ** 2
        mean = (w @ y) / total
        ss_tot = w @ y**2 - total * mean**2
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1.0 - ss_res / ss_tot
    if metric == "auc":
        return _batch_auc(y, output, w)
    raise SpecError(f"unknown metric '{metric}': choose one of {', '.join(METRICS)}")


def _batch_auc(y: np.ndarray, output: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUC with ties counted one half, column by column block."""
    n, m = output.shape
    out = np.empty((w.shape[0], m))
    block = max(1, _AUC_BLOCK // max(1, w.shape[0] * n))
    for start in range(0, m, block):
        cols = slice(start, min(m, start + block))
        order = np.argsort(output[:, cols], axis=0, kind="stable")
        s = np.take_along_axis(output[:, cols], order, axis=0)
        pos = np.take_along_axis(y[:, cols], order, axis=0) == 1
        ws = w[:, order]  # (R, n, b): each item's weight, in sorted order per column
        neg_w = ws * ~pos
        cum = np.concatenate([np.zeros_like(neg_w[:, :1]), np.cumsum(neg_w, axis=1)], axis=1)
        # tie groups: first and one-past-last sorted index of each item's value
        first = np.maximum.accumulate(np.where(_starts(s), np.arange(n)[:, None], 0), axis=0)
        last = n - np.maximum.accumulate(np.where(_starts(s[::-1]), np.arange(n)[:, None], 0))
        last = last[::-1]
        below = np.take_along_axis(cum, first[None], axis=1)
        ties = np.take_along_axis(cum, last[None], axis=1) - below
        pos_w = ws * pos
        num = (pos_w * (below + 0.5 * ties)).sum(axis=1)
        den = pos_w.sum(axis=1) * neg_w.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:, cols] = np.where(den > 0, num / den, np.nan)
    return out


def _starts(s: np.ndarray) -> np.ndarray:
    """True where a sorted column starts a new run of equal values."""
    return np.concatenate([np.ones_like(s[:1], bool), s[1:] != s[:-1]], axis=0)


def bootstrap_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``(resamples, n)`` multinomial counts: each row is one resample of ``n`` items.

    Using the same weights for every layer, component and control makes all comparisons
    between them paired (same resampled test items).
    """
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def cluster_bootstrap_weights(
    units: np.ndarray, resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """``(resamples, n)`` item weights of a cluster bootstrap: whole units are resampled.

    Each resample draws the ``G`` units with replacement and gives every item its unit's
    count, so items of one unit always travel together (the cluster bootstrap of Field &
    Welsh 2007, "Bootstrapping clustered data", JRSS-B 69: 369-390; Davison & Hinkley 1997,
    section 3.8). When every item is its own unit this is :func:`bootstrap_weights`, draw
    for draw.
    """
    _, inverse = np.unique(np.asarray(units), return_inverse=True)
    n_units = int(inverse.max()) + 1
    counts = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=resamples)
    return counts[:, inverse].astype(np.float64)


def effective_n(
    estimate: np.ndarray | float,
    boot_var: np.ndarray | float,
    n_items: int,
    n_units: int,
    level: float = 0.95,
    min_units: int = 8,
) -> np.ndarray:
    """How many independent items an accuracy's spread is worth (design effect).

    ``n_items / deff``, with ``deff`` the (unit-bootstrap) variance over the binomial one
    ``p (1 - p) / n_items``, kept within ``[n_units, n_items]``: clustering cannot make
    items worth more than independent ones, and a mean of ``n_units`` independent values in
    [0, 1] has at most the variance of ``n_units`` coin flips. With fewer than ``min_units``
    units the between-unit spread cannot be estimated and each unit counts as one item
    (that bound). For clustered items the count is shrunk by ``(z / t_{G-1})^2``, so the
    interval uses Student's t on ``G - 1`` degrees of freedom, as cluster-robust inference
    with few clusters should (Cameron & Miller 2015, J. Human Resources 50: 317-372). At 0
    or 1 the spread says nothing about clustering; items count as independent there.
    """
    p = np.asarray(estimate, float)
    var = np.asarray(boot_var, float) * n_units / max(n_units - 1, 1)  # unbiased for G units
    binomial = p * (1 - p) / n_items
    with np.errstate(divide="ignore", invalid="ignore"):
        n_eff = np.where(binomial > 0, n_items * binomial / np.maximum(var, 1e-300), n_items)
    n_eff = np.clip(np.nan_to_num(n_eff, nan=n_items), n_units, n_items)
    if n_units < min_units:
        return np.where(np.isfinite(p), float(n_units), np.nan)
    if n_units < n_items:
        z = ndtri(0.5 + level / 2)
        n_eff = n_eff * (z / stdtrit(n_units - 1, 0.5 + level / 2)) ** 2
    return np.where(np.isfinite(p), n_eff, np.nan)


def proportion_interval(
    estimate: np.ndarray | float, n_eff: np.ndarray | float, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Clopper-Pearson interval for a proportion worth ``n_eff`` independent items.

    scipy's ``binomtest(...).proportion_ci`` needs integer counts; an effective count is
    fractional, so the interval is written with the beta quantiles it is defined by. Its
    coverage is at least ``level`` for every true proportion (Wilson's dips to ~0.89 at
    0.997 with 40 items), and its width never reaches 0: at 40/40 it is [0.912, 1].
    """
    p = np.asarray(estimate, float)
    n = np.asarray(n_eff, float)
    x = p * n
    tail = (1 - level) / 2
    with np.errstate(invalid="ignore"):
        lo = np.where(x > 0, betaincinv(np.maximum(x, 1e-12), n - x + 1, tail), 0.0)
        hi = np.where(x < n, betaincinv(x + 1, np.maximum(n - x, 1e-12), 1 - tail), 1.0)
    bad = ~np.isfinite(p) | ~np.isfinite(n)
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)


def percentile_interval(
    draws: np.ndarray, level: float = 0.95, axis: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap ``draws`` along ``axis``.

    NaN draws are ignored; where all draws are NaN (a slice that was not probed) the
    interval is NaN.
    """
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        lo, hi = np.nanpercentile(draws, [tail, 100 - tail], axis=axis)
    return lo, hi


def simultaneous_interval(
    draws: np.ndarray, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, float]:
    """Percentile intervals that hold jointly for a family of estimates (max statistic).

    Each estimate gets the interval between its ``g/2`` and ``1 - g/2`` quantiles, with one
    ``g`` chosen so that a fraction ``level`` of the bootstrap draws fall inside *all*
    intervals at once. Because the draws are joint (the same resample for every member),
    the calibration uses the actual dependence between estimates: about as wide as
    Bonferroni for independent estimates, much tighter for correlated ones. Intervals are
    order statistics of each row, so the stated joint coverage holds on the draws exactly.

    Parameters
    ----------
    draws : ``(family, draws)`` bootstrap draws, one row per estimate.
    level : joint coverage.

    Returns
    -------
    ``(low, high, g)``: arrays of shape ``(family,)`` and the per-estimate two-sided level
    ``g`` actually used (``1 - g`` is each interval's marginal coverage).
    """
    from scipy.stats import rankdata  # off detect's default path (accuracy skips this)

    n = draws.shape[1]
    # two-sided tail position of each draw within its own row: the share of the row's draws
    # at or below it, or at or above it (ties count on the draw's side: discrete scores such
    # as accuracy tie often)
    at_or_below = rankdata(draws, method="max", axis=1)
    at_or_above = n + 1 - rankdata(draws, method="min", axis=1)
    tail = np.minimum(at_or_below, at_or_above) / n
    worst = np.sort(tail.min(axis=0))  # the most extreme member, per draw
    # the largest tail share t such that at least `level` of the draws have every member
    # inside its own [t, 1 - t] order-statistic range
    t = worst[int(np.floor((1 - level) * worst.size))]
    t = min(max(float(t), 1.0 / n), (1 - level) / 2)
    k = int(np.ceil(t * n - 1e-9))
    ordered = np.sort(draws, axis=1)
    return ordered[:, k - 1], ordered[:, n - k], 2 * t


def permutation_pvalue(
    observed: np.ndarray, null: np.ndarray, *, ties: str = "count", tail: bool = False
) -> np.ndarray:
    """One-sided permutation p-value ``(1 + #{null >= observed}) / (B + 1)``.

    ``null`` has the B null statistics on its last axis; ``observed`` broadcasts against
    the rest. The +1 counts the observed labelling itself, so p never reaches 0.

    Parameters
    ----------
    ties : ``"count"`` (draws equal to the observed count fully: exact and conservative)
        or ``"mid"`` (they count one half, as does the observed itself: the mid-p value of
        Lancaster 1961, for nulls with a large point mass).
    tail : resolve below ``1 / (B + 1)``: where the observed value beats every draw, p is
        the upper tail of a normal fitted to the draws (Student's t predictive, as mean and
        sd are estimated), but only where :func:`normal_tail_fits` accepts the fit; else it
        stays ``1 / (B + 1)``. Fitting a tail to the permutation null instead of drawing
        ever more permutations follows Knijnenburg et al. 2009 (Bioinformatics 25: i161).
    """
    null = np.asarray(null, float)
    obs = np.asarray(observed, float)[..., None]
    b = null.shape[-1]
    above = (null > obs).sum(axis=-1)
    equal = (null == obs).sum(axis=-1)
    if ties == "mid":
        p = (above + 0.5 * (equal + 1.0)) / (b + 1.0)
    elif ties == "count":
        p = (1.0 + above + equal) / (b + 1.0)
    else:
        raise SpecError(f"unknown ties rule '{ties}': choose count or mid")
    if tail:
        p = np.where(above + equal == 0, np.minimum(p, _fitted_tail(obs[..., 0], null)), p)
    return p


def normal_tail_fits(null: np.ndarray) -> np.ndarray:
    """Whether a normal fitted to the draws (last axis) is safe to extrapolate upwards.

    At upper-tail shares 0.1, 0.03 and 0.01 of the fitted normal, the draws beyond each
    point are counted; the fit is rejected when any count is too large for a binomial with
    that share (one-sided p < 0.001), i.e. when the draws' tail is heavier than the fit's
    and an extrapolated p-value would be too small. Degenerate draws (sd 0) never fit.
    """
    null = np.asarray(null, float)
    b = null.shape[-1]
    mean, sd = null.mean(axis=-1), null.std(axis=-1, ddof=1)
    ok = sd > 0
    for share in _TAIL_CHECKS:
        cut = mean - ndtri(share) * sd  # the normal's upper `share` point
        beyond = (null >= cut[..., None]).sum(axis=-1)
        ok &= _binomial_sf(beyond - 1, b, share) >= _TAIL_REJECT
    return ok


def _binomial_sf(k: np.ndarray, n: int, p: float) -> np.ndarray:
    """``P(X > k)`` for ``X ~ Binomial(n, p)``: scipy.stats' ``binom.sf``, which is this
    regularised incomplete beta for ``0 <= k < n`` (1 below, 0 from ``n`` on)."""
    k = np.asarray(k)
    inside = (k >= 0) & (k < n)
    kk = np.where(inside, k, 0).astype(float)
    with np.errstate(invalid="ignore"):
        tail = betainc(kk + 1, n - kk, p)
    return np.where(k < 0, 1.0, np.where(inside, tail, 0.0))


def _fitted_tail(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Upper-tail p of ``observed`` under a normal fitted to ``null`` (1 where it fails)."""
    b = null.shape[-1]
    mean, sd = null.mean(axis=-1), null.std(axis=-1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (observed - mean) / (sd * np.sqrt(1.0 + 1.0 / b))
        p = stdtr(b - 1, -z)  # Student's t upper tail
    return np.where(normal_tail_fits(null) & np.isfinite(p), p, 1.0)


def bootstrap_pvalue(diff: np.ndarray, axis: int = -1) -> np.ndarray:
    """One-sided paired-bootstrap p-value that a difference is > 0: share of draws <= 0."""
    diff = np.asarray(diff, float)
    n = diff.shape[axis]
    return (1.0 + (diff <= 0).sum(axis=axis)) / (n + 1.0)


def adjust_pvalues(p: np.ndarray, method: str = "holm") -> np.ndarray:
    """Adjust a family of p-values: Holm (family-wise error) or Benjamini-Hochberg (FDR).

    Parameters
    ----------
    p : p-values, any shape; the whole array is one family. NaNs stay NaN and do not count.
    method : ``"holm"`` or ``"bh"``.
    """
    if method not in CORRECTIONS:
        raise SpecError(f"unknown correction '{method}': choose one of {', '.join(CORRECTIONS)}")
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    vals = p[ok]
    if vals.size == 0:
        return out
    if method == "bh":
        from scipy.stats import false_discovery_control

        out[ok] = false_discovery_control(vals, method="bh")
        return out
    # Holm by hand: scipy has no Holm and statsmodels is not a dependency.
    order = np.argsort(vals, kind="stable")
    m = vals.size
    stepped = np.maximum.accumulate((m - np.arange(m)) * vals[order])
    adj = np.empty(m)
    adj[order] = np.minimum(stepped, 1.0)
    out[ok] = adj
    return out
