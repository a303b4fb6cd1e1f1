"""Activation and attribution patching over a grid of layer x component x position, heads
included, as registered actions.

For each cell, the base run takes the source run's activation there and the metric is
re-read: denoising (the default) patches clean activations into the corrupt run and asks
whether the cell suffices to restore the behaviour; noising patches corrupt activations
into the clean run and asks whether the cell is necessary. The two can disagree (a
previous-token head is necessary for induction, not sufficient), so the result names its
direction. The same grid is also estimated by attribution patching
(:mod:`mechwidgets.intervene.attribution`) and the result reports how well the two agree
(Pearson and Spearman over cells). The engine (sites, edits, the grid, pairs) is
:mod:`mechwidgets.intervene`; ``patch`` and ``attribution_patch`` are registered here, so
each runs from a YAML config, the ``mechinterp`` command and the ``%mechinterp`` magic,
and re-runs from its bundle. Neither reads a cube: the runner loads the model and builds
the clean/corrupt prompt pairs (:func:`mechwidgets.get_task_pairs`), and extracts nothing.

>>> pairs = mw.get_task_pairs("subject_number", n=64)
>>> res = mw.patch(model, clean=pairs, grid=("layer", "component", "position"))
>>> res.table.nlargest(5, "effect"), res.agreement
>>> mw.patch(model, clean=task_a, corrupt=task_b, direction="noise")
>>> run_spec(RunSpec.from_yaml("configs/patching_toy.yaml"))   # action: patch
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import pandas as pd
import xarray as xr

from mechwidgets.actions.base import ActionResult, ModelAction
from mechwidgets.core.components import INTERVENED, LayerComponent, table_components
from mechwidgets.core.params import GRID_AXES, AttributionParams, PatchParams
from mechwidgets.core.registry import Needs, check_params
from mechwidgets.data.catalog import PromptPairs
from mechwidgets.data.tasks import Task
from mechwidgets.intervene.attribution import attribution_moves
from mechwidgets.intervene.edits import run_cells
from mechwidgets.intervene.grid import (
    PatchPlan,
    agreement,
    effect_stats,
    grid_table,
    plan_patching,
)
from mechwidgets.intervene.metrics import describe
from mechwidgets.intervene.pairs import Direction
from mechwidgets.intervene.sources import Source
from mechwidgets.viz.charts import heatmap

if TYPE_CHECKING:
    from mechwidgets.models.loading import Model

#: how a patching result's effects were found: by patching, or estimated from gradients
Method = Literal["activation", "attribution"]

#: what the effect means in each direction
MEANING = {"denoise": "restored", "noise": "destroyed"}


def patch(
    model: Model,
    clean: Task | PromptPairs | Sequence[str],
    corrupt: Task | Sequence[str] | None = None,
    *,
    behavior: Any = None,
    grid: Sequence[str] = GRID_AXES,
    components: str | Sequence[str] = INTERVENED,
    direction: Direction = "denoise",
    attribution: bool = True,
    n: int | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> PatchResult:
    """Patch every cell of a grid from the source run into the base run.

    Parameters
    ----------
    model : from :func:`mechwidgets.load_model`.
    clean : a Task, PromptPairs (its corrupt prompts are used when ``corrupt`` is None)
        or a list of texts.
    corrupt : one prompt per clean prompt with the same number of tokens (a Task or texts).
    behavior : the metric (:mod:`mechwidgets.intervene.metrics`): a logit metric (needs the model's
        output head: a decoder's language-model head, BERT's masked-LM head), or a probe
        or hidden-state metric (any model, encoders without a head included); default
        the clean task's own, or the clean-minus-corrupt answer logit difference for
        PromptPairs.
    grid : ``("layer", "component", "position")`` patches one token position at a time;
        ``("layer", "component")`` patches every position at once.
    components : kinds (``resid``, ``attn``, ``mlp``, ``head``, ``neuron``) or selectors
        such as ``"head:1.*"`` or ``"neuron:0.17"``.
    direction : ``"denoise"`` (clean into corrupt: sufficiency) or ``"noise"`` (corrupt
        into clean: necessity).
    attribution : also estimate the grid by attribution patching and report agreement.
    n : use the first ``n`` pairs.
    resamples, level, seed : bootstrap over pairs for the intervals.

    Returns
    -------
    PatchResult: one row per cell with the normalised effect and its interval.

    Examples
    --------
    >>> res = mw.patch(model, clean=mw.get_task_pairs("subject_number", n=64))
    >>> res.agreement["pearson"]
    """
    given = dict(behavior=behavior, grid=grid, components=components, direction=direction)
    given |= dict(n=n, corrupt=corrupt, resamples=resamples, level=level)
    return _patch_grid("activation", model, clean, given | dict(attribution=attribution), seed)


def attribution_patch(
    model: Model,
    clean: Task | PromptPairs | Sequence[str],
    corrupt: Task | Sequence[str] | None = None,
    *,
    behavior: Any = None,
    grid: Sequence[str] = GRID_AXES,
    components: str | Sequence[str] = INTERVENED,
    direction: Direction = "denoise",
    n: int | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> PatchResult:
    """Estimate every patching effect of a grid from one forward and one backward pass.

    Parameters
    ----------
    model : from :func:`mechwidgets.load_model`.
    clean, corrupt, behavior, grid, components, direction, n : as
        :func:`patch`.
    resamples, level, seed : bootstrap over pairs for the intervals.

    Returns
    -------
    PatchResult with ``method="attribution"``: ``effect`` is the estimated share of the
    clean-corrupt gap each cell moves.

    Examples
    --------
    >>> mw.attribution_patch(model, clean=mw.get_task_pairs("subject_number", n=64))
    """
    given = dict(behavior=behavior, grid=grid, components=components, direction=direction)
    given |= dict(n=n, corrupt=corrupt, resamples=resamples, level=level)
    return _patch_grid("attribution", model, clean, given, seed)


def _patch_grid(
    method: Method,
    model: Model,
    clean: Task | PromptPairs | Sequence[str],
    given: dict[str, Any],
    seed: int,
) -> PatchResult:
    """:func:`patch` (``method="activation"``, with the attribution estimate beside it
    unless ``attribution=False``) or :func:`attribution_patch`, their other parameters
    ``given`` checked first against the action's Params (a one-line SpecError)."""
    action = "patch" if method == "activation" else "attribution_patch"
    p = cast(AttributionParams, check_params(action, given))
    attribution = p.attribution if isinstance(p, PatchParams) else True
    plan = plan_patching(
        model, clean, p.corrupt, p.behavior, p.grid, p.components, p.direction, p.n,
        gradient=attribution,
    )  # fmt: skip
    source, scorer = Source(plan.source), plan.pairs.scorer
    if method == "attribution":
        moved = attribution_moves(model, plan.base, source, plan.cells, scorer)
        return patch_result(model, plan, method, moved, None, p.resamples, p.level, seed)
    values, _ = run_cells(model, plan.base, plan.cells, source, [scorer])
    moved = values[0].cpu().numpy() - plan.base_values
    beside = (
        attribution_moves(model, plan.base, source, plan.cells, scorer) if attribution else None
    )
    return patch_result(model, plan, method, moved, beside, p.resamples, p.level, seed)


@dataclass(repr=False, frozen=True)
class PatchResult(ActionResult):
    """The effect of patching each cell of a grid, with its interval, and how methods agree.

    ``table`` has one row per cell: ``layer``, ``component`` (``resid``/``attn``/``mlp``/
    ``head.H``), ``position`` (-1: every position) and ``token`` (of the first clean
    prompt), ``intervention`` (e.g. ``patch:denoise``), ``effect`` (share of the clean-
    corrupt gap moved, see :data:`MEANING`) with ``ci_low``/``ci_high``, ``delta`` (raw
    metric change) and, when both methods ran, ``attribution`` (the first-order estimate
    of the same effect). ``agreement`` holds their Pearson and Spearman correlation.
    """

    direction: str = "denoise"
    method: str = "activation"
    metric: str = ""
    clean_value: float = float("nan")
    corrupt_value: float = float("nan")
    agreement: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Headline numbers: metric values, the strongest cell, method agreement."""
        effects = self.table["effect"].abs() if len(self.table) else None
        # all NaN when the clean and corrupt metric coincide: there is no gap to restore
        best = None if effects is None or effects.isna().all() else self.table.loc[effects.idxmax()]
        return {
            "method": self.method,
            "direction": self.direction,
            "effect_means": MEANING[self.direction],
            "metric": self.metric,
            "clean": self.clean_value,
            "corrupt": self.corrupt_value,
            "cells": len(self.table),
            "best": None if best is None else _cell_name(best),
            "best_effect": None if best is None else float(best["effect"]),
            "agreement": dict(self.agreement),
        }

    def verdict(self) -> str:
        """One line: the strongest cell and, when compared, attribution's agreement."""
        s = self.summary()
        head = (
            f"{self.method} patching ({self.direction}, {self.metric}: clean "
            f"{self.clean_value:.2f}, corrupt {self.corrupt_value:.2f})"
        )
        if s["best"] is None:
            return f"{head}: no cells" if not len(self.table) else f"{head}: no gap to restore"
        line = f"{head}: {s['best']} {MEANING[self.direction]} {s['best_effect']:.2f} of the gap"
        if self.agreement:
            line += (
                f"; attribution vs activation r={self.agreement['pearson']:.2f} "
                f"(Spearman {self.agreement['spearman']:.2f})"
            )
        return line

    def chart(self) -> Any:
        """Effect per layer x component (x position) for the residual, attention and MLP."""
        return self._heatmap(~self._heads(), "streams")

    def charts(self) -> dict[str, Any]:
        """The streams heatmap; the heads heatmap when heads were patched; attribution
        against activation patching per cell when both ran."""
        out = {"main": self.chart()}
        heads = self._heads()
        if heads.any():
            out["heads"] = self._heatmap(heads, "heads")
        if self.agreement:
            from mechwidgets.viz.charts import method_agreement_chart

            out["agreement"] = method_agreement_chart(
                self.table,
                x="effect",
                y="attribution",
                title=f"attribution vs activation, r={self.agreement['pearson']:.2f}",
            )
        return out

    def _heads(self) -> pd.Series:
        """Which rows are attention heads."""
        kinds = [c.kind for c in table_components(self.table)]
        return pd.Series([k == "head" for k in kinds], self.table.index, dtype=bool)

    def _heatmap(self, rows: pd.Series, what: str) -> Any:
        df = self.table[rows].copy()
        comps = table_components(df)
        title = f"{self.method} patching ({self.direction}): share {MEANING[self.direction]}"
        if (df["position"] >= 0).any():
            df["where"] = df["position"].astype(str) + " " + df["token"]
            df["site"] = [str(c) for c in comps]
            return heatmap(df, x="where", y="site", value="effect", title=title)
        if what == "heads":
            df["head"] = [c.head for c in comps]
            return heatmap(df, x="head", y="layer", value="effect", title=title)
        return heatmap(df, x="component", y="layer", value="effect", title=title)


def _cell_name(row: pd.Series) -> str:
    where = "all positions" if row["position"] < 0 else f"pos {row['position']} ({row['token']})"
    return f"{LayerComponent.from_name(row['component'], row['layer'])} @ {where}"


def patch_result(
    model: Model,
    plan: PatchPlan,
    method: Method,
    moved: np.ndarray,
    attribution: np.ndarray | None,
    resamples: int,
    level: float,
    seed: int,
) -> PatchResult:
    """Assemble a PatchResult from per-pair metric changes.

    Parameters
    ----------
    method, moved : how the result's own (cells, n) per-pair change of the metric was
        found, and that change.
    attribution : with activation patching, attribution patching's estimate of the same
        change to stand beside it (and how well the two agree); None when it did not run.
    """
    pairs, cells, direction = plan.pairs, plan.cells, plan.direction
    base, source = plan.base_values, plan.source_values
    gap = source - base
    stats = effect_stats(moved, gap, resamples, level, seed)
    label = "patch" if method == "activation" else method
    columns: dict[str, Any] = {
        "intervention": f"{label}:{direction}",
        "effect": stats.effect,
        "ci_low": stats.ci_low,
        "ci_high": stats.ci_high,
        "delta": stats.delta,
    }
    agree: dict[str, float] = {}
    if attribution is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            columns["attribution"] = attribution.mean(1) / gap.mean()
        columns["attribution_delta"] = attribution.mean(1)
        agree = agreement(stats.effect, columns["attribution"])
    table = grid_table(model, cells, pairs, columns)
    index = list(GRID_AXES)
    data = xr.Dataset.from_dataframe(table.drop(columns=["intervention"]).set_index(index))
    clean, corrupt = (base, source) if direction == "noise" else (source, base)
    data.attrs.update(direction=direction, method=method, metric=describe(pairs.metric))
    return PatchResult(
        action="patch" if method == "activation" else "attribution_patch",
        data=data,
        table=table,
        params={"direction": direction, "method": method, "n": len(pairs.clean)},
        direction=direction,
        method=method,
        metric=describe(pairs.metric),
        clean_value=float(clean.mean()),
        corrupt_value=float(corrupt.mean()),
        agreement=agree,
    )


class Patch(ModelAction):
    """Activation patching over a grid, with attribution patching's agreement beside it."""

    data_parameter = "clean"
    takes_components = True

    def needs(self, params: Mapping[str, Any]) -> Needs:
        """A model and prompt pairs; no cube."""
        return Needs(cube=False, pairs=True)


class AttributionPatch(Patch):
    """Every patching effect of a grid estimated from one forward and one backward pass."""
