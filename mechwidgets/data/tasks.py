"""Tasks: texts, labels, splits and the token position to read.

A :class:`Task` is what every action consumes besides a model: the texts to run, one
label array per feature, a train/val/test split per sample, and optionally the token
position at which to read each text (the pre-verb token, say).

>>> task = get_task("subject_number", n=2000, seed=0)
>>> task.texts[0], task.labels["subject_number"][0], task.split[0], task.positions[0]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass
class Task:
    """Texts with labels and splits.

    Parameters
    ----------
    name : a short identifier, recorded in cubes and bundles.
    texts : one string per sample.
    labels : label name -> array with one value per sample.
    split : array of ``"train"``, ``"val"`` or ``"test"`` per sample.
    positions : token index to read per sample (counted on the text's own tokens, negative
        from the end), or None to use the extraction's token policy.
    word_types : label name -> integer id of the lexical item that carries the label in each
        sample, for control tasks (Hewitt & Liang 2019).
    behavior : the task's default behaviour metric, if it has one.
    """

    name: str
    texts: list[str]
    labels: dict[str, np.ndarray]
    split: np.ndarray
    positions: np.ndarray | None = None
    word_types: dict[str, np.ndarray] = field(default_factory=dict)
    behavior: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)
