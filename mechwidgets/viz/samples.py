"""Below the layer: the test sentences one probe saw, with label, prediction and score.

A result's ``predictions`` hold, per probed slice (label, layer, component), each test
sample's true class, predicted class and score; :func:`slice_samples` puts them beside
the sentences (the ``sample_id``-th text of the task the run drew, or of ``texts=``), the
misclassified ones first, with class names rather than codes. It is what a click on a
cell of :class:`~mechwidgets.viz.widgets.LayerExplorer` shows under the histogram, and
``res.samples(layer=2, component="resid")`` in Python. Plain HTML, so it also shows in
untrusted notebooks, ``nbconvert`` and GitHub.

>>> res.samples(layer=2, component="resid")            # a table of sentences
>>> res.samples(layer=2, component="resid").frame      # one row per test sentence
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mechwidgets.core.errors import MechError

#: sentences shown by default (the misclassified first)
SHOWN = 12
_MARK = {True: "\u2713", False: "\u2717"}
_PREDICTION_COLUMNS = {"sample_id", "layer", "component", "y_true", "y_pred"}


class SamplesError(MechError, ValueError):
    """The sentences of a slice were asked for where there are none."""


@dataclass(repr=False)
class SliceSamples:
    """The test sentences of one probed slice: ``frame`` has one row per sentence with
    ``sample_id``, ``text``, ``label``, ``predicted``, ``score`` and ``correct``, the
    misclassified first."""

    label: str
    layer: int
    component: str
    frame: pd.DataFrame

    @property
    def n(self) -> int:
        """Test sentences the probe was scored on."""
        return len(self.frame)

    @property
    def n_wrong(self) -> int:
        """Misclassified test sentences (all of them, not only those shown)."""
        return int((~self.frame["correct"]).sum())

    def title(self, shown: int) -> str:
        """What the table shows, in one line."""
        return (
            f"layer {self.layer} \u00b7 {self.component}: {self.label}, {min(shown, self.n)} of "
            f"{self.n} test sentences ({self.n_wrong} misclassified, shown first)"
        )

    def __repr__(self) -> str:
        rows = self.frame.head(SHOWN)
        lines = [self.title(len(rows))]
        for row in rows.itertuples():
            mark = "ok" if row.correct else "WRONG"
            lines.append(f"  [{row.label} -> {row.predicted} {mark} {row.score:+.2f}] {row.text}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_html(self, shown: int = SHOWN) -> str:
        """The first ``shown`` sentences as an HTML table (misclassified rows tinted)."""
        rows = self.frame.head(shown)
        body = "".join(
            f"<tr style='{'' if row.correct else 'background:rgba(228,87,46,.15)'}'>"
            f"<td style='text-align:left'>{html.escape(row.text)}</td>"
            f"<td>{html.escape(row.label)}</td><td>{html.escape(row.predicted)}</td>"
            f"<td>{row.score:+.3f}</td><td>{_MARK[bool(row.correct)]}</td></tr>"
            for row in rows.itertuples()
        )
        head = "".join(f"<th>{h}</th>" for h in ("sentence", "label", "predicted", "score", ""))
        return (
            f"<div class='mw-samples'><p class='mw-samples-title'><b>"
            f"{html.escape(self.title(len(rows)))}</b></p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
        )


def slice_samples(
    result: Any,
    layer: int,
    component: str = "resid",
    label: str | None = None,
    texts: Any = None,
    classes: Any = None,
) -> SliceSamples:
    """The test sentences of one probed slice with label, prediction and score.

    Parameters
    ----------
    result : an action result with per-sample ``predictions`` (detect, compare, collapse).
    layer, component : the slice.
    label : which label's probe; default the predictions' first.
    texts : the sentences by ``sample_id``: a Task, a cube (its ``text``) or a list;
        default the task the result's run named (its RunSpec's dataset), else none.
    classes : class names per label, as :class:`~mechwidgets.viz.widgets.LayerExplorer`
        takes them; default the built-in task's.

    Returns
    -------
    A :class:`SliceSamples`; it shows as a table in Jupyter.
    """
    preds = getattr(result, "predictions", None)
    if not isinstance(preds, pd.DataFrame) or not set(preds) >= _PREDICTION_COLUMNS:
        raise SamplesError(
            "this result has no per-sample predictions; detect, compare and collapse "
            "results have them"
        )
    keep = (preds["layer"] == layer) & (preds["component"] == component)
    if "control" in preds:
        keep &= preds["control"] == "none"
    labels = [str(v) for v in pd.unique(preds.loc[keep, "label"])] if "label" in preds else []
    label = label if label is not None else (labels[0] if labels else "")
    if "label" in preds:
        keep &= preds["label"].astype(str) == label
    rows = preds[keep].drop_duplicates("sample_id")  # several seeds: the first one's
    if rows.empty:
        slices = preds[["layer", "component"]].drop_duplicates()
        where = ", ".join(f"{a}\u00b7{b}" for a, b in slices.itertuples(index=False))
        raise SamplesError(
            f"no predictions for {label or 'the probe'} at layer {layer} \u00b7 {component}; "
            f"the result has {where}"
        )
    names = class_names(result, classes, cube=texts).get(label, ())
    sentences = sample_texts(result, texts)
    ids = rows["sample_id"].to_numpy(dtype=int)
    if sentences is not None and ids.max() >= len(sentences):
        raise SamplesError(
            f"sample_id {ids.max()} is beyond the {len(sentences)} texts given; pass the "
            "task or cube the result was computed on as texts="
        )
    score = rows["y_score"] if "y_score" in rows else pd.Series(np.nan, index=rows.index)
    frame = pd.DataFrame(
        {
            "sample_id": ids,
            "text": [sentences[i] for i in ids] if sentences is not None else [""] * len(ids),
            "label": [class_name(v, names) for v in rows["y_true"]],
            "predicted": [class_name(v, names) for v in rows["y_pred"]],
            "score": score.to_numpy(dtype=float),
            "correct": (rows["y_true"].to_numpy() == rows["y_pred"].to_numpy()),
        }
    )
    frame = frame.sort_values(["correct", "sample_id"], kind="stable").reset_index(drop=True)
    return SliceSamples(label, int(layer), component, frame)


def sample_texts(result: Any, texts: Any = None) -> Sequence[str] | None:
    """Sentences by sample_id: ``texts`` (a Task, a cube, a list), else the task the
    result's run named (drawn again from its RunSpec), else None."""
    if texts is None:
        dataset = (getattr(result, "spec", None) or {}).get("dataset")
        if not dataset:
            return None
        from mechwidgets.core.specs import DatasetSpec
        from mechwidgets.runner import resolve_pairs, resolve_task

        spec = DatasetSpec(**dataset)
        try:
            return list(resolve_task(spec).texts)
        except MechError:  # a task only drawn as prompt pairs
            return list(resolve_pairs(spec).to_task().texts)
    if hasattr(texts, "texts"):  # a Task
        return list(texts.texts)
    if hasattr(texts, "coords") and "text" in texts.coords:  # a cube
        return [str(t) for t in texts["text"].values]
    return [str(t) for t in texts]


def class_names(result: Any, classes: Any, cube: Any = None) -> dict[str, tuple[str, ...]]:
    """Class names per label: given, from a Task, or from the built-in task the run named
    (or the ``cube`` was extracted from)."""
    if classes is None:
        dataset = (getattr(result, "spec", None) or {}).get("dataset") or {}
        name, n = dataset.get("name"), dataset.get("n")
        if name is None and cube is not None and hasattr(cube, "attrs"):
            name, n = cube.attrs.get("task"), int(cube.sizes.get("sample", 0)) or None
        classes = _builtin_task(name, n) if isinstance(name, str) else None
    if classes is None:
        return {}
    if callable(getattr(classes, "classes", None)):  # a Task
        return {label: tuple(classes.classes(label)) for label in classes.labels}
    return {str(k): tuple(str(v) for v in names) for k, names in dict(classes).items()}


def _builtin_task(name: str, n: int | None = None) -> Any:
    """A draw of the built-in task ``name`` (for its class names), or None: of the run's
    ``n`` samples, which the task allows (some tasks refuse small draws)."""
    from mechwidgets.data.catalog import get_task, list_tasks

    return get_task(name, n=n or 20) if name in list_tasks() else None


def class_name(value: Any, names: tuple[str, ...] = ()) -> str:
    """A class for display: its name when known (``names[value]``), else the value, with
    ``1.0`` (labels stored as floats) read as ``1``."""
    number = float(value) if isinstance(value, (int, float, np.number)) else None
    if number is not None and number.is_integer() and 0 <= number < len(names):
        return names[int(number)]
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
