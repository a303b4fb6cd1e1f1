"""Attention patterns per head and sample, with each head's previous-token and induction
scores: the view below the layer for a story told by heads (e.g. ``toy-induction``).

:func:`attention_patterns` runs the model on a few texts and keeps every head's
query x key weights. Two scores summarise each head on each sample, the standard ones for
induction circuits (Olsson et al. 2022):

- previous-token: the mean attention from position ``q`` to ``q - 1`` (over ``q >= 1``);
- induction: over the positions ``q`` whose token occurred before (last at ``j < q``),
  the mean attention to ``j + 1``, the token that followed it then; NaN on a sample
  with no repeated token.

Its chart is a grid of heatmaps, one per head, with a menu choosing the sample; in
Jupyter it shows as an interactive :class:`~mechwidgets.viz.chart_widget.ChartView`.

>>> att = mw.viz.attention_patterns(model, task.texts[:3])
>>> att.scores.groupby(["layer", "head"])[["previous_token", "induction"]].mean()
>>> att            # heatmaps per head, hover for the tokens and the weight
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd

from mechwidgets.core.components import LayerComponent
from mechwidgets.core.errors import MechError

if TYPE_CHECKING:  # annotations only: altair takes seconds to import (drawing does it)
    import altair as alt
    from transformers import PreTrainedModel

    from mechwidgets.models.loading import Model

#: token ids in the chart's lookup table are sample * _ID + position
_ID = 100_000


class AttentionError(MechError, ValueError):
    """Attention patterns were asked for in a way that cannot work."""


@dataclass(repr=False)
class AttentionPatterns:
    """Attention weights of some texts, per layer and head, with the heads' scores.

    ``tokens[s]`` are sample ``s``'s tokens (as the tokenizer splits them, decoded);
    ``weights[s]`` is its (layer, head, query, key) array; ``scores`` has one row per
    (sample, layer, head) with ``previous_token`` and ``induction``.
    """

    texts: list[str]
    tokens: list[list[str]]
    weights: list[np.ndarray]
    scores: pd.DataFrame

    @property
    def head_scores(self) -> pd.DataFrame:
        """Each head's scores averaged over the samples, one row per (layer, head)."""
        cols = ["previous_token", "induction"]
        return self.scores.groupby(["layer", "head"], as_index=False)[cols].mean()

    def chart(
        self, heads: Sequence[tuple[int, int]] | None = None, cell: int = 11, columns: int = 4
    ) -> alt.FacetChart:
        """One query x key heatmap per head; a menu picks the sample.

        Parameters
        ----------
        heads : (layer, head) pairs to draw; default every head.
        cell : pixels per token.
        columns : heads per row.
        """
        import altair as alt

        n_layers, n_heads = self.weights[0].shape[:2]
        chosen = (
            list(heads)
            if heads is not None
            else [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
        )
        bad = [(la, h) for la, h in chosen if not (0 <= la < n_layers and 0 <= h < n_heads)]
        if bad:
            raise AttentionError(
                f"no head(s) {bad}: layers are 0..{n_layers - 1}, heads 0..{n_heads - 1}"
            )
        means = self.head_scores.set_index(["layer", "head"])
        titles = [
            f"{LayerComponent('head', layer, head=head)}  "
            f"prev {means.loc[(layer, head), 'previous_token']:.2f} · "
            f"induction {_fmt(means.loc[(layer, head), 'induction'])}"
            for layer, head in chosen
        ]
        # numbers only per cell (sample, head index, query, key, weight); token names come
        # from a small lookup table: a chart of a few samples stays a few hundred kB smaller
        cells, names = [], []
        for s, (toks, w) in enumerate(zip(self.tokens, self.weights, strict=True)):
            names += [{"id": s * _ID + i, "name": f"{i:02d} {t}"} for i, t in enumerate(toks)]
            q, k = np.tril_indices(len(toks))
            for h, (layer, head) in enumerate(chosen):
                cells.append(
                    pd.DataFrame(
                        {"s": s, "h": h, "q": s * _ID + q, "k": s * _ID + k,
                         "w": w[layer, head, q, k].astype(float).round(3)}
                    )
                )  # fmt: skip
        df = pd.concat(cells, ignore_index=True)
        lookup = alt.LookupData(alt.InlineData(values=names), key="id", fields=["name"])
        longest = max(len(t) for t in self.tokens)
        sample = alt.param(
            name="sample",
            value=0,
            bind=alt.binding_select(
                options=list(range(len(self.texts))),
                labels=[_short(t) for t in self.texts],
                name="sample ",
            ),
        )
        heat = (
            alt.Chart()
            .transform_filter(alt.datum.s == sample)
            .transform_lookup(lookup="q", from_=lookup, as_=["query"])
            .transform_lookup(lookup="k", from_=lookup, as_=["key"])
            .mark_rect()
            .encode(
                # vertical key labels at the query labels' size: one per 11 px column, none
                # overlapping (slanted ones ran into each other). No axis titles and no
                # legend: the chart's title names the axes and the shade once, so four
                # panels of 16 tokens fit a notebook's width (the legend pushed it to a
                # scrollbar)
                x=alt.X("key:O", title=None, axis=alt.Axis(labelAngle=-90, labelFontSize=9)),
                y=alt.Y("query:O", title=None, axis=alt.Axis(labelFontSize=9)),
                color=alt.Color("w:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]), legend=None),
                tooltip=["query:N", "key:N", alt.Tooltip("w:Q", format=".3f", title="weight")],
            )
            .properties(width=cell * longest, height=cell * longest)
        )
        header = alt.Header(labelExpr=f"{json.dumps(titles)}[datum.value]", labelFontSize=11)
        return (
            alt.layer(heat, data=df)
            .facet(facet=alt.Facet("h:O", header=header, title=None), columns=columns)
            .add_params(sample)
            .resolve_scale(x="independent", y="independent")
            .properties(
                title="attention per head: rows are queries, columns the keys they attend to "
                "(darker: more weight, 0-1)"
            )
        )

    def __repr__(self) -> str:
        table = self.head_scores.round(2).to_string(index=False)
        return f"AttentionPatterns({len(self.texts)} samples)\n{table}"

    def _ipython_display_(self) -> None:
        from IPython.display import display

        from mechwidgets.viz.chart_widget import ChartView

        display(ChartView(self.chart(), title="attention per head"))


def attention_patterns(model: Model, texts: Sequence[str]) -> AttentionPatterns:
    """Every head's attention on ``texts``, one text at a time (no padding).

    Parameters
    ----------
    model : a model from :func:`mw.load_model`.
    texts : a few texts (each becomes one sample of the view).

    Returns
    -------
    An :class:`AttentionPatterns` with the weights and each head's scores per sample.
    """
    from mechwidgets.models.zoo.evaluate import attention_patterns as hf_attention

    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise AttentionError("give at least one text to show attention on")
    tokens, weights, rows = [], [], []
    for s, text in enumerate(texts):
        ids = model.tokenize([text])["input_ids"].cpu()
        # eager attention, one text: the weights HF returns, no padding to mask
        pattern = hf_attention(cast("PreTrainedModel", model.hf), ids)[:, 0]  # layer, head, q, k
        id_list = ids[0].tolist()
        tokens.append([model.tokenizer.decode([i]) for i in id_list])
        weights.append(pattern)
        prev, ind = head_scores(id_list, pattern)
        for layer in range(pattern.shape[0]):
            for head in range(pattern.shape[1]):
                rows.append(
                    dict(
                        sample=s,
                        layer=layer,
                        head=head,
                        previous_token=float(prev[layer, head]),
                        induction=float(ind[layer, head]),
                    )
                )
    return AttentionPatterns(texts, tokens, weights, pd.DataFrame(rows))


def head_scores(ids: Sequence[int], pattern: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Previous-token and induction scores of every head on one sample.

    Parameters
    ----------
    ids : the sample's token ids.
    pattern : its attention, (layer, head, query, key).

    Returns
    -------
    Two (layer, head) arrays; induction is NaN when no token repeats.
    """
    n = len(ids)
    if pattern.shape[-2:] != (n, n):
        raise AttentionError(f"pattern is {pattern.shape[-2:]} for {n} tokens")
    q = np.arange(1, n)
    prev = pattern[..., q, q - 1].mean(-1) if n > 1 else np.full(pattern.shape[:2], np.nan)
    last: dict[int, int] = {}
    pairs = []
    for i, token in enumerate(ids):
        if token in last:
            pairs.append((i, last[token] + 1))
        last[token] = i
    if not pairs:
        return prev, np.full(pattern.shape[:2], np.nan)
    qs, ks = (np.array(v) for v in zip(*pairs, strict=True))
    return prev, pattern[..., qs, ks].mean(-1)


def _fmt(value: float) -> str:
    return "—" if not np.isfinite(value) else f"{value:.2f}"


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"
