"""Linear probes that solve many label vectors against one factorisation per slice.

A probing protocol refits the same probe on the same activations again and again: once
per regularisation strength, once per shuffled labelling for a permutation test, once per
control task. Fitted one at a time (one scikit-learn fit each) the expensive part, the
factorisation of the training activations, is repeated every time. Here each slice is
standardised on its train split and eigendecomposed once; ridge solutions for every
strength and every target column are then matrix products (:class:`RidgePath`).

The default probe is a ridge-regression classifier on +-1 targets (one-vs-rest for more
than two classes, plain ridge for continuous labels). It is a different estimator from L2
logistic regression and agrees with it where neither fits the training set perfectly.
Measured with ``bench/probe_agreement.py`` (BENCHMARKS.md): at matched strength they are
within a point of test accuracy at the default grid's two strongest strengths (>= 14 x
n_train) and within 1.7 at 2 x n_train, but differ by up to 13.5 points on planted cubes
(d = 768) and by 36 on toy-grammar's animacy at the weakest, where both fit the training
nouns perfectly.
Each choosing its own strength on validation, they agree to 0-0.9 points on average on
planted cubes with held-out word types (N 300-4,000, d 64-768; at most 3.4 on one slice,
1.5 where accuracy >= 0.9) and exactly on toy-grammar's number, sentiment and tense, but
by 20 points on average (42 at most) on animacy: with few noun types in the validation
split, ridge picked a weak strength that memorises training nouns (test 0.32 where
logistic scored 0.74). Use ``probe="logistic"`` (:class:`LogisticPath`, one
scikit-learn fit per column and strength, so far slower) to match published logistic
probes, when a label rides on a few word types, or to confirm a headline slice; ridge
for fast sweeps.

>>> probe = fit_probe(x, y, split)                  # strength chosen on the val split
>>> probe.predict(x_new), probe.coef.shape          # coef in the raw activation basis
>>> path = RidgePath(z_train[None]); path.fit(targets[None], alphas)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from mechwidgets.analysis.statistics import Metric, batch_score, score
from mechwidgets.core.errors import CubeError, SpecError
from mechwidgets.core.params import PROBES

Kind = Literal["binary", "multiclass", "continuous"]
#: L2 strengths, as multiples of the number of training samples (standardised features
#: have unit variance, so the Gram matrix's eigenvalues average n_train)
DEFAULT_STRENGTHS = np.logspace(-4, 2, 8)
#: largest (val samples x target columns) block decided at once, to bound memory
_BLOCK = 1 << 22


@dataclass(frozen=True)
class Standardizer:
    """Per-feature mean and scale fitted on the train split only.

    Constant features get scale 1, so they become exact zeros instead of NaN.
    """

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x_train: np.ndarray) -> Standardizer:
        """Fit on ``(n, d)`` training activations."""
        mean = x_train.mean(axis=0)
        scale = x_train.std(axis=0)
        scale = np.where(scale > 1e-12 * max(1.0, float(np.abs(mean).max(initial=0))), scale, 1.0)
        return cls(mean, scale)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Centre and scale ``(..., d)`` activations."""
        return (x - self.mean) / self.scale


@dataclass(frozen=True)
class LabelEncoding:
    """How a label's values become probe targets and probe outputs become predictions.

    ``binary`` labels train one +-1 target, ``multiclass`` labels one +-1 target per class
    (one-vs-rest, all sharing the same factorisation), ``continuous`` labels the value.
    Internally classes are indices into ``classes``.
    """

    kind: Kind
    classes: np.ndarray

    @classmethod
    def infer(
        cls, values: np.ndarray, name: str = "label", metric: str | None = None
    ) -> LabelEncoding:
        """Classes or a continuous target, by these rules.

        Missing values (None, NaN) are an error that counts them. Integers, booleans and
        strings are classes. Floats are continuous, except floats that are all whole
        numbers (0.0/1.0 as a CSV gives them): those are classes, like the integers they
        are, unless ``metric="r2"`` asks for a regression.
        """
        values = np.asarray(values)
        missing = int(np.count_nonzero(pd.isna(values)))
        if missing:
            raise CubeError(
                f"label '{name}' has {missing} missing value(s) (None or NaN) among "
                f"{values.size}; drop or fill those samples"
            )
        if values.dtype.kind == "f":
            if not np.isfinite(values).all():
                raise CubeError(f"label '{name}' has inf values; drop or fill those samples")
            if metric == "r2" or not np.array_equal(values, np.round(values)):
                if np.ptp(values) == 0:
                    raise CubeError(
                        f"label '{name}' is constant ({values[0]}); a probe needs varying targets"
                    )
                return cls("continuous", np.array([]))
        try:
            classes = np.unique(values)
        except TypeError:  # e.g. ints and strings mixed in an object array
            kinds = sorted({type(v).__name__ for v in values.ravel()})
            raise CubeError(
                f"label '{name}' mixes value types ({', '.join(kinds)}); make them one type"
            ) from None
        if classes.size < 2:
            raise CubeError(
                f"label '{name}' has one class ({classes[0] if classes.size else 'none'}); "
                "a probe needs at least two classes"
            )
        return cls("binary" if classes.size == 2 else "multiclass", classes)

    @property
    def width(self) -> int:
        """Target columns per label column."""
        return self.classes.size if self.kind == "multiclass" else 1

    @property
    def default_metric(self) -> Metric:
        """Accuracy for classes, R^2 for continuous labels."""
        return "r2" if self.kind == "continuous" else "accuracy"

    def check_metric(self, metric: str) -> Metric:
        """Return ``metric`` if it suits this label, else raise a one-line SpecError."""
        allowed = {"binary": ("accuracy", "auc"), "multiclass": ("accuracy",)}
        ok = allowed.get(self.kind, ("r2",))
        if metric not in ok:
            raise SpecError(
                f"metric '{metric}' does not suit a {self.kind} label; use {' or '.join(ok)}"
            )
        return metric  # type: ignore[return-value]

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Class indices (int) or float values."""
        if self.kind == "continuous":
            return np.asarray(values, np.float64)
        return np.searchsorted(self.classes, np.asarray(values))

    def targets(self, y: np.ndarray) -> np.ndarray:
        """``(..., n, m)`` encoded labels -> ``(..., n, m * width)`` regression targets."""
        if self.kind == "continuous":
            return y.astype(np.float64)
        if self.kind == "binary":
            return 2.0 * y - 1.0
        onehot = y[..., None] == np.arange(self.width)
        return (2.0 * onehot - 1.0).reshape(*y.shape[:-1], -1)

    def output(self, decision: np.ndarray, metric: Metric) -> np.ndarray:
        """``(..., n, m * width)`` decision values -> ``(..., n, m)`` what ``metric`` scores."""
        if self.kind == "multiclass":
            return decision.reshape(*decision.shape[:-1], -1, self.width).argmax(axis=-1)
        if self.kind == "binary" and metric == "accuracy":
            return (decision > 0).astype(np.int64)
        return decision


class RidgePath:
    """Ridge solutions for many target columns and strengths from one eigendecomposition.

    Parameters
    ----------
    x_train : ``(g, n, p)`` a stack of ``g`` training designs, each centred on its train
        split (a slice has g = 1; the random-subspace control stacks one design per draw).
    dtype : precision of the products after the (float64) eigendecomposition; float32
        halves the time of the protocol's many products and changes decisions by ~1e-7.

    With ``X = V diag(e) V^T`` from ``eigh(X^T X)`` (or of ``X X^T`` when n < p), the ridge
    weights for targets ``T`` and strength ``a`` are ``V diag(1/(e + a)) V^T X^T T``, so a
    new strength or a new target column costs a matrix product, not a refit.
    """

    def __init__(self, x_train: np.ndarray, dtype: type = np.float64) -> None:
        x = np.asarray(x_train, np.float64)
        xt = np.swapaxes(x, 1, 2)
        if x.shape[2] == 1:
            # one-column designs (the rank-1 random-subspace draws, a thousand per slice):
            # the eigenbasis is [[1]] and the eigenvalue the Gram entry, as LAPACK gives
            # them exactly; a thousand 1 x 1 eigh and products would be most of their cost
            evals, vecs = (xt @ x)[:, :, 0], np.ones((x.shape[0], 1, 1))
        elif x.shape[1] >= x.shape[2]:
            evals, vecs = np.linalg.eigh(xt @ x)
        else:
            evals, u = np.linalg.eigh(x @ xt)
            keep = evals > 1e-10 * evals.max(axis=-1, keepdims=True)
            inv = np.where(keep, 1.0 / np.sqrt(np.where(keep, evals, 1.0)), 0.0)
            vecs = xt @ (u * inv[:, None, :])
        self.dtype = dtype
        self.evals = np.clip(evals, 0.0, None)
        self.vecs: np.ndarray = vecs.astype(dtype)
        self._unit = x.shape[2] == 1  # projections are the designs themselves
        self._xv: np.ndarray = x.astype(dtype) if self._unit else (x @ vecs).astype(dtype)
        self.alphas = np.empty(0)

    def project(self, x: np.ndarray) -> np.ndarray:
        """Standardised ``(g or 1, n, p)`` activations in the eigenbasis, ``(g, n, k)``."""
        if self._unit:
            return np.asarray(x, self.dtype)
        return np.asarray(x, self.dtype) @ self.vecs

    def fit(self, targets: np.ndarray, alphas: np.ndarray) -> None:
        """Prepare solutions for ``(g or 1, n, m)`` targets at every strength in ``alphas``."""
        self.alphas = np.asarray(alphas, np.float64)
        targets = np.asarray(targets, self.dtype)
        self.intercept = targets.mean(axis=1, keepdims=True)
        self.coef = np.swapaxes(self._xv, 1, 2) @ (targets - self.intercept)

    def _scaled(self, alpha_index: np.ndarray) -> np.ndarray:
        shrink = 1.0 / (self.evals[:, :, None] + self.alphas[alpha_index][:, None, :])
        return self.coef * shrink.astype(self.dtype)

    def decision(self, projected: np.ndarray, alpha_index: np.ndarray) -> np.ndarray:
        """Decision values ``(g, n, m)``; ``alpha_index`` ``(g or 1, m)`` picks strengths."""
        scaled = self._scaled(alpha_index)
        if projected.shape[-1] == 1:  # a product over one term: the same values, no matmul
            return projected * scaled + self.intercept
        return projected @ scaled + self.intercept

    def weights(self, alpha_index: np.ndarray) -> np.ndarray:
        """Weights ``(g, p, m)`` in the standardised basis."""
        return self.vecs @ self._scaled(alpha_index)


#: the logistic loss has 1/4 of the squared loss's curvature at the origin, and
#: scikit-learn's penalty is ``|w|^2 / (2 C)``: ``C = 4 / alpha`` matches ridge's ``alpha``
LOGISTIC_C = 4.0


class LogisticPath:
    """The :class:`RidgePath` interface with one scikit-learn L2 logistic fit per column
    and strength (``C = 4 / alpha``, see :data:`LOGISTIC_C`): the true logistic probe.
    Targets are +-1 columns, fitted one-vs-rest."""

    def __init__(self, x_train: np.ndarray) -> None:
        self.x = np.asarray(x_train, np.float64)
        self.alphas = np.empty(0)

    def project(self, x: np.ndarray) -> np.ndarray:
        """Identity: logistic fits work in the standardised basis itself."""
        return x

    def fit(self, targets: np.ndarray, alphas: np.ndarray) -> None:
        """Fit every (strength, design, target column) combination."""
        self.alphas = np.asarray(alphas, np.float64)
        g, _, p = self.x.shape
        m = targets.shape[-1]
        self.coef = np.zeros((len(alphas), g, p, m))
        self.intercept = np.zeros((len(alphas), g, 1, m))
        from sklearn.linear_model import LogisticRegression  # here: ridge probes need none

        for gi in range(g):
            for j in range(m):
                positive = targets[min(gi, targets.shape[0] - 1), :, j] > 0
                if positive.all() or not positive.any():  # one class: constant decision
                    self.intercept[:, gi, 0, j] = 1.0 if positive.all() else -1.0
                    continue
                for a, alpha in enumerate(self.alphas):
                    fit = LogisticRegression(C=LOGISTIC_C / alpha, max_iter=1000)
                    fit = fit.fit(self.x[gi], positive)
                    self.coef[a, gi, :, j] = fit.coef_[0]
                    self.intercept[a, gi, 0, j] = fit.intercept_[0]

    def _pick(self, values: np.ndarray, alpha_index: np.ndarray) -> np.ndarray:
        index = np.broadcast_to(alpha_index[:, None, :], (values.shape[1], 1, values.shape[-1]))
        return np.take_along_axis(values, index[None], axis=0)[0]

    def decision(self, projected: np.ndarray, alpha_index: np.ndarray) -> np.ndarray:
        """Decision values ``(g, n, m)``; ``alpha_index`` ``(g or 1, m)`` picks strengths."""
        return projected @ self.weights(alpha_index) + self._pick(self.intercept, alpha_index)

    def weights(self, alpha_index: np.ndarray) -> np.ndarray:
        """Weights ``(g, p, m)`` in the standardised basis."""
        return self._pick(self.coef, alpha_index)


Path = RidgePath | LogisticPath


def make_path(probe: str, x_train: np.ndarray, dtype: type = np.float64) -> Path:
    """The path for ``probe`` (``"ridge"`` or ``"logistic"``) on ``(g, n, p)`` designs.

    ``dtype`` sets the ridge path's product precision (logistic fits use float64).
    """
    if probe == "ridge":
        return RidgePath(x_train, dtype)
    if probe == "logistic":
        return LogisticPath(x_train)
    raise SpecError(f"unknown probe '{probe}': choose one of {', '.join(PROBES)}")


@dataclass(frozen=True)
class PathFit:
    """Test-split outcome of fitting label columns along a path."""

    test_decision: np.ndarray  # (g, n_test, m * width)
    alpha_index: np.ndarray  # (g, m) strength chosen on validation, per label column
    val_score: np.ndarray  # (g, m) validation score at the chosen strength


def fit_select_predict(
    path: Path,
    proj_val: np.ndarray,
    proj_test: np.ndarray,
    y_train: np.ndarray,
    y_val: np.ndarray,
    encoding: LabelEncoding,
    metric: Metric,
    alphas: np.ndarray,
) -> PathFit:
    """Fit ``m`` label columns at every strength, choose each column's strength on
    validation, and return its test decision values.

    Parameters
    ----------
    path : a :class:`RidgePath` or :class:`LogisticPath` over ``g`` designs.
    proj_val, proj_test : ``path.project`` of the standardised val and test activations.
    y_train, y_val : ``(g or 1, n, m)`` encoded labels per column (indices or floats).
    encoding : how labels become targets and decisions become predictions.
    metric : what "best on validation" means; ties go to the stronger penalty.
    alphas : absolute L2 strengths.
    """
    m, width = y_train.shape[-1], encoding.width
    step = max(1, _BLOCK // max(1, proj_val.shape[-2] * width * proj_val.shape[0]))
    parts = []
    for start in range(0, m, step):
        cols = slice(start, min(m, start + step))
        path.fit(encoding.targets(y_train[..., cols]), alphas)
        ncol = cols.stop - cols.start
        val = np.stack(
            [
                _scores(
                    path,
                    proj_val,
                    y_val[..., cols],
                    encoding,
                    metric,
                    np.full((1, ncol * width), a),
                )
                for a in range(len(alphas))
            ]
        )  # (A, g, m)
        best = len(alphas) - 1 - np.nanargmax(val[::-1], axis=0)  # ties -> stronger penalty
        chosen = np.repeat(best, width, axis=-1)
        parts.append(
            (
                path.decision(proj_test, chosen),
                best,
                np.take_along_axis(val, best[None], axis=0)[0],
            )
        )
    dec, idx, val_score = (np.concatenate(p, axis=-1) for p in zip(*parts, strict=True))
    return PathFit(dec, idx, val_score)


def _scores(
    path: Path,
    projected: np.ndarray,
    y: np.ndarray,
    encoding: LabelEncoding,
    metric: Metric,
    alpha_index: np.ndarray,
) -> np.ndarray:
    """Unweighted scores ``(g, m)`` of every column at the given strengths."""
    out = encoding.output(path.decision(projected, alpha_index), metric)
    return batch_score(metric, y, out)[0]


@dataclass(frozen=True)
class LinearProbe:
    """A fitted probe, its weights mapped back to the raw activation basis.

    ``coef`` is ``(d, width)`` and ``intercept`` ``(width,)``: ``x @ coef + intercept``
    gives the decision values (one column per class for multiclass labels).
    """

    encoding: LabelEncoding
    coef: np.ndarray
    intercept: np.ndarray
    alpha: float
    metric: Metric
    val_score: float
    test_score: float

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Decision values ``(n, width)`` for raw ``(n, d)`` activations."""
        return np.asarray(x, np.float64) @ self.coef + self.intercept

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted classes (original label values) or continuous predictions."""
        out = self.encoding.output(self.decision(x), "accuracy")[:, 0]
        return out if self.encoding.kind == "continuous" else self.encoding.classes[out]


def fit_probe(
    x: np.ndarray,
    y: np.ndarray,
    split: np.ndarray,
    *,
    probe: str = "ridge",
    metric: str | None = None,
    strengths: np.ndarray = DEFAULT_STRENGTHS,
) -> LinearProbe:
    """Fit one probe: standardise on train, choose the L2 strength on val, score on test.

    Parameters
    ----------
    x : ``(n, d)`` activations of one slice.
    y : ``(n,)`` labels (ints/strings = classes, floats = continuous).
    split : ``(n,)`` ``"train"`` / ``"val"`` / ``"test"``.
    probe : ``"ridge"`` (default) or ``"logistic"`` (continuous labels always use ridge).
    metric : default accuracy for classes, r2 for continuous labels.
    strengths : L2 strengths as multiples of the number of training samples.

    Returns
    -------
    A :class:`LinearProbe` whose weights act on raw activations (the standardisation is
    folded in), e.g. for comparing the probe direction with neurons.
    """
    split = np.asarray(split).astype(str)
    masks = [split == s for s in ("train", "val", "test")]
    encoding = LabelEncoding.infer(y, metric=metric)
    metric_ = encoding.check_metric(metric or encoding.default_metric)
    x = np.asarray(x, np.float64)
    std = Standardizer.fit(x[masks[0]])
    xs = std.transform(x)
    path = make_path("ridge" if encoding.kind == "continuous" else probe, xs[masks[0]][None])
    codes = encoding.encode(y)[:, None]
    alphas = np.asarray(strengths) * masks[0].sum()
    proj_val, proj_test = (path.project(xs[m][None]) for m in masks[1:])
    fit = fit_select_predict(
        path, proj_val, proj_test, codes[masks[0]][None], codes[masks[1]][None],
        encoding, metric_, alphas,
    )  # fmt: skip
    chosen = np.repeat(fit.alpha_index, encoding.width, axis=-1)
    w_std = path.weights(chosen)[0]
    b_std = path.decision(np.zeros((1, 1, proj_val.shape[-1])), chosen)[0, 0]
    coef = w_std / std.scale[:, None]
    test_out = encoding.output(fit.test_decision, metric_)[0, :, 0]
    return LinearProbe(
        encoding=encoding,
        coef=coef,
        intercept=b_std - std.mean @ coef,
        alpha=float(alphas[fit.alpha_index[0, 0]]),
        metric=metric_,
        val_score=float(fit.val_score[0, 0]),
        test_score=score(metric_, codes[masks[2], 0], test_out),
    )


#: problems of at most this many values (samples x features) run on one BLAS thread
SMALL_PROBLEM = 1 << 20


@contextlib.contextmanager
def blas_threads_for(values: int) -> Iterator[None]:
    """One BLAS thread while a problem of ``values`` (samples x features) is small.

    Small problems make many small matrix products; on them BLAS threads cost more in
    start-up and contention than they save (a 15-slice, 800 x 32 detect: 0.8 s on one
    thread, 2.6-5.4 s on two busy cores). Larger ones keep every thread.
    """
    with threadpool_limits(1) if values <= SMALL_PROBLEM else contextlib.nullcontext():
        yield
