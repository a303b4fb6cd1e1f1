"""compare: does feature A emerge before feature B?

Probes two or more labels on the same slices with one protocol, then reads each layer
curve for where it first reaches a threshold (onset), where it peaks and its area, and
tests the differences with a paired bootstrap over test items and seeds (every label is
scored on the same resampled items in each draw).

>>> res = mw.compare(cube, labels=["subject_number", "tense"], seeds=5)
>>> res.summary()["earliest"], res.summary()["tests"][0]["onset_p_adj"]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import numpy as np
import xarray as xr
from scipy.integrate import trapezoid

from mechwidgets.actions.base import ResultAction, RunContext, run_action
from mechwidgets.actions.detect import ProbePlan, ProbeResult
from mechwidgets.analysis.statistics import adjust_pvalues, bootstrap_pvalue, percentile_interval
from mechwidgets.core.errors import SpecError
from mechwidgets.core.registry import register_action
from mechwidgets.probes.sweep import (
    DEFAULT_CONTROLS,
    pooled_boot,
    run_protocol,
)


def curve_points(
    scores: np.ndarray, layers: np.ndarray, threshold: np.ndarray
) -> dict[str, np.ndarray]:
    """Onset, peak and area of layer curves, vectorised over any leading dims.

    Parameters
    ----------
    scores : ``(..., layer)`` scores; NaN marks a layer that was not probed.
    layers : ``(layer,)`` layer numbers.
    threshold : broadcastable to ``scores[..., 0]``: the score that counts as emerged.

    Returns
    -------
    ``onset``: first layer with score >= threshold (``layers[-1] + 1`` when never, so
    differences stay defined); ``peak``: layer of the maximum (first one on ties);
    ``area``: trapezoid area under the curve divided by the layer span (the layer-averaged
    score; a layer that was not probed counts at the curve's mean).
    """
    above = np.nan_to_num(scores, nan=-np.inf) >= np.asarray(threshold)[..., None]
    onset = np.where(above.any(axis=-1), layers[above.argmax(axis=-1)], layers[-1] + 1)
    peak = layers[np.nan_to_num(scores, nan=-np.inf).argmax(axis=-1)]
    ok = ~np.isnan(scores)
    span = layers[-1] - layers[0]
    if span == 0:
        area = scores[..., 0]
    else:
        filled = np.where(ok, scores, np.nanmean(scores, axis=-1, keepdims=True))
        area = trapezoid(filled, layers, axis=-1) / span
    return {"onset": onset.astype(float), "peak": peak.astype(float), "area": area}


class CompareResult(ProbeResult):
    """Aligned layer curves of several labels, onsets, peaks, areas and their tests."""

    action_name = "compare"

    def summary(self) -> dict[str, Any]:
        """``earliest`` names the label that emerges first in the headline component."""
        d = self.data
        comp = str(d.attrs["component"])
        level = float(d.attrs["level"])
        curves = {}
        for label in d["label"].values:
            at = {"label": label, "component": comp}
            point = {k: _num(d[k].sel(at)) for k in ("onset", "peak", "area", "peak_score")}
            never = point["onset"] > d["layer"].values[-1]
            curves[str(label)] = {
                "onset_layer": None if never else point["onset"],
                "onset_ci": _pair(d["onset_ci"].sel(at)),
                "peak_layer": point["peak"],
                "peak_ci": _pair(d["peak_ci"].sel(at)),
                "peak_score": point["peak_score"],
                "area": point["area"],
                "area_ci": _pair(d["area_ci"].sel(at)),
                "threshold": _num(d["threshold"].sel(label=label)),
            }
        tests: list[dict[str, Any]] = []
        for other in d["other"].values:
            at = {"other": other, "component": comp}
            tests.append(
                {"earlier": str(d.attrs["earliest"]), "later": str(other)}
                | {
                    f"{kind}_{key}": (_pair if key == "diff_ci" else _num)(
                        d[f"{kind}_{key}"].sel(at)
                    )
                    for kind in ("onset", "peak")
                    for key in ("diff", "diff_ci", "p", "p_adj")
                }
            )
        alpha = 1 - level
        return {
            "labels": [str(v) for v in d["label"].values],
            "component": comp,
            "metric": str(d["metric"].values[0]),
            "earliest": str(d.attrs["earliest"]),
            "curves": curves,
            "tests": tests,
            "correction": str(d.attrs["correction"]),
            "significant": all(t["onset_p_adj"] < alpha for t in tests),
            "peak_significant": all(t["peak_p_adj"] < alpha for t in tests),
        }

    def verdict(self) -> str:
        """E.g. "'a' emerges before 'b' in resid: onset layer 1 vs 3 (holm p=0.002) ..."."""
        s = self.summary()
        first = s["earliest"]
        parts = []
        for t in s["tests"]:
            later = t["later"]
            on = [_layer(s["curves"][x]["onset_layer"]) for x in (first, later)]
            pk = [s["curves"][x]["peak_layer"] for x in (first, later)]
            parts.append(
                f"onset layer {on[0]} vs {on[1]} for '{later}' "
                f"({s['correction']} p={t['onset_p_adj']:.3g}), "
                f"peak {pk[0]:.0f} vs {pk[1]:.0f} (p={t['peak_p_adj']:.3g})"
            )
        if s["significant"]:
            head = f"'{first}' emerges before {_others(s)} in {s['component']}"
        else:
            head = f"no significant difference in emergence in {s['component']}; earliest '{first}'"
        return f"{head}: " + "; ".join(parts)

    def chart(self) -> Any:
        """One layer curve per label with CI bands, onset and peak marked."""
        from mechwidgets.viz.charts import compare_chart

        threshold = float(self.data["threshold"].values[0])
        return compare_chart(
            self.table, threshold=threshold, metric=str(self.real["metric"].iloc[0])
        )


def _num(value: xr.DataArray) -> float:
    return float(value.values)


def _pair(value: xr.DataArray) -> list[float]:
    return [float(v) for v in value.values]


def _layer(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f}"


def _others(s: dict[str, Any]) -> str:
    return ", ".join(f"'{t['later']}'" for t in s["tests"])


@register_action("compare")
class Compare(ResultAction):
    """Does feature A emerge before feature B? Aligned curves and paired tests."""

    name = "compare"

    def prepare(self, context: RunContext) -> ProbePlan:
        """Check the labels (two or more) and the protocol."""
        plan = ProbePlan.from_context(context, own={"threshold", "component"})
        if len(plan.labels) < 2:
            raise SpecError(f"compare needs two or more labels, got {list(plan.labels)}")
        threshold = plan.options.get("threshold")
        if threshold is not None and not isinstance(threshold, int | float):
            raise SpecError(f"bad value {threshold!r} for 'threshold': give a score, e.g. 0.75")
        return plan

    def run(self, prepared: ProbePlan) -> CompareResult:
        """Probe all labels on every slice, then compare their curves."""
        run = run_protocol(prepared.cube, prepared.labels, prepared.protocol)
        comp = prepared.component(run.agg)
        stats = _compare(run.agg, run.raw, prepared, str(comp))
        data = xr.merge([run.data, stats], compat="override", combine_attrs="override")
        data.attrs |= stats.attrs
        return CompareResult.from_run(run, prepared, data=data)


def _compare(agg: xr.Dataset, raw: xr.Dataset, plan: ProbePlan, comp: str) -> xr.Dataset:
    """Onsets, peaks, areas with intervals, and tests of the earliest label against the rest."""
    protocol = plan.protocol
    layers = agg["layer"].values.astype(float)
    real = agg["score"].sel(control="none").transpose("label", "component", "layer")
    boot = pooled_boot(raw).transpose("label", "component", "bdraw", "layer")
    chance = agg["chance"].values
    given = plan.options.get("threshold")
    # default: halfway from chance to a perfect score of 1 (0.75 for balanced accuracy, 0.5 for r2)
    threshold = np.full(chance.shape, float(given)) if given is not None else (1 + chance) / 2
    point = curve_points(real.values, layers, threshold[:, None])
    draws = curve_points(boot.values, layers, threshold[:, None, None])
    point["peak_score"] = np.nanmax(real.values, axis=-1)
    names = [str(v) for v in agg["label"].values]
    ci = list(agg["component"].values).index(comp)
    order = sorted(
        range(len(names)),
        key=lambda i: (
            point["onset"][i, ci],
            point["peak"][i, ci],
            -point["area"][i, ci],
        ),
    )
    first, others = order[0], order[1:]
    dims = ("label", "component")
    out: dict[str, Any] = {k: (dims, point[k]) for k in ("onset", "peak", "area", "peak_score")}
    for k in ("onset", "peak", "area"):
        lo, hi = percentile_interval(draws[k], protocol.level)
        out[f"{k}_ci"] = ((*dims, "bound"), np.stack([lo, hi], axis=-1))
    out["threshold"] = (("label",), threshold)
    for k in ("onset", "peak"):
        diff = draws[k][others] - draws[k][first][None]  # (other, component, bdraw)
        lo, hi = percentile_interval(diff, protocol.level)
        p = bootstrap_pvalue(diff)
        out[f"{k}_diff"] = (("other", "component"), point[k][others] - point[k][first][None])
        out[f"{k}_diff_ci"] = (("other", "component", "bound"), np.stack([lo, hi], axis=-1))
        out[f"{k}_p"] = (("other", "component"), p)
        out[f"{k}_p_adj"] = (("other", "component"), adjust_pvalues(p, protocol.correction))
    ds = xr.Dataset(
        out,
        coords={
            "label": names,
            "component": agg["component"].values,
            "other": [names[i] for i in others],
            "bound": ["low", "high"],
        },
    )
    ds.attrs = {"earliest": names[first], "component": comp}
    return ds


def compare(
    cube: xr.Dataset,
    labels: Iterable[str],
    *,
    controls: Iterable[str] = DEFAULT_CONTROLS,
    seeds: int = 5,
    seed: int = 0,
    threshold: float | None = None,
    component: str | None = None,
    **params: Any,
) -> CompareResult:
    """Does one label emerge at an earlier layer than the others?

    Parameters
    ----------
    cube : an activation cube holding every label along ``sample``.
    labels : two or more label variables.
    controls, seeds, seed, **params : as in :func:`mechwidgets.detect`.
    threshold : score that counts as "emerged"; default halfway between chance and a
        perfect score, per label (0.75 for balanced binary accuracy, 0.5 for r2).
    component : the component the headline (``earliest``) is read from; default ``resid``.

    Returns
    -------
    A :class:`CompareResult`; ``summary()["earliest"]`` names the label that emerges first
    and ``summary()["tests"]`` holds the onset and peak-layer differences with bootstrap
    intervals and corrected p-values.

    Examples
    --------
    >>> res = compare(cube, labels=["subject_number", "tense"])
    >>> res.summary()["earliest"]
    """
    context = RunContext(
        cube=cube,
        params={"labels": list(labels), "seeds": seeds, "threshold": threshold}
        | {"component": component, **params},
        controls=list(controls),
        seed=seed,
    )
    return cast(CompareResult, run_action("compare", context))
