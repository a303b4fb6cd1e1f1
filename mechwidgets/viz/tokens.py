"""The token view: each token of a few test sentences coloured by a probe's score there.

A probe is trained on the cube's train split at one (layer, component), where the cube
was read (its task's position); :func:`token_scores` then runs the model on test
sentences and applies the same probe at every token, so one sees where along a sentence
the feature becomes readable, beside each sentence's label, the probe's prediction at the
read token and its score. Like CircuitsVis's coloured tokens, offline: plain HTML with
inline colours, so it shows in untrusted notebooks, ``nbconvert`` and GitHub too.

>>> view = mw.viz.token_scores(model, cube, "subject_number", layer=2)
>>> view              # sentences, tokens coloured by P(plural); hover a token for its score
>>> view.frame()      # one row per (sample, token) with the score
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nnsight
import numpy as np
import pandas as pd
import torch
import xarray as xr
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mechwidgets.core.components import STREAMS
from mechwidgets.core.errors import MechError

if TYPE_CHECKING:
    from mechwidgets.models.loading import Model

#: class 0 and class 1 colours (RGB) of the token backgrounds
LOW, HIGH = (76, 120, 168), (228, 87, 46)


class TokenViewError(MechError, ValueError):
    """The token view was asked for something it cannot show."""


@dataclass(repr=False)
class TokenScores:
    """Per-token probe scores of some test sentences, shown as coloured tokens.

    ``rows[i]`` holds sample ``i``'s ``text``, ``tokens``, ``scores`` (the probe's
    probability of ``classes[1]`` at each token), ``read`` (the index of the token the
    cube was read at), ``label`` and ``predicted`` (class names at the read token).
    """

    label: str
    layer: int
    component: str
    classes: tuple[str, str]
    rows: list[dict[str, Any]]

    def frame(self) -> pd.DataFrame:
        """One row per (sample, position): token, score, whether it is the read token."""
        return pd.DataFrame(
            [
                dict(sample=i, position=p, token=t, score=float(s), read=p == row["read"])
                for i, row in enumerate(self.rows)
                for p, (t, s) in enumerate(zip(row["tokens"], row["scores"], strict=True))
            ]
        )

    def __repr__(self) -> str:
        lines = [f"TokenScores({self.label!r}, layer {self.layer} {self.component})"]
        for row in self.rows:
            mark = "ok" if row["label"] == row["predicted"] else "WRONG"
            lines.append(
                f"  [{row['label']} -> {row['predicted']} {mark}] "
                + " ".join(
                    f"{t}:{s:.2f}" for t, s in zip(row["tokens"], row["scores"], strict=True)
                )
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        low, high = self.classes
        legend = (
            f"<span style='background-color:{_colour(0.0)};padding:0 4px'>{html.escape(low)}"
            f"</span> \u2190 P({html.escape(high)}) \u2192 "
            f"<span style='background-color:{_colour(1.0)};padding:0 4px'>{html.escape(high)}"
            "</span>"
        )
        head = (
            f"<p class='mw-tokens-title'><b>{html.escape(self.label)}</b> probe at layer "
            f"{self.layer} \u00b7 {html.escape(self.component)}, applied at every token "
            f"(underlined: the token it was trained at) &nbsp; {legend}</p>"
        )
        body = "".join(self._row_html(row) for row in self.rows)
        return f"<div class='mw-tokens'>{head}<table>{body}</table></div>"

    def _row_html(self, row: dict[str, Any]) -> str:
        mark = "\u2713" if row["label"] == row["predicted"] else "\u2717"
        verdict = (
            f"{html.escape(row['label'])} \u2192 {html.escape(row['predicted'])} "
            f"{mark} ({row['scores'][row['read']]:.2f})"
        )
        high = html.escape(self.classes[1])
        spans = []
        for i, (tok, score) in enumerate(zip(row["tokens"], row["scores"], strict=True)):
            read = "border-bottom:2px solid currentColor;" if i == row["read"] else ""
            spans.append(
                f"<span class='mw-token' title='{html.escape(tok)}: P({high}) = {score:.3f}' "
                f"style='background-color:{_colour(score)};{read}"
                f"padding:1px 2px;margin:0 1px;border-radius:2px'>{html.escape(tok)}</span>"
            )
        return (
            f"<tr><td style='text-align:left;white-space:nowrap;padding-right:1em'>{verdict}</td>"
            f"<td style='text-align:left'>{''.join(spans)}</td></tr>"
        )


def token_scores(
    model: Model,
    cube: xr.Dataset,
    label: str,
    layer: int,
    component: str = "resid",
    k: int = 8,
    classes: Sequence[str] | None = None,
) -> TokenScores:
    """Fit a probe where the cube was read, then score every token of ``k`` test sentences.

    Parameters
    ----------
    model : the model the cube was extracted from (:func:`mw.load_model`).
    cube : an activation cube with ``label``, ``split`` and ``text`` along ``sample``.
    label : a two-class label of the cube.
    layer, component : the slice to probe (``resid``, ``attn`` or ``mlp``).
    k : how many test sentences to show.
    classes : the two class names; default the cube's task's, else ``0`` and ``1``.

    Returns
    -------
    A :class:`TokenScores`; it shows as coloured tokens in Jupyter.
    """
    if label not in cube.coords and label not in cube:
        raise TokenViewError(f"the cube has no label {label!r}; pass one of its labels")
    if component not in STREAMS:
        raise TokenViewError(f"the token view reads resid, attn or mlp, not {component!r}")
    if layer not in cube["layer"].values or component not in cube["component"].values:
        raise TokenViewError(
            f"the cube has no slice layer {layer} \u00b7 {component}; it has layers "
            f"{list(cube['layer'].values)}, components {list(cube['component'].values)}"
        )
    y = np.asarray(cube[label].values)
    values = np.unique(y)
    if values.size != 2:
        raise TokenViewError(
            f"the token view colours a two-class label; {label!r} has {values.size} classes"
        )
    split = np.asarray(cube["split"].values)
    acts = np.asarray(cube["act"].sel(layer=layer, component=component).values, dtype=float)
    train = split == "train"
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(acts[train], y[train] == values[1])
    names = tuple(classes) if classes is not None else _task_classes(cube, label, values)
    test = np.flatnonzero(split == "test")[:k]
    reads = cube["position"].values if "position" in cube.coords else None
    rows = []
    for i in test:
        text = str(cube["text"].values[i])
        ids, per_token = _token_activations(model, text, layer, component)
        scores = probe.predict_proba(per_token)[:, 1]
        read = int(reads[i]) % len(ids) if reads is not None else len(ids) - 1
        rows.append(
            dict(
                text=text,
                tokens=[model.tokenizer.decode([t]) for t in ids],
                scores=[float(s) for s in scores],
                read=read,
                label=names[int(y[i] == values[1])],
                predicted=names[int(scores[read] >= 0.5)],
            )
        )
    return TokenScores(label, int(layer), component, (names[0], names[1]), rows)


@torch.no_grad()
def _token_activations(
    model: Model, text: str, layer: int, component: str
) -> tuple[list[int], np.ndarray]:
    """One text's (token, d_model) activations at ``layer`` / ``component``, as the cube
    defines them (block output, or the sublayer's write into the residual stream)."""
    from mechwidgets.extract.extractor import _first

    inputs = model.tokenize([text])
    with model.nn.trace(**inputs) as tracer:
        if layer == -1:
            saved = nnsight.save(model.embeddings())
        else:
            site = {"resid": model.block, "attn": model.attn, "mlp": model.mlp}[component]
            saved = nnsight.save(_first(site(layer).output))
        tracer.stop()
    return inputs["input_ids"][0].tolist(), saved[0].float().cpu().numpy()


def _task_classes(cube: xr.Dataset, label: str, values: np.ndarray) -> tuple[str, ...]:
    """The class names of the built-in task the cube was made from, else the values."""
    from mechwidgets.data.catalog import get_task, list_tasks

    task = str(cube.attrs.get("task", ""))
    if task in list_tasks():
        try:  # as many samples as the cube holds: some tasks refuse small draws
            names = get_task(task, n=int(cube.sizes["sample"])).classes(label)
        except MechError:
            names = ()
        if len(names) > int(max(values)) and all(float(v).is_integer() for v in values):
            return tuple(names[int(v)] for v in values)
    return tuple(str(v) for v in values)


def _colour(score: float) -> str:
    """Blend from white to the class colour by the score's distance from 0.5."""
    target = HIGH if score >= 0.5 else LOW
    t = min(1.0, abs(score - 0.5) * 2)
    rgb = [round(255 + (c - 255) * t * 0.85) for c in target]
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"
