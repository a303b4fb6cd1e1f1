"""Deterministic, stratified train/val/test splits.

Probes are trained on one split, tuned on another and scored on a third; every split
must see every class in the same proportion, and the same seed must give the same
split. Built-in tasks split lexical items (nouns, adjectives) this way and user tables
split rows.

>>> stratified_split(np.array([0, 0, 0, 1, 1, 1, 1]), seed=0)
array(['train', 'test', 'val', 'train', 'test', 'val', 'train'], dtype='<U5')
"""

from __future__ import annotations

import numpy as np

from mechwidgets.core.errors import TaskError

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)


def stratified_split(
    labels: np.ndarray,
    seed: int,
    fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
    what: str = "label",
) -> np.ndarray:
    """Deterministic train/val/test assignment with the same class shares in every split.

    Each class is shuffled and cut by ``fractions`` on its own (sklearn's
    ``train_test_split`` needs two calls to make three splits and rounds the second on
    what is left; cutting per class keeps every split's shares equal to the table's).

    Raises
    ------
    TaskError : when a class has fewer than 3 samples, so some split would miss it.
    """
    rng = np.random.default_rng([seed, 11])
    out = np.empty(len(labels), dtype=object)
    for value in np.unique(labels):
        ids = rng.permutation(np.flatnonzero(labels == value))
        if len(ids) < 3:
            raise TaskError(
                f"{what} class {value!r} has {len(ids)} samples; a stratified split needs 3 or more"
            )
        n_val = max(1, round(fractions[1] * len(ids)))
        n_test = max(1, round(fractions[2] * len(ids)))
        out[ids[: len(ids) - n_val - n_test]] = "train"
        out[ids[len(ids) - n_val - n_test : len(ids) - n_test]] = "val"
        out[ids[len(ids) - n_test :]] = "test"
    return out.astype(str)
