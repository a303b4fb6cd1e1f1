"""Tasks: texts, labels, splits and the token position to read.

A :class:`Task` is what every action consumes besides a model: the texts to run, one
label array per feature, a train/val/test split per sample, and optionally the token
position at which to read each text (the pre-verb token, say), written as
:mod:`mechwidgets.data.positions` defines: a token index, a marker such as ``"[MASK]"``
or a character span. Built-in tasks come from
:func:`mechwidgets.data.catalog.get_task`; a researcher's own table comes in through
:meth:`Task.from_frame` or :meth:`Task.from_file`.

>>> task = get_task("subject_number", n=2000, seed=0)
>>> task.texts[0], task.labels["subject_number"][0], task.split[0], task.positions[0]
>>> mine = Task.from_file("sentences.csv", text="sentence", labels=["number"])
>>> cloze = Task.from_frame(df, labels="number", position="marker", groups="noun")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mechwidgets.core.errors import TaskError
from mechwidgets.data.positions import as_positions
from mechwidgets.data.splits import SPLITS, stratified_split

READERS = {
    ".csv": pd.read_csv,
    ".jsonl": lambda p: pd.read_json(p, lines=True),
    ".parquet": pd.read_parquet,
}


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
    positions : the token to read per sample, or None to use the extraction's token
        policy. Each is an int index over the tokens as the model's tokenizer gives them,
        special tokens included (``[CLS]`` is 0 for BERT; negative from the end, so -1 is
        BERT's ``[SEP]``), a marker string (``"[MASK]"``, ``"is@last"``) or a character
        span ``(start, end)``: see :mod:`mechwidgets.data.positions`.
    word_types : label name -> integer id of the lexical item that carries the label in each
        sample, for control tasks (Hewitt & Liang 2019); the cube's ``wordtype_<label>``.
    groups : integer id of the independent unit each sample belongs to (the cube's
        ``group`` variable), for statistics that resample units rather than items; None
        when samples are independent.
    behavior : the task's default behaviour metric, if it has one (a value of
        :mod:`mechwidgets.intervene.metrics`, e.g. ``LogitDiff`` or ``RepeatLogProb``).
    metadata : free-form facts: ``classes``, a ``description``, ``read_at``, and for
        built-in tasks the ``factors`` of every sample and the ``word_type_names``.
    """

    name: str
    texts: list[str]
    labels: dict[str, np.ndarray]
    split: np.ndarray
    positions: np.ndarray | None = None
    word_types: dict[str, np.ndarray] = field(default_factory=dict)
    groups: np.ndarray | None = None
    behavior: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.texts)
        self.split = np.asarray(self.split, dtype=str)
        arrays = {"split": self.split, **{f"label '{k}'": v for k, v in self.labels.items()}}
        arrays.update({f"word_types '{k}'": v for k, v in self.word_types.items()})
        if self.positions is not None:
            self.positions = as_positions(self.positions, n, f"task '{self.name}': positions")
        if self.groups is not None:
            arrays["groups"] = self.groups = np.asarray(self.groups)
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
        position: str | tuple[str, str] | None = None,
        name: str = "user",
        seed: int = 0,
        word_types: str | dict[str, str] | None = None,
        groups: str | None = None,
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
        position : the token to read, as :mod:`mechwidgets.data.positions` defines: a
            column holding per row a token index (over the tokens as the model's tokenizer
            gives them, special tokens included: ``[CLS]`` is 0 for BERT, -1 the last
            token), a marker string (``"[MASK]"``, ``"is@last"``) or a ``(start, end)``
            character span; or a pair of columns ``("start", "end")`` of character spans.
            Default none (the extraction's token policy). A string is always a marker,
            also ``"5"`` read from a CSV.
        name : the task's name.
        seed : seeds the default split.
        word_types : the lexical item carrying each label, for control tasks: one column
            shared by every label, or ``{label: column}``. Values of any type become ids;
            their names are kept in ``metadata["word_type_names"]``.
        groups : a column naming the independent unit of each sample (the noun, the
            template, the speaker); statistics resample these units instead of items.

        Examples
        --------
        >>> Task.from_frame(df, text="sentence", labels=["number"], position="marker")
        >>> Task.from_frame(df, labels=["number", "tense"], word_types={"number": "noun"})
        """
        if not isinstance(df, pd.DataFrame):
            raise TaskError(f"expected a pandas DataFrame, got {type(df).__name__}")
        label_cols = [labels] if isinstance(labels, str) else list(labels or ["label"])
        if df.empty:
            raise TaskError("the table is empty: give it one row per sample")
        type_cols = _word_type_columns(word_types, label_cols)
        span_cols = list(position) if isinstance(position, (tuple, list)) else [position]
        given = [split, *span_cols, groups, *type_cols.values()]
        for col in [text, *label_cols, *(c for c in given if c is not None)]:
            if col not in df.columns:
                have = ", ".join(map(str, df.columns))
                raise TaskError(
                    f"column '{col}' is not in the table; its columns are: {have}; name the "
                    "right ones (text=..., labels=[...] or a config's dataset.text/labels)"
                )
            missing = int(df[col].isna().sum())
            if missing:
                raise TaskError(
                    f"column '{col}' has {missing} missing values; fill or drop those rows"
                )
        label_arrays, classes = {}, {}
        for col in label_cols:
            names, codes = _codes(df[col])
            if len(names) < 2:
                raise TaskError(
                    f"label '{col}' has a single class ({str(names[0])!r}); "
                    "a probe needs two or more"
                )
            label_arrays[col], classes[col] = codes, names
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
        types = {label: _codes(df[col]) for label, col in type_cols.items()}
        metadata: dict[str, Any] = {
            "classes": classes,
            "source": "table",
            "split_given": split is not None,
        }
        if types:
            metadata["word_type_names"] = {label: names for label, (names, _) in types.items()}
        group_ids = None
        if groups is not None:
            metadata["group_names"], group_ids = _codes(df[groups])
        return cls(
            name=name,
            texts=df[text].astype(str).tolist(),
            labels=label_arrays,
            split=splits,
            positions=_position_column(df, position),
            word_types={label: ids for label, (_, ids) in types.items()},
            groups=group_ids,
            metadata=metadata,
        )

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> Task:
        """A task from a CSV, JSONL or Parquet file; keyword arguments as :meth:`from_frame`."""
        path = Path(path).expanduser()
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            raise TaskError(f"cannot read '{path.name}': use a .csv, .jsonl or .parquet file")
        if not path.is_file():
            raise TaskError(f"no file at '{path}'; check the path")
        kwargs.setdefault("name", path.stem)
        try:
            frame = reader(path)
        except pd.errors.EmptyDataError:
            raise TaskError(f"'{path}' is empty: give a header and one row per sample") from None
        except UnicodeDecodeError as exc:
            raise TaskError(
                f"'{path}' is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                f"{exc.start}); save it as UTF-8"
            ) from None
        except (ValueError, OSError) as exc:  # pandas' and pyarrow's parse errors are these
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise TaskError(
                f"cannot read '{path}' ({first}); check it is a well-formed {path.suffix} file"
            ) from None
        return cls.from_frame(frame, **kwargs)


def _codes(column: pd.Series) -> tuple[tuple[str, ...], np.ndarray]:
    """Sorted distinct values of a column as names, and each row's index among them."""
    names, codes = np.unique(column.to_numpy(), return_inverse=True)
    return tuple(str(c) for c in names), codes.astype(int)


def _word_type_columns(
    word_types: str | dict[str, str] | None, labels: list[str]
) -> dict[str, str]:
    """label -> word-type column, from one shared column or a dict over the labels."""
    if word_types is None:
        return {}
    if isinstance(word_types, str):
        return dict.fromkeys(labels, word_types)
    if not isinstance(word_types, dict):
        raise TaskError(
            f"word_types must be a column name or {{label: column}}, got {word_types!r}"
        )
    unknown = sorted(set(word_types) - set(labels))
    if unknown:
        raise TaskError(
            f"word_types names {unknown}, which are not labels; the labels are {labels}"
        )
    return dict(word_types)


def _position_column(df: pd.DataFrame, position: str | tuple[str, str] | None) -> Any:
    """The position column's values, or (start, end) spans from a pair of columns."""
    if position is None:
        return None
    if isinstance(position, (tuple, list)):
        if len(position) != 2:
            raise TaskError(
                f"position must be a column or a pair of span columns, got {position!r}"
            )
        return list(zip(df[position[0]], df[position[1]], strict=True))
    return df[position].tolist()
