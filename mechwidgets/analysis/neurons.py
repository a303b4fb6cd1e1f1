"""How strongly each neuron loads on each feature, and how many features load on it.

A neuron is polysemantic when two or more unrelated features drive it. This module holds
the numbers behind that call, neuron by neuron, for all neurons of a layer at once:

- :func:`feature_loadings`: the *activation pattern* of a linear probe (Haufe et al.
  2014), i.e. how each neuron's activity follows each feature. For a least-squares probe
  of one label the pattern ``Cov(z, w^T z)`` equals the label's covariance with each
  neuron; for a joint probe of all labels it is the regression of each neuron on all of
  them. We use that joint form with the labels standing in for the probe's outputs:
  standardised partial regression coefficients, in correlation units (for uncorrelated
  features, the neuron's correlation with each label), so a neuron driven by one of two
  correlated features is not credited with both. Decoder weights answer a different
  question (does the probe *need* this neuron beyond the others?): in one planting on
  toy-grammar, a neuron made to fire for plural subjects and negative sentiment had a
  sentiment decoder weight 0.3 null standard deviations from zero (other neurons carry
  sentiment too) while its sentiment loading was -0.53.
- :func:`rank_test`, :func:`normal_scores`, :func:`loading_z`, :func:`shuffled_loading_z`:
  the test of a loading. Every shuffled labelling shares the labels' Gram matrix (a row permutation
  leaves ``Y^T Y`` unchanged), so all shuffled refits reuse one factorisation; the null's
  exact moments (mean 0, covariance ``G^-1 / (n - 1)``) give z-scores whose Gaussian tails
  reach the small p-values that a correction over thousands of neurons needs, which
  sampled permutations (p >= 1 / (B + 1)) cannot. The moments are exact for any data but
  the Gaussian *tail* is not: on raw lognormal activations and features (4,096 neurons,
  3 features, n = 300) p < 1e-4 came 87x too often and a Holm-significant loading in
  100% of null layers. So the test runs on normal scores (a rank test, van der Waerden
  1952): each neuron's ranks mapped to standard-normal quantiles, which makes the
  permutation null Gaussian to the far tail whatever the activations' or features'
  distribution: there, 0.84x and 5% (binary, Gaussian, lognormal and sparse-ReLU designs
  all 3-7%, none flagged polysemantic; ``bench/polysemantic_calibration.py``,
  BENCHMARKS.md), with power on planted neurons at least the old test's.
- :func:`loading_index`, :func:`conjunction_pvalues`, :func:`count_features`: the
  multi-feature loading index and its test.
- :func:`decoder_alignment`, :func:`auroc`: the probe direction's alignment with each
  neuron's basis vector, and per-feature selectivity as a cross-check.

>>> load = feature_loadings(acts, labels)            # (features, neurons)
>>> p = two_sided_p(rank_test(acts, labels, rng).z)  # the test: normal scores
>>> index = loading_index(load.beta)                 # second-largest |loading|
>>> count = count_features(p.T, load.beta.T, threshold=0.2, level=0.95, correction="holm")
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

from mechwidgets.analysis.statistics import adjust_pvalues, batch_score
from mechwidgets.core.errors import SpecError


@dataclass(frozen=True)
class Loadings:
    """Standardised partial regression coefficients of every neuron on every feature.

    ``beta`` is ``(features, neurons)``; NaN for neurons that are constant over the
    samples. ``gram_inv`` is the inverse of the features' correlation matrix; its
    diagonal sets each loading's null variance.
    """

    beta: np.ndarray
    gram_inv: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """``(neurons,)`` True where the neuron varies (its loadings are defined)."""
        return np.isfinite(self.beta).all(axis=0)


def _standardise(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns centred and scaled to unit (population) variance; constant columns -> 0."""
    a = np.asarray(a, np.float64)
    sd = a.std(axis=0)
    ok = sd > 1e-12 * np.maximum(1.0, np.abs(a).max(axis=0, initial=0.0))
    return (a - a.mean(axis=0)) / np.where(ok, sd, 1.0), ok


def _labels(labels: np.ndarray, names: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """Standardised labels and the inverse of their correlation matrix; collinear -> error."""
    y, ok = _standardise(labels)
    names = names or [str(i) for i in range(y.shape[1])]
    if not ok.all():
        raise SpecError(f"label '{names[int(np.argmin(ok))]}' is constant; drop it")
    gram = y.T @ y / len(y)
    evals, evecs = np.linalg.eigh(gram)
    if evals.min() < 1e-6:
        mix = evecs[:, 0]
        pair = [names[i] for i in np.argsort(-np.abs(mix))[:2]]
        raise SpecError(
            f"labels {pair[0]!r} and {pair[1]!r} are (nearly) collinear, so their loadings "
            "cannot be told apart; drop one of them"
        )
    return y, np.linalg.inv(gram)


def feature_loadings(
    acts: np.ndarray, labels: np.ndarray, names: list[str] | None = None
) -> Loadings:
    """Each neuron regressed on all features at once, in correlation units.

    Parameters
    ----------
    acts : ``(n, neurons)`` activations.
    labels : ``(n, features)`` label values (0/1 codes or continuous values).
    names : feature names, for error messages.

    Returns
    -------
    :class:`Loadings`; for uncorrelated features ``beta[f, j]`` is the correlation of
    neuron ``j`` with feature ``f``, and the squares of a neuron's loadings add up to at
    most 1 (the share of its variance the features explain).
    """
    y, gram_inv = _labels(labels, names)
    z, ok = _standardise(acts)
    beta = gram_inv @ (y.T @ z) / len(y)
    beta[:, ~ok] = np.nan
    return Loadings(beta, gram_inv)


def normal_scores(a: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Columns replaced by the standard-normal quantiles of their ranks, ``Phi^-1(r/(n+1))``.

    A loading of normal scores is a rank statistic: its permutation null depends on the
    data only through ties, so its Gaussian tail holds for heavy-tailed activations and
    features alike. With ``rng``, ties are broken at random (a randomised rank test,
    Hajek & Sidak 1967), so the column's scores are exactly the normal quantiles: a
    neuron that is exactly 0 for most inputs (ReLU) against a rare 0/1 feature otherwise
    has a lumpy, hypergeometric-like null whose far tail the Gaussian underestimates.
    Without ``rng`` ties share their mean rank (for labels: a 0/1 feature stays 0/1).
    Constant columns stay constant. Random ties cost power on very sparse neurons (84%
    exactly 0: 0.63 -> 0.06 of planted neurons flagged at one weight), so
    :func:`rank_test` breaks them only where the tied null is not close to normal.
    """
    a = np.asarray(a, np.float64)
    n = len(a)
    if rng is None:
        scores = norm.ppf(rankdata(a, axis=0) / (n + 1))
    else:
        # sorted by value, ties by a random key drawn per element: each column's ties are
        # broken independently (one shared order would make the columns' tests dependent)
        columns = np.ascontiguousarray(a.T)
        order = np.lexsort((rng.random(columns.shape), columns), axis=-1)
        scores = np.empty((a.shape[1], n))
        quantiles = norm.ppf(np.arange(1.0, n + 1) / (n + 1))
        np.put_along_axis(scores, order, quantiles[None], axis=1)
        scores = scores.T
    constant = (a == a[:1]).all(axis=0)
    scores[:, constant] = 0.0
    return scores


#: largest |skewness| of a loading's permutation null at which tie-averaged scores are
#: tested with a normal tail, and largest excess kurtosis (heavier tails than normal):
#: one-term Edgeworth errors of at most ~25% in the two-sided tail at z = 4.6 (p = 4e-6)
_MAX_SKEW, _MAX_KURTOSIS = 0.07, 0.0185


@dataclass(frozen=True)
class RankTest:
    """The loadings' rank test: z-scores, and the normal scores behind each.

    ``mid`` ``(features, neurons)`` is True where the neuron's tie-averaged scores were used
    (``tied``), False where its ties were broken at random (``broken``); ``labels`` are the
    features' tie-averaged scores.
    """

    z: np.ndarray
    mid: np.ndarray
    tied: np.ndarray
    broken: np.ndarray
    labels: np.ndarray

    def shuffled(self, orders: np.ndarray) -> np.ndarray:
        """z-scores of the same statistics for shuffled labels (:func:`shuffled_loading_z`),
        each neuron's null computed only from the scores its tests use."""
        out = np.full((orders.shape[1], *self.mid.shape), np.nan, np.float32)
        for scores, use in ((self.tied, self.mid), (self.broken, ~self.mid)):
            cols = use.any(axis=0)
            if cols.any():
                null = shuffled_loading_z(scores[:, cols], self.labels, orders)
                out[:, :, cols] = np.where(use[:, cols], null, out[:, :, cols])
        return out


def rank_test(
    acts: np.ndarray, labels: np.ndarray, rng: np.random.Generator, names: list[str] | None = None
) -> RankTest:
    """The loadings of :func:`normal_scores` over their exact permutation SD, as z-scores.

    A neuron's tied values (a ReLU's zeros) are kept tied where that leaves the loading's
    permutation null close to normal, and broken at random (``rng``) where not. Which one
    is read from the leading cumulants of a linear permutation statistic, skewness
    ``~ skew(a) skew(c) / sqrt(n)`` and excess kurtosis ``~ kurt(a) kurt(c) / n`` (``a`` the
    neuron's scores, ``c`` the feature's partial-regression contrast); both depend on the
    data only through its marginals, which a permutation leaves unchanged, so choosing by
    them keeps each test a valid permutation test. A sparse neuron against a rare 0/1
    feature is broken (its tied null is lumpy and heavy-tailed); against a balanced one it
    stays tied (lighter tails than normal) and keeps its power. NaN where a neuron is
    constant.
    """
    n = len(acts)
    ys = normal_scores(labels)
    tied = normal_scores(acts)
    y, gram_inv = _labels(ys, names)
    contrast, _ = _standardise(y @ gram_inv)  # (n, features): what each loading sums over
    a, _ = _standardise(tied)
    skew = np.outer((contrast**3).mean(axis=0), (a**3).mean(axis=0)) / np.sqrt(n)
    kurt = np.outer((contrast**4).mean(axis=0) - 3, (a**4).mean(axis=0) - 3) / n
    mid = (np.abs(skew) <= _MAX_SKEW) & (kurt <= _MAX_KURTOSIS)
    broken = tied.copy()  # ties broken only in the neurons that need it (a sort each)
    need = (~mid).any(axis=0)
    broken[:, need] = normal_scores(np.asarray(acts)[:, need], rng)
    z = np.where(
        mid,
        loading_z(feature_loadings(tied, ys, names), n),
        loading_z(feature_loadings(broken, ys, names), n),
    )
    z[:, (np.asarray(acts) == np.asarray(acts)[:1]).all(axis=0)] = np.nan
    return RankTest(z, mid, tied, broken, ys)


def loading_z(loadings: Loadings, n: int) -> np.ndarray:
    """``(features, neurons)`` loadings divided by their permutation-null standard deviation.

    Under a random permutation of the samples' labels the loadings have mean 0 and
    covariance ``gram_inv / (n - 1)`` exactly, whatever the neuron's distribution; by the
    permutation central limit theorem (Hajek) the z-scores are close to standard normal.
    Under a partial null (other features do drive the neuron) the neuron's full variance
    overstates the noise, so the test is conservative there.
    """
    sd = np.sqrt(np.diag(loadings.gram_inv) / (n - 1))
    return loadings.beta / sd[:, None]


def shuffled_loading_z(
    acts: np.ndarray, labels: np.ndarray, orders: np.ndarray, block: int = 64
) -> np.ndarray:
    """z-scores of the loadings for shuffled labels: ``(draws, features, neurons)``.

    Parameters
    ----------
    acts, labels : as in :func:`feature_loadings`.
    orders : ``(n, draws)`` permutations of the sample indices; draw ``b`` refits the
        loadings with the label rows reordered by ``orders[:, b]``.
    block : draws computed per matrix product (bounds memory).
    """
    y, gram_inv = _labels(labels, None)
    z, ok = _standardise(acts)
    n = len(y)
    scale = gram_inv / np.sqrt(np.diag(gram_inv) / (n - 1))[:, None]  # rows: loading -> z
    out = np.empty((orders.shape[1], y.shape[1], z.shape[1]), np.float32)
    for start in range(0, orders.shape[1], block):
        shuffled = y[orders[:, start : start + block].T]  # (b, n, features)
        out[start : start + block] = scale @ (np.swapaxes(shuffled, 1, 2) @ z) / n
    out[:, :, ~ok] = np.nan
    return out


def two_sided_p(z: np.ndarray) -> np.ndarray:
    """Two-sided standard-normal p-values of z-scores (NaN stays NaN)."""
    return 2.0 * norm.sf(np.abs(z))


def loading_index(beta: np.ndarray, axis: int = 0) -> np.ndarray:
    """The multi-feature loading index: each neuron's second-largest ``|loading|``.

    Zero-ish for a neuron that follows at most one feature, large only when a second
    feature drives it as well. Features that are uncorrelated share a neuron's variance,
    so the index is at most ``1/sqrt(2)`` (two features, each explaining half, nothing
    else). A count of features above a threshold is discrete and hinges on the threshold;
    an entropy of normalised loadings is highest for a neuron that loads weakly and evenly
    on everything; the second-largest loading separates "strongly on two" from both.
    NaN where a neuron's loadings are undefined.
    """
    a = np.moveaxis(np.abs(np.asarray(beta, np.float64)), axis, -1)
    if a.shape[-1] < 2:
        raise SpecError("a loading index needs at least 2 features")
    return np.sort(a, axis=-1)[..., -2]


def conjunction_pvalues(p: np.ndarray) -> np.ndarray:
    """p-values for "at least r of the F features load on this neuron", r = 1..F.

    Benjamini & Heller's (2008) partial conjunction test with Bonferroni combining:
    ``p^(r/F) = (F - r + 1) * p_(r)``, with ``p_(r)`` the r-th smallest of the neuron's
    per-feature p-values, made non-decreasing in r (at least r implies at least r - 1).
    It is valid under any dependence between features.

    Parameters
    ----------
    p : ``(neurons, features)`` per-feature p-values (NaN rows stay NaN).

    Returns
    -------
    ``(neurons, features)``: column ``r - 1`` tests "at least r features".
    """
    p = np.asarray(p, np.float64)
    f = p.shape[1]
    ordered = np.sort(p, axis=1)
    combined = np.minimum(1.0, (f - np.arange(f)) * ordered)
    finite = np.isfinite(combined).all(axis=1)
    combined[finite] = np.maximum.accumulate(combined[finite], axis=1)
    combined[~finite] = np.nan
    return combined


@dataclass(frozen=True)
class FeatureCount:
    """How many features load on each neuron, and the tests behind the count.

    ``n_features`` ``(neurons,)``; ``order`` ``(neurons, features)`` feature indices, the
    counted ones first (by gated p-value, then ``|loading|``); ``pvalues`` and
    ``adjusted`` ``(neurons, features)`` the conjunction p-values before and after the
    correction across neurons (column 1 is the polysemanticity test, "at least 2").
    """

    n_features: np.ndarray
    order: np.ndarray
    pvalues: np.ndarray
    adjusted: np.ndarray


def count_features(
    p: np.ndarray,
    beta: np.ndarray,
    threshold: float,
    level: float,
    correction: str,
) -> FeatureCount:
    """How many features load on each neuron, with the family of neurons corrected.

    A feature counts when its loading is significant and at least ``threshold`` in size
    (a p-value of 1 stands in for loadings below the threshold: it only makes the test
    more conservative). The conjunction p-values (:func:`conjunction_pvalues`) are
    adjusted across all neurons for each r; since adjustment is monotone and they rise
    with r, the neuron's count is the number of r that pass.

    Parameters
    ----------
    p : ``(neurons, features)`` per-feature p-values (NaN for undefined loadings).
    beta : ``(neurons, features)`` loadings.
    threshold : smallest ``|loading|`` that counts.
    level : confidence level; ``1 - level`` is the significance threshold.
    correction : ``holm`` or ``bh`` across neurons.
    """
    p = np.asarray(p, np.float64)
    gated = np.where(np.isnan(p) | (np.abs(beta) >= threshold), p, 1.0)
    combined = conjunction_pvalues(gated)
    adjusted = np.stack(
        [adjust_pvalues(combined[:, r], correction) for r in range(combined.shape[1])], axis=1
    )
    order = np.lexsort((-np.abs(np.nan_to_num(beta)), np.nan_to_num(gated, nan=1.0)), axis=1)
    return FeatureCount((adjusted < 1 - level).sum(axis=1), order, combined, adjusted)


def decoder_alignment(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How a probe's direction sits on the neuron basis.

    Parameters
    ----------
    weights : ``(neurons, ...)`` probe weights on standardised activations (so a neuron's
        scale does not decide its weight).

    Returns
    -------
    ``(cosine, mass)``: the cosine of the weight vector with each neuron's basis vector
    (``w_j / ||w||``, signed) and each neuron's share of the weights' absolute mass
    (``|w_j| / sum |w|``).
    """
    w = np.asarray(weights, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return w / np.linalg.norm(w, axis=0), np.abs(w) / np.abs(w).sum(axis=0)


def auroc(acts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(neurons,)`` area under the ROC curve of each neuron's activation for a 0/1 label.

    0.5 is no selectivity, 1 fires only for class 1, 0 only for class 0 (ties count one
    half). Computed for all neurons at once by the vectorised rank AUC of
    :func:`mechwidgets.analysis.statistics.batch_score`.
    """
    return batch_score("auc", np.asarray(labels), np.asarray(acts, np.float64))[0]
