"""Control baselines: what a probe scores when the representation cannot be the reason.

A probe score is evidence only next to its controls (Hewitt & Liang 2019; Zhang &
Bowman 2018). Three are built in, each drawn many times per seed so that the same draws
give the reported control score (draw 0) and a null distribution for p-values:

- ``label_shuffle``: the labels permuted within each split (train, val and test), and
  the whole protocol (fit, strength chosen on val, score on test) rerun on them: the
  permutation test of Ojala & Garriga (2010). Such a probe must score at chance; if it
  does not, something leaks. Permuting the train labels alone is not enough: with the
  real val labels choosing the strength and scoring, a shuffled probe on a slice where the
  label is strong lands on a random direction that still correlates with it: on a
  planted slice (``planted_cube`` strength 3) such probes scored 0.23 to 0.99, mean 0.58,
  sd 0.19 over 400 draws, against sd 0.045 (binomial) when all splits are permuted.
- ``random_subspace``: the real labels, but the probe sees only a random orthonormal
  projection of the standardised activations whose rank equals the probe's rank (1 for a
  binary or continuous label, C-1 for C classes). It asks whether *some* low-rank view of
  the slice decodes the label as well as the learned direction, i.e. whether the feature
  is spread everywhere or concentrated where the probe found it.
- ``control_task``: Hewitt & Liang's control task. Each word type (the lexical item that
  carries the label, cube variable ``wordtype_<label>``) gets a random label; the per-type
  labels are a permutation of the types' real (majority) labels, so the class balance over
  types is kept exactly. The control probe is trained, selected and scored on these labels.
  Selectivity = real score - control-task score.

>>> cols = shuffled_labels(codes, split, draws=200, rng=rng)             # (n, 200)
>>> mats = random_subspaces(dim=512, rank=1, draws=200, rng=rng)          # (200, 512, 1)
>>> ctrl = control_task_labels(codes, word_types, draws=200, rng=rng)     # (n, 200)
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mechwidgets.core.errors import SpecError

CONTROLS: tuple[str, ...] = ("label_shuffle", "random_subspace", "control_task")
#: the cube variable holding word-type ids for the control task of label ``L``
WORDTYPE_PREFIX = "wordtype_"


def check_controls(names: Iterable[object]) -> tuple[str, ...]:
    """Control names from strings, ``{"name": ...}`` dicts or objects with ``.name``.

    Unknown names raise a one-line :class:`SpecError`; repeats are dropped.
    """
    out: list[str] = []
    for item in names:
        name = item.get("name") if isinstance(item, dict) else getattr(item, "name", item)
        if name not in CONTROLS:
            raise SpecError(f"unknown control '{name}': choose from {', '.join(CONTROLS)}")
        options = {k: v for k, v in item.items() if k != "name"} if isinstance(item, dict) else {}
        if any(v not in (None, {}) for v in options.values()):  # accepted and ignored before
            raise SpecError(
                f"control '{name}' takes no options, got {options}; remove them (the "
                "random-subspace rank is the parameter subspace_rank)"
            )
        if name not in out:
            out.append(str(name))
    return tuple(out)


def shuffled_labels(
    codes: np.ndarray,
    groups: np.ndarray,
    draws: int,
    rng: np.random.Generator,
    units: np.ndarray | None = None,
) -> np.ndarray:
    """``(n, draws)`` label columns, each a permutation of ``codes`` within every group.

    With the splits as groups, every split keeps its class balance exactly. With ``units``
    (word types, or any ids of items that are not independent) the permutation respects
    them, as a restricted permutation test must (Good 2005, "Permutation, Parametric and
    Bootstrap Tests of Hypotheses", ch. 3; Anderson & ter Braak 2003): where the label is
    constant within every unit, whole units swap labels (within their group when no unit
    spans two groups, else across all units); otherwise labels are permuted within each
    (unit, group) cell, so every unit keeps its own label mix.
    """
    codes = np.asarray(codes)
    if units is None:
        return _permute_within(codes, np.asarray(groups), draws, rng)
    _, unit = np.unique(np.asarray(units), return_inverse=True)
    first = np.unique(unit, return_index=True)[1]
    if (codes == codes[first][unit]).all():  # label constant within every unit
        unit_groups = np.asarray(groups)[first]
        nested = (np.asarray(groups) == unit_groups[unit]).all()
        strata = unit_groups if nested else np.zeros(first.size, int)
        return _permute_within(codes[first], strata, draws, rng)[unit]
    _, cell = np.unique(
        np.stack([unit, np.unique(groups, return_inverse=True)[1]]), axis=1, return_inverse=True
    )
    return _permute_within(codes, cell.ravel(), draws, rng)


def _permute_within(
    values: np.ndarray, strata: np.ndarray, draws: int, rng: np.random.Generator
) -> np.ndarray:
    """``(n, draws)``: each column ``values`` permuted within every stratum.

    Sorting random keys offset by the stratum index orders every column by stratum and,
    within a stratum, at random: one vectorised argsort instead of a loop over strata.
    """
    _, stratum = np.unique(strata, return_inverse=True)
    stratum = stratum.ravel()
    order = np.argsort(stratum[:, None] + rng.random((stratum.size, draws)), axis=0)
    out = np.empty((values.size, draws), dtype=values.dtype)
    out[np.argsort(stratum, kind="stable")] = values[order]
    return out


def random_subspaces(dim: int, rank: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """``(draws, dim, rank)`` orthonormal bases of uniformly random ``rank``-dim subspaces."""
    gauss = rng.standard_normal((draws, dim, rank))
    q, r = np.linalg.qr(gauss)
    # fix the sign convention so the distribution is uniform (Haar), not QR-biased
    return q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]


def control_task_labels(
    codes: np.ndarray, word_types: np.ndarray, draws: int, rng: np.random.Generator
) -> np.ndarray:
    """``(n, draws)`` control-task labels: one random label per word type.

    Each type's real label (majority class, or mean for continuous labels) is computed,
    then shuffled across types in every draw, so the per-type class balance is kept.
    """
    types, inverse = np.unique(np.asarray(word_types), return_inverse=True)
    if codes.dtype.kind == "f":
        per_type = np.bincount(inverse, weights=codes) / np.bincount(inverse)
    else:
        counts = np.zeros((types.size, int(codes.max()) + 1))
        np.add.at(counts, (inverse, codes), 1)
        per_type = counts.argmax(axis=1)
    shuffled = rng.permuted(np.repeat(per_type[None], draws, axis=0), axis=1)
    return shuffled[:, inverse].T
