"""collapse: does depth destroy a feature encoded earlier?

Reads one label's decodability curve for a drop from its peak to the final layer. The
peak layer is chosen on the VALIDATION split and its score taken on TEST: picking the
maximum of noisy test scores would bias the collapse index (peak - final) upward even
when nothing is erased. Layer-to-layer drops are tested with a paired bootstrap, and a
layer x layer CKA heatmap (debiased by default) shows where the representation changes.

>>> res = mw.collapse(cube, label="token_id", seeds=5)
>>> res.summary()["collapse_index"], res.summary()["collapse_ci"]
>>> mw.collapse(cube, label="x", recovery=dict(model=model, task=task)).recovery.table
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np
import xarray as xr

from mechwidgets.actions.base import ResultAction, RunContext, call_action
from mechwidgets.actions.detect import ProbePlan, ProbeResult
from mechwidgets.actions.recovery import RecoveryResult, RecoverySpec
from mechwidgets.analysis.geometry import cka_matrix
from mechwidgets.analysis.statistics import adjust_pvalues, bootstrap_pvalue, percentile_interval
from mechwidgets.cluster import map_slices
from mechwidgets.core.registry import check_params
from mechwidgets.probes.sweep import (
    DEFAULT_CONTROLS,
    pooled_boot,
    run_protocol,
)


@dataclass(repr=False, frozen=True)
class CollapseResult(ProbeResult):
    """Decodability curve, collapse index with CI, drop points and a layer CKA heatmap."""

    action_name = "collapse"

    #: the recovery-by-patching test, when asked for with ``recovery=``
    recovery: RecoveryResult | None = None

    def summary(self) -> dict[str, Any]:
        """``collapse_index`` and ``collapse_ci`` (low, high) for the headline component;
        ``drop_points`` every significant layer-to-layer drop, ``largest_drop`` the headline
        component's largest of them (None when there is none)."""
        d = self.data
        comp = str(d.attrs["component"])
        per = {str(c): self._component(str(c)) for c in d["component"].values}
        drops: list[dict[str, Any]] = [
            {
                "component": str(c),
                "from_layer": int(d["drop_from"].sel(component=c, layer=layer)),
                "to_layer": int(layer),
                "drop": float(d["drop"].sel(component=c, layer=layer)),
                "p_adj": float(d["drop_p_adj"].sel(component=c, layer=layer)),
            }
            for c in d["component"].values
            for layer in d["layer"].values
            if bool(d["drop_point"].sel(component=c, layer=layer))
        ]
        head = per[comp]
        return {
            "label": str(d["label"].values[0]),
            "metric": str(d["metric"].values[0]),
            "component": comp,
            **{k: head[k] for k in head},
            "per_component": per,
            "drop_points": drops,
            "largest_drop": max(
                (d for d in drops if d["component"] == comp), key=lambda d: d["drop"], default=None
            ),
            "correction": str(self.table["correction"].iloc[0]),
            "cka": str(d["cka"].attrs["estimator"]),
            "cka_undefined": {
                str(c): json.loads(d["cka"].attrs[f"undefined_{c}"]) for c in d["component"].values
            },
        } | ({"recovery": self.recovery.summary()} if self.recovery is not None else {})

    def _component(self, comp: str) -> dict[str, Any]:
        d = self.data.sel(component=comp)
        lo, hi = (float(v) for v in d["collapse_ci"].values)
        return {
            "collapse_index": float(d["collapse_index"]),
            "collapse_ci": (lo, hi),
            "collapse_p": float(d["collapse_p"]),
            "collapsed": lo > 0,
            "peak_layer": int(d["peak_layer"]),
            "final_layer": int(d["final_layer"]),
            "peak_score": float(d["peak_score"]),
            "final_score": float(d["final_score"]),
        }

    def verdict(self) -> str:
        """E.g. "'x' collapses in resid: peak layer 2 (chosen on val) 0.95 -> final 0.52 ...".

        When the index is not above 0 but ``drop_points`` holds a significant drop in the
        headline component, the verdict says so and names the largest one.
        """
        s = self.summary()
        curve = (
            f"peak layer {s['peak_layer']} (chosen on val) {s['peak_score']:.3f} -> final layer "
            f"{s['final_layer']} {s['final_score']:.3f}; collapse index "
            f"{s['collapse_index']:.3f} [{s['collapse_ci'][0]:.3f}, {s['collapse_ci'][1]:.3f}]"
        )
        recovery = "" if self.recovery is None else f"; {self.recovery.verdict()}"
        if s["collapsed"]:
            return f"'{s['label']}' collapses in {s['component']}: {curve}{recovery}"
        late = s["largest_drop"]
        if late is not None:
            # the val-chosen peak can sit after a real drop (e.g. at the final layer), so the
            # index reads 0 while a layer-to-layer test finds the drop: name both
            return (
                f"no collapse of '{s['label']}' in {s['component']} by the validation-chosen "
                f"peak, but a significant drop of {late['drop']:.3f} from layer "
                f"{late['from_layer']} to {late['to_layer']} ({s['correction']} p_adj "
                f"{late['p_adj']:.3g}): {curve}{recovery}"
            )
        return (
            f"no collapse of '{s['label']}' in {s['component']} (CI not above 0): {curve}{recovery}"
        )

    def chart(self) -> Any:
        """The decodability curve with CI band and controls, one panel per component."""
        from mechwidgets.viz.charts import layer_curve_chart

        return layer_curve_chart(self.table, metric=str(self.real["metric"].iloc[0]))

    def charts(self) -> dict[str, Any]:
        """The curve, plus one layer x layer CKA heatmap per component."""
        from mechwidgets.viz.charts import cka_heatmap

        title = f"CKA ({self.data['cka'].attrs['estimator']})"
        heatmaps = {
            f"cka_{c}": cka_heatmap(self.data["cka"].sel(component=c, drop=True), title=title)
            for c in self.data["component"].values
        }
        recovery = {} if self.recovery is None else {"recovery": self.recovery.chart()}
        return {"main": self.chart(), **heatmaps, **recovery}


class Collapse(ResultAction):
    """Does depth destroy a feature encoded earlier? Collapse index, drops, CKA."""

    name = "collapse"

    def prepare(self, context: RunContext) -> ProbePlan:
        """Check the parameters (the CKA estimator among them), the label and the protocol."""
        check_params("collapse", context.params)
        plan = ProbePlan.from_context(context, own={"cka", "component", "recovery"}, single=True)
        if plan.options.get("recovery") not in (None, False):
            plan.options["recovery"] = RecoverySpec.parse(
                plan.options["recovery"], context.model, context.task
            )
        return plan

    def run(self, prepared: ProbePlan) -> CollapseResult:
        """Probe every slice, read the curve for collapse, compute layer CKA."""
        run = run_protocol(prepared.cube, prepared.labels, prepared.protocol)
        comp = prepared.component(run.agg)
        stats = _collapse(run.raw, run.agg, prepared)
        debiased = (prepared.options.get("cka") or "debiased") == "debiased"
        cka = _layer_cka(prepared.cube, run.raw, debiased)
        data = xr.merge([run.data, stats, cka], compat="override", combine_attrs="override")
        data.attrs |= {"component": comp, "level": prepared.protocol.level}
        data["cka"].attrs = cka["cka"].attrs
        drops = stats[["drop", "drop_p", "drop_p_adj", "drop_point"]].to_dataframe().reset_index()
        table = run.table.merge(drops.assign(control="none"), how="left")
        recovery = prepared.options.get("recovery")
        extra = {"recovery": recovery.params()} if isinstance(recovery, RecoverySpec) else {}
        result = CollapseResult.from_run(run, prepared, data=data, table=table, **extra)
        if isinstance(recovery, RecoverySpec):
            head = result.summary()
            found = recovery.run(head["label"], head["peak_layer"], head["final_layer"])
            result = replace(result, recovery=found)
        return result


@dataclass(frozen=True)
class PeakToFinal:
    """One component's collapse: its validation-chosen peak layer against its final one,
    scored on test; ``index`` is the peak's score minus the final's, ``ci`` and ``p`` its
    paired-bootstrap interval and p-value."""

    index: float
    ci: tuple[float, float]
    p: float
    peak_layer: int
    final_layer: int
    peak_score: float
    final_score: float


def _collapse(raw: xr.Dataset, agg: xr.Dataset, plan: ProbePlan) -> xr.Dataset:
    """Per component: val-chosen peak, collapse index with CI, and layer-to-layer drops."""
    protocol = plan.protocol
    layers = agg["layer"].values
    alpha = 1 - protocol.level
    test = agg["score"].sel(control="none").isel(label=0).transpose("component", "layer").values
    val_curve = raw["val_score"].sel(control="none").isel(label=0).mean("seed")
    val = val_curve.transpose("component", "layer").values
    boot = pooled_boot(raw).isel(label=0).transpose("component", "layer", "bdraw").values
    probed = raw["probed"].transpose("component", "layer").values
    n_comp, n_layer = probed.shape
    found: list[PeakToFinal] = []
    drop = np.full((n_comp, n_layer), np.nan)
    drop_p = np.full((n_comp, n_layer), np.nan)
    drop_from = np.full((n_comp, n_layer), np.nan)
    for c in range(n_comp):
        idx = np.flatnonzero(probed[c])
        peak = idx[np.argmax(val[c, idx])]  # chosen on validation, first on ties
        final = idx[-1]
        diff = boot[c, peak] - boot[c, final]  # paired: same resampled test items
        lo, hi = percentile_interval(diff, protocol.level)
        found.append(
            PeakToFinal(
                index=float(test[c, peak] - test[c, final]),
                ci=(float(lo), float(hi)),
                p=float(bootstrap_pvalue(diff)) if peak != final else 1.0,
                peak_layer=int(layers[peak]),
                final_layer=int(layers[final]),
                peak_score=float(test[c, peak]),
                final_score=float(test[c, final]),
            )
        )
        for a, b in zip(idx[:-1], idx[1:], strict=True):
            drop[c, b] = test[c, a] - test[c, b]
            drop_p[c, b] = bootstrap_pvalue(boot[c, a] - boot[c, b])
            drop_from[c, b] = layers[a]
    drop_p_adj = np.stack([adjust_pvalues(row, protocol.correction) for row in drop_p])
    dims = ("component", "layer")
    return xr.Dataset(
        {
            "collapse_index": ("component", np.array([f.index for f in found])),
            "collapse_ci": (("component", "bound"), np.array([f.ci for f in found]).reshape(-1, 2)),
            "collapse_p": ("component", np.array([f.p for f in found], float)),
            "peak_layer": ("component", np.array([f.peak_layer for f in found], float)),
            "final_layer": ("component", np.array([f.final_layer for f in found], float)),
            "peak_score": ("component", np.array([f.peak_score for f in found])),
            "final_score": ("component", np.array([f.final_score for f in found])),
            "drop": (dims, drop),
            "drop_from": (dims, drop_from),
            "drop_p": (dims, drop_p),
            "drop_p_adj": (dims, drop_p_adj),
            "drop_point": (dims, (drop_p_adj < alpha) & (drop > 0)),
        },
        coords={"component": agg["component"].values, "layer": layers, "bound": ["low", "high"]},
    )


def _layer_cka(cube: xr.Dataset, raw: xr.Dataset, debiased: bool) -> xr.Dataset:
    """Layer x layer CKA per component on the test items (those the curve is scored on)."""
    test = np.flatnonzero(np.asarray(cube["split"].values).astype(str) == "test")
    probed = {
        str(c): [int(v) for v in raw["layer"].values if raw["probed"].sel(layer=v, component=c)]
        for c in raw["component"].values
    }
    # on a dask client (mechwidgets.cluster.using) each component's matrix is a worker's task
    done = dict(map_slices(cube, _component_cka, [(c,) for c in probed], probed, test, debiased))
    mats, attrs = [], {}
    for comp in probed:
        mat = done[(comp,)].reindex(layer_a=raw["layer"].values, layer_b=raw["layer"].values)
        attrs[f"undefined_{comp}"] = mat.attrs["undefined"]
        attrs["estimator"] = mat.attrs["estimator"]
        mats.append(mat)
    cka = xr.concat(mats, dim=xr.DataArray(raw["component"].values, dims="component"))
    cka.attrs = attrs
    return xr.Dataset({"cka": cka})


def _component_cka(
    cube: xr.Dataset, comp: str, probed: dict[str, list[int]], test: np.ndarray, debiased: bool
) -> xr.DataArray:
    """CKA between the probed layers of one component, on the ``test`` samples."""
    act = cube["act"].sel(component=comp).isel(sample=test).transpose("layer", "sample", "dim")
    reps = {layer: act.sel(layer=layer).values for layer in probed[comp]}
    return cka_matrix(reps, debiased=debiased)


def collapse(
    cube: xr.Dataset,
    label: str | None = None,
    *,
    controls: Iterable[str] = DEFAULT_CONTROLS,
    seeds: int = 5,
    seed: int = 0,
    client: Any = None,
    cka: str = "debiased",
    component: str | None = None,
    recovery: Mapping[str, Any] | None = None,
    **params: Any,
) -> CollapseResult:
    """Is ``label`` decodable at some layer and lost by the final one?

    Parameters
    ----------
    cube : an activation cube.
    label : the label variable; may be omitted when the cube has only one.
    controls, seeds, seed, client, **params : as in :func:`mechwidgets.detect`.
    cka : ``debiased`` (default; unbiased HSIC) or ``linear`` CKA for the heatmap.
    component : the component of the headline numbers; default ``resid``.
    recovery : also patch the peak layer's residual stream into later layers of the model
        and probe the final layer again (:mod:`mechwidgets.actions.recovery`):
        ``dict(model=..., task=...)`` with the model and Task the cube came from, and
        optionally ``source_layer`` (default the peak), ``target_layer`` (one or several;
        default every layer in between), ``readout_layer`` (default the final layer),
        ``batch_size``, ``resamples``, ``level``, ``seed``. A dict, like a config's
        ``recovery:`` block, keeps collapse's own signature about the curve.

    Returns
    -------
    A :class:`CollapseResult`; ``summary()["collapse_index"]`` is the test score at the
    validation-chosen peak layer minus the final layer's, ``summary()["collapse_ci"]`` its
    paired-bootstrap interval, ``summary()["drop_points"]`` the significant drops;
    ``.recovery`` the recovery test, when asked for.

    Examples
    --------
    >>> res = collapse(cube, label="token_id")
    >>> res.summary()["collapse_ci"]
    """
    given = {
        "label": label,
        "seeds": seeds,
        "cka": cka,
        "component": component,
        **({} if recovery is None else {"recovery": recovery}),
        **params,
    }
    context = RunContext(cube=cube, params=given, controls=list(controls), seed=seed)
    return cast(CollapseResult, call_action("collapse", context, client))
