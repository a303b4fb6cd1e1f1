"""The patching grid over clean/corrupt pairs, and the statistics of its effects.

Activation patching (:mod:`mechwidgets.actions.patching`) and attribution patching
(:mod:`.attribution`) share everything but the estimate: the pairs (:mod:`.pairs`), the
grid of cells (layer x component x position, heads included), the two unpatched runs
(:func:`plan_patching`), the normalised effect with a bootstrap interval over pairs
(:func:`effect_stats`) and the table of cells (:func:`grid_table`).
Denoising runs the corrupt prompts with clean activations patched in (is the component
sufficient to restore the behaviour?); noising runs the clean prompts with corrupt
activations (is it necessary?). The effect is the share of the clean-corrupt gap the
patch moves: restored for denoising, destroyed for noising.

>>> plan = plan_patching(model, mw.get_task_pairs("subject_number", n=64), None, None,
...                      GRID_AXES, ["resid", "head"], "denoise", None)
>>> effect_stats(moved, plan.source_values - plan.base_values, 1000, 0.95, 0).effect
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.stats import pearsonr, spearmanr

from mechwidgets.analysis.statistics import bootstrap_weights, percentile_interval
from mechwidgets.core.errors import SpecError
from mechwidgets.core.params import GRID_AXES
from mechwidgets.data.catalog import PromptPairs
from mechwidgets.data.tasks import Task
from mechwidgets.intervene.edits import Cell, capture
from mechwidgets.intervene.metrics import describe, differentiable
from mechwidgets.intervene.pairs import Direction, PairedPrompts, prepare_pairs
from mechwidgets.intervene.prompts import Prompts
from mechwidgets.intervene.sites import components_of

if TYPE_CHECKING:
    from mechwidgets.models.loading import Model


@dataclass(frozen=True)
class Effects:
    """Per cell, ``(cells,)`` each: ``effect``, the share of the source-minus-base gap the
    patch moves (mean moved / mean gap, a ratio of means: per-pair ratios explode where a
    pair's gap is near 0), its bootstrap interval ``ci_low``/``ci_high`` over pairs, and
    ``delta``, the mean change of the metric."""

    effect: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    delta: np.ndarray


@dataclass(frozen=True)
class PatchPlan:
    """What a patching run needs: pairs, the run patched into, the source, the cells.

    ``source`` are the prompts patched from (run beside the base copies in each edit pass);
    ``base_values``/``source_values`` are the metric (n,) of the two unpatched runs.
    """

    pairs: PairedPrompts
    direction: Direction
    base: Prompts
    cells: list[Cell]
    source: Prompts
    base_values: np.ndarray
    source_values: np.ndarray


def plan_patching(
    model: Model,
    clean: Task | PromptPairs | Sequence[str],
    corrupt: Task | Sequence[str] | None,
    behavior: Any,
    grid: Sequence[str],
    components: str | Sequence[str],
    direction: Direction,
    n: int | None,
    gradient: bool = False,
) -> PatchPlan:
    """Check the inputs, build the grid and run the two unpatched passes.

    With ``gradient`` (attribution patching) the metric must be differentiable.
    """
    by_position = check_grid(grid)
    pairs = prepare_pairs(model, clean, corrupt, behavior, n)
    if gradient and not differentiable(pairs.metric):
        raise SpecError(
            f"{describe(pairs.metric)} is a step function, so attribution patching cannot "
            "use its gradient; score the probe's margin or logit, or pass attribution=False"
        )
    base, source = pairs.base_and_source(direction)
    cells = grid_cells(model, components, pairs.clean.width, by_position)
    _, source_values = capture(model, source, [], [pairs.scorer])
    _, base_values = capture(model, base, [], [pairs.scorer])
    return PatchPlan(
        pairs, direction, base, cells, source,
        base_values[0].cpu().numpy(), source_values[0].cpu().numpy(),
    )  # fmt: skip


def grid_cells(
    model: Model,
    components: str | Sequence[str],
    width: int,
    by_position: bool,
) -> list[Cell]:
    """Every cell of the grid: each component at each padded position, or at all at once.

    A bare ``"resid"`` includes the embeddings as layer -1.
    """
    comps = components_of(model, components, embed=True)
    if not by_position:
        return [Cell(c) for c in comps]
    return [Cell(c, p) for c in comps for p in range(width)]


def check_grid(grid: Sequence[str]) -> bool:
    """Validate the grid axes; True when positions are patched one at a time."""
    axes = [grid] if isinstance(grid, str) else list(grid)
    unknown = [a for a in axes if a not in GRID_AXES]
    if unknown or not {"layer", "component"} <= set(axes):
        raise SpecError(
            f"bad grid {tuple(axes)}: use ('layer', 'component') or "
            "('layer', 'component', 'position')"
        )
    return "position" in axes


def effect_stats(
    moved: np.ndarray, gap: np.ndarray, resamples: int, level: float, seed: int
) -> Effects:
    """Normalised effect per cell with a percentile bootstrap interval over pairs.

    Parameters
    ----------
    moved : (cells, n) per-pair change of the metric (patched - base, or its estimate).
    gap : (n,) source run minus base run.
    """
    weights = bootstrap_weights(moved.shape[1], resamples, np.random.default_rng([seed, 11]))
    with np.errstate(divide="ignore", invalid="ignore"):
        effect = moved.mean(1) / gap.mean()
        draws = (weights @ moved.T) / (weights @ gap)[:, None]
    low, high = percentile_interval(draws, level, axis=0)
    return Effects(effect, low, high, moved.mean(1))


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation of two estimates over the same cells."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "cells": int(ok.sum())}
    return {
        "pearson": float(pearsonr(a[ok], b[ok]).statistic),
        "spearman": float(spearmanr(a[ok], b[ok]).statistic),
        "cells": int(ok.sum()),
    }


def grid_table(
    model: Model, cells: Sequence[Cell], pairs: PairedPrompts, columns: dict[str, np.ndarray]
) -> pd.DataFrame:
    """One row per cell: layer, component, position and its token, then ``columns``."""
    ids = pairs.clean.inputs["input_ids"][0].tolist()
    tokens = model.tokenizer.convert_ids_to_tokens(ids)
    rows = {
        "layer": [c.component.layer for c in cells],
        "component": [c.component.name for c in cells],
        "position": [-1 if c.position is None else int(c.position) for c in cells],
        "token": ["*" if c.position is None else str(tokens[int(c.position)]) for c in cells],
    }
    return pd.DataFrame({**rows, **columns})
