"""compare: does feature A emerge before feature B?

Probes two or more labels on the same slices with one protocol, then reads each layer
curve for where it first reaches a threshold (onset), where it peaks and its area (the
layer-averaged score), and tests the differences with a bootstrap over test items and
seeds. Labels of one cube are compared *paired* (every label is scored on the same
resampled items in each draw). Labels from different cubes (different tasks and texts, the
same model and layers) are compared *unpaired*: each cube is resampled on its own and the
draws are matched at random, so a difference's spread adds both tasks' sampling noise.

The bootstrap resamples test items (whole units when items share one) given the fitted
probes; it does not refit them, so the noise of a finite training set is not in it. On
one cube that noise is shared by the labels' curves; across tasks it is not, and with few
training items per dimension the unpaired intervals are too narrow. Measured on planted
cubes with the same planting in both (d = 16, 30 pairs): with 1,200 training items the
area difference's SD was 0.016 against a bootstrap SE of 0.018 (1/30 significant at 5%);
with 240, 0.035 against 0.024 (5/30). Give each task many training items per dimension.

>>> res = mw.compare(cube, labels=["subject_number", "tense"], seeds=5)
>>> res.summary()["earliest"], res.summary()["tests"][0]["onset_p_adj"]
>>> mw.compare([syntax_cube, semantics_cube], labels=["subject_number", "sentiment"])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np
import pandas as pd
import xarray as xr
from scipy.integrate import trapezoid

from mechwidgets.actions.base import ResultAction, RunContext, call_action
from mechwidgets.actions.detect import ProbePlan, ProbeResult, units_phrase
from mechwidgets.analysis.statistics import adjust_pvalues, bootstrap_pvalue, percentile_interval
from mechwidgets.core.errors import CubeError, SpecError
from mechwidgets.extract.cube import activations_index
from mechwidgets.probes.sweep import (
    DEFAULT_CONTROLS,
    MIN_UNITS,
    ProtocolRun,
    pooled_boot,
    run_protocol,
)

#: the curve points whose differences are tested
POINTS = ("onset", "peak", "area")
#: the random stream that matches bootstrap draws of different cubes
_MATCH_STREAM = 5
#: cube attributes that must agree for curves of different cubes to be compared
_SAME_MODEL = ("model_identity", "model", "revision")


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
                    for kind in POINTS
                    for key in ("diff", "diff_ci", "p", "p_adj")
                }
            )
        alpha = 1 - level
        return {
            "labels": [str(v) for v in d["label"].values],
            "component": comp,
            "metric": str(d["metric"].values[0]),
            "design": str(d.attrs["design"]),
            "earliest": str(d.attrs["earliest"]),
            "curves": curves,
            "tests": tests,
            "correction": str(d.attrs["correction"]),
            "few_units": _few_units(d),
            "significant": all(t["onset_p_adj"] < alpha for t in tests),
            "peak_significant": all(t["peak_p_adj"] < alpha for t in tests),
            "area_significant": all(t["area_p_adj"] < alpha for t in tests),
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
            area = [s["curves"][x]["area"] for x in (first, later)]
            parts.append(
                f"onset layer {on[0]} vs {on[1]} for '{later}' "
                f"({s['correction']} p={t['onset_p_adj']:.3g}), "
                f"peak {pk[0]:.0f} vs {pk[1]:.0f} (p={t['peak_p_adj']:.3g}), "
                f"area {area[0]:.3f} vs {area[1]:.3f} (p={t['area_p_adj']:.3g})"
            )
        if s["significant"]:
            head = f"'{first}' emerges before {_others(s)} in {s['component']}"
        else:
            head = f"no significant difference in emergence in {s['component']}; earliest '{first}'"
        design = (
            " (unpaired: labels from different cubes; intervals hold each task's probes fixed)"
            if s["design"] == "unpaired"
            else ""
        )
        if s["few_units"]:
            head = (
                f"cannot test differences in emergence in {s['component']}: "
                + ", ".join(f"'{k}' has only {v}" for k, v in s["few_units"].items())
                + " (too few to resample; test more of them, or pass groups='items' if the "
                "items are independent)"
            )
        return f"{head}{design}: " + "; ".join(parts)

    def chart(self) -> Any:
        """One layer curve per label with CI bands, onset and peak marked."""
        from mechwidgets.viz.charts import compare_chart

        threshold = float(self.data["threshold"].values[0])
        return compare_chart(
            self.table, threshold=threshold, metric=str(self.real["metric"].iloc[0])
        )


def _few_units(d: xr.Dataset) -> dict[str, str]:
    """Labels whose test split holds fewer independent units than a bootstrap needs."""
    if "n_units" not in d.coords:
        return {}
    return {
        str(label): units_phrase(str(unit), int(n))
        for label, unit, n in zip(
            d["label"].values, d["unit"].values, d["n_units"].values, strict=True
        )
        if n < MIN_UNITS
    }


def _num(value: xr.DataArray) -> float:
    return float(value.values)


def _pair(value: xr.DataArray) -> list[float]:
    return [float(v) for v in value.values]


def _layer(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f}"


def _others(s: dict[str, Any]) -> str:
    return ", ".join(f"'{t['later']}'" for t in s["tests"])


@dataclass(frozen=True)
class TaskPlans:
    """Labels from different cubes (one per task, same model and layers), checked."""

    plans: tuple[ProbePlan, ...]
    names: tuple[str, ...]


class Compare(ResultAction):
    """Does feature A emerge before feature B? Aligned curves and their tests."""

    name = "compare"

    def prepare(self, context: RunContext) -> ProbePlan | TaskPlans:
        """Check the labels (two or more), the protocol and, for several cubes, that they
        come from one model with the same layers and components."""
        cubes = context.cube
        if isinstance(cubes, Sequence):
            return _task_plans(context, list(cubes))
        plan = ProbePlan.from_context(context, own={"threshold", "component"})
        if len(plan.labels) < 2:
            raise SpecError(f"compare needs two or more labels, got {list(plan.labels)}")
        _check_threshold(plan.options)
        return plan

    def run(self, prepared: ProbePlan | TaskPlans) -> CompareResult:
        """Probe all labels on every slice, then compare their curves."""
        if isinstance(prepared, TaskPlans):
            return _run_tasks(prepared)
        run = run_protocol(prepared.cube, prepared.labels, prepared.protocol)
        comp = prepared.component(run.agg)
        stats = _compare(run.agg, run.raw, prepared, str(comp), paired=True)
        data = xr.merge([run.data, stats], compat="override", combine_attrs="override")
        data.attrs |= stats.attrs
        return CompareResult.from_run(run, prepared, data=data)


def _check_threshold(options: dict[str, Any]) -> None:
    threshold = options.get("threshold")
    if threshold is not None and not isinstance(threshold, int | float):
        raise SpecError(f"bad value {threshold!r} for 'threshold': give a score, e.g. 0.75")


def _task_plans(context: RunContext, cubes: list[Any]) -> TaskPlans:
    """One single-label plan per cube, after checking that the cubes can be compared."""
    if len(cubes) < 2 or not all(isinstance(c, xr.Dataset) for c in cubes):
        raise SpecError(
            "compare across tasks takes a list of two or more cubes (xarray Datasets), "
            "one per task, and labels=[...] with one label per cube"
        )
    wanted = context.params.get("labels", context.params.get("label"))
    labels = [wanted] if isinstance(wanted, str) else list(wanted or [])
    labels = labels * len(cubes) if len(labels) == 1 else labels
    if len(labels) != len(cubes):
        raise SpecError(
            f"compare across {len(cubes)} cubes needs one label per cube, got {labels}; "
            "pass labels=[label of cube 1, label of cube 2, ...]"
        )
    _check_same_model(cubes)
    plans = []
    for cube, label in zip(cubes, labels, strict=True):
        params = {k: v for k, v in context.params.items() if k != "label"} | {"labels": [label]}
        plan = ProbePlan.from_context(
            context.evolve(cube=cube, params=params), own={"threshold", "component"}
        )
        plans.append(plan)
    _check_threshold(plans[0].options)
    return TaskPlans(tuple(plans), _display_names(cubes, [p.labels[0] for p in plans]))


def _check_same_model(cubes: list[xr.Dataset]) -> None:
    """One-line CubeError unless every cube has the first one's model, layers and components."""
    first = cubes[0]
    for i, cube in enumerate(cubes[1:], start=2):
        for key in _SAME_MODEL:
            a, b = first.attrs.get(key), cube.attrs.get(key)
            if a is not None and b is not None and str(a) != str(b):
                raise CubeError(
                    f"cube 1 and cube {i} come from different models ({key} {a!r} vs {b!r}); "
                    "compare across tasks needs cubes extracted from one model"
                )
        for dim in ("layer", "component"):
            a, b = (list(np.asarray(c[dim].values).tolist()) for c in (first, cube))
            if a != b:
                raise CubeError(
                    f"cube 1 and cube {i} hold different {dim}s ({a} vs {b}); "
                    f"extract the same {dim}s for every task"
                )
        if first.sizes.get("dim") != cube.sizes.get("dim"):
            raise CubeError(
                f"cube 1 and cube {i} have different widths ({first.sizes.get('dim')} vs "
                f"{cube.sizes.get('dim')}): not one model"
            )


def _display_names(cubes: list[xr.Dataset], labels: list[str]) -> tuple[str, ...]:
    """The labels, told apart by task name (or cube number) where the same label repeats."""
    if len(set(labels)) == len(labels):
        return tuple(labels)
    tasks = [str(c.attrs.get("task") or "") for c in cubes]
    tags = tasks if all(tasks) and len(set(tasks)) == len(tasks) else None
    return tuple(
        f"{label} ({tags[i] if tags else f'cube {i + 1}'})" for i, label in enumerate(labels)
    )


def _run_tasks(prepared: TaskPlans) -> CompareResult:
    """Each cube probed on its own, the runs stacked along ``label``, compared unpaired."""
    runs = [run_protocol(p.cube, p.labels, p.protocol) for p in prepared.plans]
    per_task = ["y_true", "y_pred", "y_score", "test_sample"]  # items differ between cubes

    def stacked(part: str) -> xr.Dataset:
        sets = [
            getattr(r, part).drop_vars(per_task, errors="ignore").assign_coords(label=[name])
            for r, name in zip(runs, prepared.names, strict=True)
        ]
        return xr.concat(
            sets,
            dim="label",
            data_vars="minimal",
            coords="minimal",
            compat="override",
            combine_attrs="override",
        )

    raw, agg = stacked("raw"), stacked("agg")
    first = prepared.plans[0]
    comp = first.component(agg)
    stats = _compare(agg, raw, first, comp, paired=False)
    per_seed = raw.rename(score="seed_score", val_score="seed_val_score")
    data = xr.merge([agg, per_seed, stats], compat="override", combine_attrs="override")
    data.attrs |= stats.attrs

    def renamed(frames: list[pd.DataFrame]) -> pd.DataFrame:
        return pd.concat(
            [
                f.assign(label=name, task=i + 1)
                for i, (f, name) in enumerate(zip(frames, prepared.names, strict=True))
            ],
            ignore_index=True,
        )

    timings = {k: round(sum(r.timings[k] for r in runs), 4) for k in runs[0].timings}
    run = ProtocolRun(
        raw, agg, renamed([r.table for r in runs]), renamed([r.predictions for r in runs]), timings
    )
    cubes = [activations_index(p.cube) for p in prepared.plans]
    labels = [p.labels[0] for p in prepared.plans]
    result = CompareResult.from_run(
        run, first, data=data, labels=list(prepared.names), cube_labels=labels
    )
    return cast(CompareResult, replace(result, activations=cubes[0] | {"cubes": cubes}))


def _compare(
    agg: xr.Dataset, raw: xr.Dataset, plan: ProbePlan, comp: str, paired: bool
) -> xr.Dataset:
    """Onsets, peaks, areas with intervals, and tests of the earliest label against the rest.

    ``paired``: every label's draw ``j`` resampled the same items (one cube). Otherwise the
    labels' draws are independent resamples of different items; they are matched at random
    (a fixed permutation per label) so a draw-wise difference is a draw of the unpaired
    (two-sample) bootstrap, whatever the items' order in each cube.
    """
    protocol = plan.protocol
    layers = agg["layer"].values.astype(float)
    real = agg["score"].sel(control="none").transpose("label", "component", "layer")
    boot = pooled_boot(raw).transpose("label", "component", "bdraw", "layer")
    if not paired:
        rng = np.random.default_rng([protocol.seeds[0], _MATCH_STREAM])
        n_draws = boot.sizes["bdraw"]
        boot = boot.copy(data=np.stack([b[:, rng.permutation(n_draws)] for b in boot.values]))
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
    # with too few independent units on a test split, the unit bootstrap has (almost) no
    # spread, so its intervals and p-values would claim a certainty it does not have
    units = agg["n_units"].values if "n_units" in agg.coords else np.full(len(names), np.inf)
    blind = (units[others] < MIN_UNITS) | (units[first] < MIN_UNITS)
    for k in POINTS:
        diff = draws[k][others] - draws[k][first][None]  # (other, component, bdraw)
        diff[blind] = np.nan
        lo, hi = percentile_interval(diff, protocol.level)
        # onset and peak: one-sided, "the earliest label is earlier"; area: two-sided,
        # since the earliest label need not have the larger area
        p = bootstrap_pvalue(diff) if k != "area" else _two_sided(diff)
        p[blind] = np.nan
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
    ds.attrs = {
        "earliest": names[first],
        "component": comp,
        "design": "paired" if paired else "unpaired",
    }
    return ds


def _two_sided(diff: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-value that a difference is not 0: twice the smaller tail."""
    return np.minimum(1.0, 2 * np.minimum(bootstrap_pvalue(diff), bootstrap_pvalue(-diff)))


def compare(
    cube: xr.Dataset | Sequence[xr.Dataset],
    labels: str | Iterable[str],
    *,
    controls: Iterable[str] = DEFAULT_CONTROLS,
    seeds: int = 5,
    seed: int = 0,
    client: Any = None,
    threshold: float | None = None,
    component: str | None = None,
    **params: Any,
) -> CompareResult:
    """Does one label emerge at an earlier layer than the others?

    Parameters
    ----------
    cube : an activation cube holding every label along ``sample``; or a list of cubes,
        one per task (different texts, extracted from one model with the same layers and
        components), compared with an unpaired bootstrap.
    labels : two or more label variables of the cube; with a list of cubes, one label per
        cube, in order (a single name when every cube's label has it). Labels with the
        same name are told apart by the cubes' task names (``"label (task)"``).
    controls, seeds, seed, client, **params : as in :func:`mechwidgets.detect`.
    threshold : score that counts as "emerged"; default halfway between chance and a
        perfect score, per label (0.75 for balanced binary accuracy, 0.5 for r2).
    component : the component the headline (``earliest``) is read from; default ``resid``.

    Returns
    -------
    A :class:`CompareResult`; ``summary()["earliest"]`` names the label that emerges first
    and ``summary()["tests"]`` holds the onset, peak-layer and area differences with
    bootstrap intervals and corrected p-values (onset and peak one-sided, "the earliest
    label is earlier"; area two-sided); ``summary()["design"]`` says ``paired`` (one cube)
    or ``unpaired`` (a list of cubes).

    Examples
    --------
    >>> res = compare(cube, labels=["subject_number", "tense"])
    >>> res.summary()["earliest"]
    >>> compare([syntax_cube, semantics_cube], labels=["subject_number", "sentiment"])
    """
    given: dict[str, Any] = {"labels": [labels] if isinstance(labels, str) else list(labels)}
    given |= {"seeds": seeds, "threshold": threshold, "component": component, **params}
    cubes = cube if isinstance(cube, xr.Dataset) else list(cube)
    context = RunContext(cube=cubes, params=given, controls=list(controls), seed=seed)
    return cast(CompareResult, call_action("compare", context, client))
