"""Tasks: texts, labels, splits and the token position to read.

A :class:`Task` is what every action consumes besides a model: the texts to run, one
label array per feature, a train/val/test split per sample, and optionally the token
position at which to read each text (the pre-verb token, say). Built-in tasks come from
:func:`mechwidgets.data.catalog.get_task`; a researcher's own table comes in through
:meth:`Task.from_frame` or :meth:`Task.from_file`.

>>> task = get_task("subject_number", n=2000, seed=0)
>>> task.texts[0], task.labels["subject_number"][0], task.split[0], task.positions[0]
>>> mine = Task.from_file("sentences.csv", text="sentence", labels=["number"])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mechwidgets.core.errors import TaskError
from mechwidgets.data.splits import SPLITS, stratified_split

READERS = {
    ".csv": pd.read_csv,
    ".jsonl": lambda p: pd.read_json(p, lines=True),
    ".parquet": pd.read_parquet,
}


@dataclass(frozen=True)
class LogitDiff:
    """Behaviour metric: logit of the correct next word minus that of the wrong one.

    Read at each sample's position (the last token of a prefix): for subject-verb
    agreement ``correct[i]`` is "is" and ``wrong[i]`` "are" for a singular subject.
    Words are single tokens of the task's model.
    """

    correct: tuple[str, ...]
    wrong: tuple[str, ...]


@dataclass(frozen=True)
class RepeatLogProb:
    """Behaviour metric: mean log-probability of the tokens where ``mask`` is True.

    ``mask`` is bool (sample, token): ``mask[i, t]`` marks token ``t`` of text ``i`` as
    predictable from the tokens before it (the repeated half of an induction sequence),
    so the metric is the mean over marked ``(i, t)`` of ``log p(token_t | tokens_<t)``.
    Token indices count the text's own tokens (no special tokens).
    """

    mask: np.ndarray


@dataclass
class Task:
    """Texts with labels and splits.

    Parameters
    ----------
    name : a short identifier, recorded in cubes and bundles.
    texts : one string per sample.
    labels : label name -> integer class array with one value per sample; class names
        are in ``metadata["classes"][label]``, indexed by the class value.
    split : array of ``"train"``, ``"val"`` or ``"test"`` per sample.
    positions : token index to read per sample, counted over the tokens the model's tokenizer
        gives the text (special tokens included; negative from the end, which a BOS token
        does not shift), or None to use the extraction's token policy.
    word_types : label name -> integer id of the lexical item that carries the label in each
        sample, for control tasks (Hewitt & Liang 2019).
    behavior : the task's default behaviour metric, if it has one (:class:`LogitDiff`,
        :class:`RepeatLogProb`).
    metadata : free-form facts: ``classes``, a ``description``, ``read_at``, and for
        built-in tasks the ``factors`` of every sample and the ``word_type_names``.
    """

    name: str
    texts: list[str]
    labels: dict[str, np.ndarray]
    split: np.ndarray
    positions: np.ndarray | None = None
    word_types: dict[str, np.ndarray] = field(default_factory=dict)
    behavior: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.texts)
        self.split = np.asarray(self.split, dtype=str)
        arrays = {"split": self.split, **{f"label '{k}'": v for k, v in self.labels.items()}}
        arrays.update({f"word_types '{k}'": v for k, v in self.word_types.items()})
        if self.positions is not None:
            arrays["positions"] = self.positions
        for what, values in arrays.items():
            if len(values) != n:
                raise TaskError(
                    f"task '{self.name}': {what} has {len(values)} values for {n} texts"
                )
        bad = sorted(set(self.split) - set(SPLITS))
        if bad:
            raise TaskError(f"task '{self.name}': unknown split names {bad}; use train, val, test")

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={int((self.split == s).sum())}" for s in SPLITS)
        return f"Task({self.name!r}, n={len(self)}, labels={list(self.labels)}, {counts})"

    def indices(self, split: str) -> np.ndarray:
        """Sample indices of one split."""
        if split not in SPLITS:
            raise TaskError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        return np.flatnonzero(self.split == split)

    def classes(self, label: str) -> tuple[str, ...]:
        """Class names of ``label``, indexed by class value."""
        if label not in self.labels:
            raise TaskError(
                f"task '{self.name}' has no label '{label}'; it has {', '.join(self.labels)}"
            )
        return tuple(self.metadata.get("classes", {}).get(label, ()))

    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame,
        text: str = "text",
        labels: str | Sequence[str] | None = None,
        split: str | None = None,
        position: str | None = None,
        name: str = "user",
        seed: int = 0,
    ) -> Task:
        """A task from a table with a text column and one or more label columns.

        Parameters
        ----------
        df : one row per sample.
        text : the text column.
        labels : label column(s); default ``"label"``. Values of any type become class
            ids in sorted order; the names are kept in ``metadata["classes"]``.
        split : a column of ``train``/``val``/``test``; default a deterministic split
            (60/20/20) stratified on the first label.
        position : a column of token indices to read (the text's own tokens, negative
            from the end); default none (the extraction's token policy).
        name : the task's name.
        seed : seeds the default split.

        Examples
        --------
        >>> Task.from_frame(df, text="sentence", labels=["number"])
        """
        if not isinstance(df, pd.DataFrame):
            raise TaskError(f"expected a pandas DataFrame, got {type(df).__name__}")
        label_cols = [labels] if isinstance(labels, str) else list(labels or ["label"])
        if df.empty:
            raise TaskError("the table is empty: it needs one row per sample")
        for col in [text, *label_cols, *(c for c in (split, position) if c is not None)]:
            if col not in df.columns:
                have = ", ".join(map(str, df.columns))
                raise TaskError(f"column '{col}' is not in the table; its columns are: {have}")
            missing = int(df[col].isna().sum())
            if missing:
                raise TaskError(
                    f"column '{col}' has {missing} missing values; fill or drop those rows"
                )
        label_arrays, classes = {}, {}
        for col in label_cols:
            names, codes = np.unique(df[col].to_numpy(), return_inverse=True)
            if len(names) < 2:
                raise TaskError(
                    f"label '{col}' has a single class ({str(names[0])!r}); "
                    "a probe needs two or more"
                )
            label_arrays[col], classes[col] = codes.astype(int), tuple(str(c) for c in names)
        if split is not None:
            splits = df[split].astype(str).str.lower().to_numpy()
            for need in ("train", "test"):
                if need not in splits:
                    raise TaskError(
                        f"split column '{split}' has no '{need}' rows; a probe needs both"
                    )
        else:
            splits = stratified_split(
                df[label_cols[0]].to_numpy(), seed, what=f"label '{label_cols[0]}'"
            )
        positions = df[position].to_numpy().astype(int) if position is not None else None
        return cls(
            name=name,
            texts=df[text].astype(str).tolist(),
            labels=label_arrays,
            split=splits,
            positions=positions,
            metadata={"classes": classes, "source": "table", "split_given": split is not None},
        )

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> Task:
        """A task from a CSV, JSONL or Parquet file; keyword arguments as :meth:`from_frame`."""
        path = Path(path)
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            raise TaskError(f"cannot read '{path.name}': use a .csv, .jsonl or .parquet file")
        if not path.is_file():
            raise TaskError(f"no file at '{path}'; check the path")
        kwargs.setdefault("name", path.stem)
        return cls.from_frame(reader(path), **kwargs)
