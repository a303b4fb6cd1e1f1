"""Representational similarity between layers: linear CKA and its debiased estimator.

Centered kernel alignment (Kornblith et al. 2019) compares two representations of the
same samples, invariant to orthogonal rotation and isotropic scaling. Plain linear CKA is
biased upward when samples are few relative to dimensions (two independent 50 x 384
Gaussian matrices score about 0.89), so the default is the debiased estimator, which
plugs the unbiased HSIC estimator (Song et al. 2012) into CKA (as in Nguyen et al. 2021)
and scores such matrices near 0. A constant representation makes CKA 0/0: it is
returned as NaN and listed as undefined, never as a number.

Both estimators are computed from feature-space products (``X^T Y``) or from Gram
matrices (``X X^T``), whichever costs fewer operations for the given sizes.

>>> cka(x, y)                          # debiased
>>> cka(x, y, debiased=False)          # plain linear CKA
>>> cka_matrix({0: x0, 1: x1, 2: x2})  # DataArray (layer_a, layer_b), NaN = undefined
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from mechwidgets.core.errors import SpecError

#: a representation whose centred energy is below this share of its raw energy is constant
_CONSTANT = 1e-10


def cka(x: np.ndarray, y: np.ndarray, debiased: bool = True) -> float:
    """CKA between two ``(n, d)`` representations of the same ``n`` samples.

    Returns
    -------
    The similarity (1 for identical representations up to rotation and scale); NaN when
    either representation is constant across samples (CKA is undefined then).
    """
    return float(cka_matrix({0: x, 1: y}, debiased=debiased).values[0, 1])


def cka_matrix(
    reps: Mapping[Any, np.ndarray],
    debiased: bool = True,
    dims: tuple[str, str] = ("layer_a", "layer_b"),
) -> xr.DataArray:
    """Pairwise CKA between several ``(n, d_i)`` representations of the same samples.

    Parameters
    ----------
    reps : name (e.g. layer) -> representation; all with the same number of rows.
    debiased : use the unbiased HSIC estimator (default) or plain linear CKA.
    dims : names of the two matrix dims.

    Returns
    -------
    A square ``DataArray`` named ``cka``; rows and columns of constant representations
    are NaN and listed (JSON) in ``attrs["undefined"]``; ``attrs["estimator"]`` says which.
    """
    keys = list(reps)
    xs = [np.asarray(reps[k], np.float64).reshape(len(reps[k]), -1) for k in keys]
    n = xs[0].shape[0]
    if any(x.shape[0] != n for x in xs):
        raise SpecError("CKA needs the same samples in every representation; row counts differ")
    if debiased and n < 4:
        raise SpecError(f"debiased CKA needs at least 4 samples, got {n}")
    raw = np.array([np.sum(x**2) for x in xs])
    xs = [x - x.mean(axis=0) for x in xs]
    energy = np.array([np.sum(x**2) for x in xs])
    constant = energy <= _CONSTANT * np.maximum(raw, np.finfo(float).tiny)
    cross = _trace_products(xs)  # tr(K_i K_j) of the centred linear kernels
    if debiased:
        diag = np.stack([np.sum(x**2, axis=1) for x in xs])  # (L, n): diag(K_i)
        sums = diag.sum(axis=1)
        # unbiased HSIC with centred features (K 1 = 0), up to the common 1/(n(n-3))
        hsic = (
            cross - (1 + 2 / (n - 2)) * (diag @ diag.T) + np.outer(sums, sums) / ((n - 1) * (n - 2))
        )
    else:
        hsic = cross
    self_sim = np.diag(hsic).copy()
    constant |= self_sim <= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        out = hsic / np.sqrt(np.outer(self_sim, self_sim))
    out[constant] = np.nan
    out[:, constant] = np.nan
    return xr.DataArray(
        out,
        dims=dims,
        coords={dims[0]: keys, dims[1]: keys},
        name="cka",
        attrs={
            "estimator": "debiased" if debiased else "linear",
            "undefined": json.dumps([_plain(k) for k, c in zip(keys, constant, strict=True) if c]),
        },
    )


def _trace_products(xs: list[np.ndarray]) -> np.ndarray:
    """``tr(X_i X_i^T X_j X_j^T)`` for all pairs, by the cheaper of two routes."""
    n = xs[0].shape[0]
    size = len(xs)
    out = np.empty((size, size))
    dim = max(x.shape[1] for x in xs)
    # Gram route: size Grams of n x n x dim; feature route: size^2 / 2 products of n x dim^2
    if 2 * n < (size + 1) * dim:
        grams = [x @ x.T for x in xs]
        for i in range(size):
            for j in range(i, size):
                out[i, j] = out[j, i] = np.sum(grams[i] * grams[j])
    else:
        for i in range(size):
            for j in range(i, size):
                out[i, j] = out[j, i] = np.sum((xs[i].T @ xs[j]) ** 2)
    return out


def _plain(key: Hashable) -> object:
    return key.item() if isinstance(key, np.generic) else key
