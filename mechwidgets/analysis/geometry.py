"""Representational similarity between layers: linear CKA and its debiased estimator.

Centered kernel alignment (Kornblith et al. 2019) compares two representations of the
same samples, invariant to orthogonal rotation and isotropic scaling. Plain linear CKA is
biased upward when samples are few relative to dimensions (two independent 50 x 384
Gaussian matrices score about 0.89), so the default is the debiased estimator, which
plugs the unbiased HSIC estimator (Song et al. 2012) into CKA (as in Nguyen et al. 2021)
and scores such matrices near 0. A constant representation makes CKA 0/0: it is
returned as NaN and listed as undefined, never as a number.

Both estimators need one costly term, ``tr(K_i K_j) = ||X_i^T X_j||_F^2`` for every pair of
centred representations; the rest are per-layer sums. It is computed by whichever route
costs fewer operations for the sizes, streamed so that memory stays bounded by about two
layers at any width (``streaming_budget``), never one ``n x n`` Gram matrix per layer:

- feature route (few wide-enough samples): layer pairs ``X_i^T X_j`` one at a time, the
  product in column chunks; two layers' centred features in memory.
- Gram route (many dimensions): the ``n x n`` Gram matrices of all layers tile by tile,
  upper triangle only (their symmetry halves the work); a tile of every layer is formed,
  and all pairs' sums over it are one matrix product. Above ``FLOAT32_ABOVE``
  multiply-adds the tiles are float32 products of rows centred in float64, without the
  Grams' diagonals (added in float64), and every sum is float64: on the benchmark below
  the matrix differs from float64 by 5e-10 (at most 1e-7 in tests with offsets 1,000
  times the spread). ``attrs["products"]`` says which.

Inputs are read as given (float32 cube slices are converted a block at a time, not copied
whole to float64). On 12 layers, N = 4,000, d = 768 this takes under half the time of
numpy with cached centred Gram matrices and 4% of its memory (``bench/cka.py``,
BENCHMARKS.md).

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
    are NaN and listed (JSON) in ``attrs["undefined"]``; ``attrs["estimator"]`` says which,
    ``attrs["products"]`` the dtype of the products (see the module docstring).
    """
    keys = list(reps)
    layers = [_Centred(reps[k]) for k in keys]
    n = layers[0].n
    if any(layer.n != n for layer in layers):
        raise SpecError("CKA needs the same samples in every representation; row counts differ")
    if debiased and n < 4:
        raise SpecError(f"debiased CKA needs at least 4 samples, got {n}")
    raw = np.array([layer.raw for layer in layers])
    energy = np.array([layer.energy for layer in layers])
    constant = energy <= _CONSTANT * np.maximum(raw, np.finfo(float).tiny)
    cross, products = _trace_products(layers)  # tr(K_i K_j) of the centred linear kernels
    if debiased:
        diag = np.stack([layer.diag for layer in layers])  # (L, n): diag(K_i)
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
            "products": products,
            "undefined": json.dumps([_plain(k) for k, c in zip(keys, constant, strict=True) if c]),
        },
    )


#: bytes of working memory the routes aim for, in layers: ``n x d`` float64 features
STREAM_LAYERS = 2
#: rows converted and centred at a time while a layer's statistics are gathered
_ROWS = 4096
#: a Gram route of more multiply-adds forms its tiles in float32 (every sum stays
#: float64; see :func:`_gram_route`); below, everything is float64
FLOAT32_ABOVE = 2e9
#: float32 tile values converted to float64 at a time for the pairs' sums
_PAIR_CHUNK = 2**16


class _Centred:
    """One representation as given, with its column means and per-row centred energies.

    ``rows(lo, hi)`` returns rows centred a block at a time (the arithmetic in float64,
    stored as asked); the full float64 copy of every layer that CKA would otherwise hold
    is never made.
    """

    def __init__(self, values: Any) -> None:
        x = np.asarray(values)
        self.x = x.reshape(len(x), -1)
        self.n, self.d = self.x.shape
        total = np.zeros(self.d)
        self.raw = 0.0
        for lo in range(0, self.n, _ROWS):
            part = np.asarray(self.x[lo : lo + _ROWS], np.float64)
            total += part.sum(axis=0)
            self.raw += float(np.einsum("ij,ij->", part, part))
        self.mean = total / self.n
        self.diag = np.concatenate(
            [np.einsum("ij,ij->i", c, c) for c in self._blocks(_ROWS)]
        )  # diag(K): each centred row's energy
        self.energy = float(self.diag.sum())

    def rows(self, lo: int, hi: int, dtype: type = np.float64) -> np.ndarray:
        """Rows ``lo:hi`` centred: subtracted in float64, stored as ``dtype``."""
        block = self.x[lo:hi]
        out: np.ndarray = np.empty(block.shape, dtype)
        return np.subtract(block, self.mean, out=out, casting="unsafe")

    def _blocks(self, size: int) -> list[np.ndarray]:
        return [self.rows(lo, lo + size) for lo in range(0, self.n, size)]


def streaming_budget(layers: list[_Centred]) -> int:
    """Working memory in float64 values: ``STREAM_LAYERS`` layers of the widest width."""
    return STREAM_LAYERS * layers[0].n * max(layer.d for layer in layers)


def _trace_products(layers: list[_Centred]) -> tuple[np.ndarray, str]:
    """``tr(X_i X_i^T X_j X_j^T)`` for all pairs of centred layers, by the cheaper route,
    and the dtype its products ran in.

    Operation counts: the feature route forms ``X_i^T X_j`` for every pair,
    ``2 n sum_{i<=j} d_i d_j``; the Gram route forms each Gram's upper triangle once,
    ``n^2 sum_i d_i``, plus ``L^2 n^2`` for the pairs' sums over the tiles. A Gram route
    of over ``FLOAT32_ABOVE`` multiply-adds forms its tiles in float32, which BLAS runs at
    twice float64's speed (no float64 route can beat numpy with cached Gram matrices by
    more than its centring and pair passes: both must form every Gram), so it counts
    half. The feature route stays float64: its sums keep the Grams' large diagonals,
    which the debiased estimator then cancels, so float32 there would lose digits.
    """
    n = layers[0].n
    widths = np.array([layer.d for layer in layers], float)
    feature = 2 * n * (np.sum(np.outer(widths, widths)) + np.sum(widths**2)) / 2
    gram = n * n * (widths.sum() + len(layers) ** 2)
    if gram > FLOAT32_ABOVE and gram / 2 < feature:
        return _gram_route(layers, np.float32), "float32"
    if gram < feature:
        return _gram_route(layers, np.float64), "float64"
    return _feature_route(layers), "float64"


def _feature_route(layers: list[_Centred]) -> np.ndarray:
    """Pairs of layers, two in memory at a time; ``X_i^T X_j`` in column chunks that keep
    the product within one layer's memory."""
    size = len(layers)
    out = np.empty((size, size))
    budget = streaming_budget(layers)
    for i in range(size):
        a = layers[i].rows(0, layers[i].n)
        for j in range(i, size):
            b = a if j == i else layers[j].rows(0, layers[j].n)
            step = max(1, budget // (2 * max(a.shape[1], 1)))
            out[i, j] = out[j, i] = sum(
                float(np.einsum("ij,ij->", p, p))
                for p in (a.T @ b[:, lo : lo + step] for lo in range(0, b.shape[1], step))
            )
    return out


def _gram_route(layers: list[_Centred], dtype: type) -> np.ndarray:
    """The Gram matrices' upper triangle, tile by tile, all layers at once.

    For row block ``B`` and column block ``C >= B``, the tile ``K_i[B, C]`` of every layer
    is one row of ``tiles``; ``tiles @ tiles.T`` adds every pair's sum over that tile
    (twice for off-diagonal tiles, which stand for their mirror image too), in float64.
    The Grams' diagonals, the largest entries, are left out of the tiles and added from
    the rows' float64 energies. Rows ``B`` of every layer stay in memory, rows ``C`` are
    centred as needed; the tile size keeps all of it within :func:`streaming_budget`.
    """
    n, size = layers[0].n, len(layers)
    width = sum(layer.d for layer in layers)
    # rows of B and C for every layer (2 b width) plus the tiles (size b^2), in `dtype`,
    # and a float64 chunk of the tiles for their sums, within budget
    item = np.dtype(dtype).itemsize
    budget = (streaming_budget(layers) * 8 - size * _PAIR_CHUNK * 8 * (item < 8)) / item
    b = int((-2 * width + np.sqrt(4 * width**2 + 4 * size * max(budget, 0))) / (2 * size))
    b = int(min(n, max(16, b)))
    out = np.zeros((size, size))
    tiles: np.ndarray = np.empty((size, b * b), dtype)
    for lo in range(0, n, b):
        rows_b = [layer.rows(lo, lo + b, dtype) for layer in layers]
        for co in range(lo, n, b):
            rows_c = rows_b if co == lo else [layer.rows(co, co + b, dtype) for layer in layers]
            m, k = len(rows_b[0]), len(rows_c[0])
            flat = tiles[:, : m * k]
            for i in range(size):
                tile = flat[i].reshape(m, k)
                np.matmul(rows_b[i], rows_c[i].T, out=tile)
                if co == lo:
                    np.fill_diagonal(tile, 0)
            out += (1.0 if co == lo else 2.0) * _pair_sums(flat)
    diag = np.stack([layer.diag for layer in layers])
    return out + diag @ diag.T


def _pair_sums(tiles: np.ndarray) -> np.ndarray:
    """``tiles @ tiles.T`` summed in float64 (float32 tiles converted a chunk at a time)."""
    if tiles.dtype == np.float64:
        return tiles @ tiles.T
    out = np.zeros((len(tiles), len(tiles)))
    for lo in range(0, tiles.shape[1], _PAIR_CHUNK):
        part = tiles[:, lo : lo + _PAIR_CHUNK].astype(np.float64)
        out += part @ part.T
    return out


def _plain(key: Hashable) -> object:
    return key.item() if isinstance(key, np.generic) else key
