"""Synthetic cubes with labels planted at known layers: ground truth for the probe actions.

A probe that ranks layers, a test for "emerges earlier" or a collapse index is only
trustworthy if it recovers what was put in. :func:`planted_cube` builds a cube that
follows the cube contract, with each label written linearly into chosen (layer, component)
slices at a chosen strength and pure noise everywhere else.

>>> cube = planted_cube({"number": {2: 3.0}})             # layer 2, every component
>>> cube = planted_cube({"a": {(1, "resid"): 2.0}, "b": {(3, "resid"): 2.0}}, dim=64)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from mechwidgets.core.components import STREAMS
from mechwidgets.data.tasks import SPLITS


def planted_cube(
    plants: Mapping[str, Mapping[int | tuple[int, str], float]],
    *,
    n_samples: int = 600,
    dim: int = 32,
    n_layers: int = 5,
    components: Sequence[str] = STREAMS,
    classes: Mapping[str, int] | None = None,
    types_per_class: int = 4,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> xr.Dataset:
    """A cube whose labels are decodable exactly where they were planted.

    Parameters
    ----------
    plants : label name -> {layer or (layer, component): strength}. A slice gets
        ``strength * signal * u`` added to unit-variance Gaussian noise, with ``u`` a random
        unit direction per (label, slice) and ``signal`` the +-1 class code (binary), a class
        mean (multiclass) or the standardised value (continuous); classes are balanced
        within every split, so chance is exactly 1 / classes. For a binary label the
        default ridge probe scores about 80% at strength 1, 96% at 2 and 99.6% at 3 (mean
        test accuracy over 20 seeds at the default size).
    n_samples, dim, n_layers, components : the cube's shape.
    classes : label name -> number of classes (default 2; 0 = continuous label).
    types_per_class : word types per class and split for ``wordtype_<label>`` (types are
        disjoint between splits, so a control task cannot memorise test items); each
        type also adds a small random vector to every slice, as lexical identity would.
    fractions : train / val / test shares.
    seed : seed of every draw.

    Returns
    -------
    An ``xarray.Dataset`` with ``act`` ``(sample, layer, component, dim)`` float32,
    ``split``, ``sample_id``, one variable per label and ``wordtype_<label>``.
    """
    rng = np.random.default_rng(seed)
    classes = dict(classes or {})
    cut = np.cumsum(np.round(np.asarray(fractions) * n_samples).astype(int))[:2]
    split = np.array(SPLITS)[np.searchsorted(cut, rng.permutation(n_samples), side="right")]
    act = rng.standard_normal((n_samples, n_layers, len(components), dim))
    data: dict[str, tuple] = {"split": ("sample", split)}
    for name, where in plants.items():
        n_cls = classes.get(name, 2)
        values, signal = _label(rng, split, n_cls)
        types = _word_types(rng, split, values if n_cls else values > 0, types_per_class)
        act += 0.3 * rng.standard_normal((types.max() + 1, 1, 1, dim))[types]
        for key, strength in where.items():
            layer, comps = key if isinstance(key, tuple) else (key, None)
            for ci, comp in enumerate(components):
                if comps is None or comp == comps:
                    u = rng.standard_normal((signal.shape[1], dim))
                    u /= np.linalg.norm(u, axis=1, keepdims=True)
                    act[:, layer, ci] += strength * signal @ u
        data[name] = ("sample", values)
        data[f"wordtype_{name}"] = ("sample", types)
    data["act"] = (("sample", "layer", "component", "dim"), act.astype(np.float32))
    return xr.Dataset(
        data,
        coords={
            "sample_id": ("sample", np.arange(n_samples)),
            "layer": np.arange(n_layers),
            "component": list(components),
        },
        attrs={"source": "planted_cube", "seed": seed},
    )


def _label(
    rng: np.random.Generator, split: np.ndarray, n_cls: int
) -> tuple[np.ndarray, np.ndarray]:
    """Label values (classes balanced within every split) and the ``(n, k)`` signal."""
    n = split.size
    if n_cls == 0:
        values = rng.standard_normal(n)
        return values, values[:, None]
    values = np.empty(n, int)
    for name in SPLITS:
        where = np.flatnonzero(split == name)
        values[where] = rng.permutation(np.arange(where.size) % n_cls)
    if n_cls == 2:
        return values, (2.0 * values - 1.0)[:, None]
    return values, np.eye(n_cls)[values] * np.sqrt(2.0)


def _word_types(
    rng: np.random.Generator, split: np.ndarray, group: np.ndarray, per_class: int
) -> np.ndarray:
    """Type ids nested in (split, class): no type is shared between splits or classes."""
    groups = np.unique(group)
    s = np.array([SPLITS.index(v) for v in split])
    g = np.searchsorted(groups, group)
    return (s * groups.size + g) * per_class + rng.integers(0, per_class, split.size)
