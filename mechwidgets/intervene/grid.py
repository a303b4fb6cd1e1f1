"""Clean/corrupt prompt pairs, the patching grid over them, and the result of a patching run.

Activation patching (:mod:`.patching`) and attribution patching (:mod:`.attribution`)
share everything but the estimate: the pairs (equal token counts, checked here), the grid
of cells (layer x component x position, heads included), the normalised effect with a
bootstrap interval over pairs, and the :class:`PatchResult` that tables and charts it.
Denoising runs the corrupt prompts with clean activations patched in (is the component
sufficient to restore the behaviour?); noising runs the clean prompts with corrupt
activations (is it necessary?). The effect is the share of the clean-corrupt gap the
patch moves: restored for denoising, destroyed for noising.

>>> pairs = prepare_pairs(model, mw.get_task_pairs("subject_number", n=64), None, None)
>>> cells = grid_cells(model, ["resid", "attn", "mlp", "head"], pairs.clean.width, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import xarray as xr
from scipy.stats import pearsonr, spearmanr

from mechwidgets.actions.base import ActionResult
from mechwidgets.analysis.statistics import bootstrap_weights, percentile_interval
from mechwidgets.core.components import LayerComponent, component_key, expand_selectors
from mechwidgets.core.errors import SpecError, TaskError
from mechwidgets.data.catalog import PromptPairs
from mechwidgets.data.tasks import Task
from mechwidgets.intervene.edits import (
    EMBED,
    Cell,
    capture,
    check_components,
)
from mechwidgets.intervene.metrics import Prompts, Scorer, bind, describe, differentiable
from mechwidgets.viz.charts import heatmap

Direction = Literal["denoise", "noise"]
DIRECTIONS = ("denoise", "noise")
GRID_AXES = ("layer", "component", "position")
#: what the effect means in each direction
MEANING = {"denoise": "restored", "noise": "destroyed"}


@dataclass(frozen=True)
class PairedPrompts:
    """Clean and corrupt prompts of equal token counts, and the metric bound to the clean ones.

    ``scorer`` scores any run (clean, corrupt or patched) against the clean prompts'
    answers and read tokens, which the pairs share.
    """

    clean: Prompts
    corrupt: Prompts
    metric: Any
    scorer: Scorer

    def base_and_source(self, direction: Direction) -> tuple[Prompts, Prompts]:
        """(prompts that run, prompts whose activations are patched in) for a direction."""
        if direction not in DIRECTIONS:
            raise SpecError(f"unknown direction '{direction}': choose denoise or noise")
        return (self.corrupt, self.clean) if direction == "denoise" else (self.clean, self.corrupt)


def _texts_positions(data: Any, what: str) -> tuple[list[str], np.ndarray | None, Any]:
    """Texts, read positions and default behaviour of a Task, PromptPairs' clean side or texts."""
    if isinstance(data, PromptPairs):
        data = data.to_task()
    if isinstance(data, Task):
        return list(data.texts), data.positions, data.behavior
    if isinstance(data, str) or not isinstance(data, Sequence):
        raise TaskError(
            f"'{what}' must be a Task, PromptPairs or a list of texts, got {type(data).__name__}"
        )
    return list(data), None, None


def prepare_pairs(
    model: Any,
    clean: Task | PromptPairs | Sequence[str],
    corrupt: Task | Sequence[str] | None,
    behavior: Any,
    n: int | None = None,
) -> PairedPrompts:
    """Tokenize and check clean/corrupt pairs; choose the metric.

    Parameters
    ----------
    clean : a Task, PromptPairs (whose corrupt side is used when ``corrupt`` is None) or
        a list of texts.
    corrupt : one corrupt prompt per clean one, with the same number of tokens.
    behavior : the metric; default the clean Task's ``behavior``, or for PromptPairs the
        logit difference between the clean and the corrupt answer.
    n : use only the first ``n`` pairs.
    """
    texts, positions, default = _texts_positions(clean, "clean")
    if corrupt is None:
        if not isinstance(clean, PromptPairs):
            raise TaskError("give corrupt prompts (one per clean prompt), or pass PromptPairs")
        corrupt = clean.corrupt
    bad_texts, _, _ = _texts_positions(corrupt, "corrupt")
    if len(bad_texts) != len(texts):
        raise TaskError(
            f"{len(texts)} clean prompts but {len(bad_texts)} corrupt ones; "
            "give one corrupt prompt per clean prompt"
        )
    metric = behavior if behavior is not None else default
    if metric is None:
        raise SpecError("no behaviour metric: pass behavior=mw.metrics.logit_diff(...) or similar")
    total = len(texts)
    keep = total if n is None else min(int(n), total)
    if list(texts[:keep]) == list(bad_texts[:keep]):
        raise TaskError(
            f"the clean and corrupt prompts are the same in all {keep} pairs, so patching "
            "cannot move the metric; give corrupt prompts that differ (e.g. the other number)"
        )
    if keep < 2:
        raise TaskError(f"patching needs at least 2 prompt pairs, got {keep}")
    rows = np.arange(keep)
    pos = None if positions is None else np.asarray(positions)[rows]
    clean_p = Prompts.build(model, texts[:keep], pos, rows, total)
    corrupt_p = Prompts.build(model, bad_texts[:keep], pos, rows, total)
    check_lengths(clean_p, corrupt_p)
    return PairedPrompts(clean_p, corrupt_p, metric, bind(metric, model, clean_p))


def check_lengths(clean: Prompts, corrupt: Prompts) -> None:
    """Raise a one-line TaskError unless every pair has the same token count and layout."""
    same = (clean.length == corrupt.length) & (clean.start == corrupt.start)
    if not bool(same.all()):
        i = int(torch.nonzero(~same)[0, 0])
        raise TaskError(
            f"pair {i} has {int(clean.length[i])} clean and {int(corrupt.length[i])} corrupt "
            f"tokens ({clean.texts[i]!r} vs {corrupt.texts[i]!r}); patching needs equal counts"
        )


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
    model: Any,
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


def components_of(
    model: Any, components: str | Sequence[str], embed: bool = False
) -> list[LayerComponent]:
    """Expand ``["resid", "attn", "mlp", "head"]`` or selector strings against the model.

    With ``embed``, a bare ``"resid"`` also names the embeddings (layer -1, the residual
    stream before block 0).
    """
    items = [components] if isinstance(components, str) else list(components)
    selectors = [item if ":" in item else f"{item}:all" for item in items]
    comps = expand_selectors(selectors, model.shape)
    if embed and any(item in ("resid", "residual") for item in items):
        comps.insert(0, LayerComponent("residual", EMBED))
    check_components(model, comps)
    return sorted(
        comps, key=lambda c: (component_key(c.name)[0], c.layer, c.head or 0, c.neuron or 0)
    )


def grid_cells(
    model: Any,
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
) -> dict[str, np.ndarray]:
    """Normalised effect per cell with a percentile bootstrap interval over pairs.

    Parameters
    ----------
    moved : (cells, n) per-pair change of the metric (patched - base, or its estimate).
    gap : (n,) source run minus base run.

    Returns
    -------
    ``effect`` (mean moved / mean gap, a ratio of means: per-pair ratios explode where a
    pair's gap is near 0), ``ci_low``, ``ci_high`` and ``delta`` (mean moved), each (cells,).
    """
    weights = bootstrap_weights(moved.shape[1], resamples, np.random.default_rng([seed, 11]))
    with np.errstate(divide="ignore", invalid="ignore"):
        effect = moved.mean(1) / gap.mean()
        draws = (weights @ moved.T) / (weights @ gap)[:, None]
    low, high = percentile_interval(draws, level, axis=0)
    return {"effect": effect, "ci_low": low, "ci_high": high, "delta": moved.mean(1)}


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
    model: Any, cells: Sequence[Cell], pairs: PairedPrompts, columns: dict[str, np.ndarray]
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


@dataclass(repr=False)
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
        return self._heatmap(~self.table["component"].str.startswith("head."), "streams")

    def charts(self) -> dict[str, Any]:
        """The streams heatmap; the heads heatmap when heads were patched; attribution
        against activation patching per cell when both ran."""
        out = {"main": self.chart()}
        heads = self.table["component"].str.startswith("head.")
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

    def _heatmap(self, rows: pd.Series, what: str) -> Any:
        df = self.table[rows].copy()
        title = f"{self.method} patching ({self.direction}): share {MEANING[self.direction]}"
        if (df["position"] >= 0).any():
            df["where"] = df["position"].astype(str) + " " + df["token"]
            df["site"] = "L" + df["layer"].astype(str) + " " + df["component"]
            return heatmap(df, x="where", y="site", value="effect", title=title)
        if what == "heads":
            df["head"] = df["component"].str.removeprefix("head.").astype(int)
            return heatmap(df, x="head", y="layer", value="effect", title=title)
        return heatmap(df, x="component", y="layer", value="effect", title=title)


def _cell_name(row: pd.Series) -> str:
    where = "all positions" if row["position"] < 0 else f"pos {row['position']} ({row['token']})"
    return f"L{row['layer']} {row['component']} @ {where}"


def patch_result(
    model: Any,
    plan: PatchPlan,
    values: dict[str, np.ndarray],
    resamples: int,
    level: float,
    seed: int,
) -> PatchResult:
    """Assemble a PatchResult from per-pair metric changes.

    Parameters
    ----------
    values : method name (``activation``, ``attribution``) -> (cells, n) per-pair change of
        the metric; the first is the result's own estimate.
    """
    pairs, cells, direction = plan.pairs, plan.cells, plan.direction
    base, source = plan.base_values, plan.source_values
    method = next(iter(values))
    gap = source - base
    stats = effect_stats(values[method], gap, resamples, level, seed)
    label = "patch" if method == "activation" else method
    columns: dict[str, Any] = {"intervention": f"{label}:{direction}", **stats}
    agree: dict[str, float] = {}
    if "attribution" in values and method != "attribution":
        with np.errstate(divide="ignore", invalid="ignore"):
            columns["attribution"] = values["attribution"].mean(1) / gap.mean()
        columns["attribution_delta"] = values["attribution"].mean(1)
        agree = agreement(stats["effect"], columns["attribution"])
    table = grid_table(model, cells, pairs, columns)
    index = ["layer", "component", "position"]
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
