"""detect: does layer/component X encode feature Y?

A linear probe per (layer, component) slice, next to its controls, with intervals and
corrected p-values, so "layer 3 encodes number" comes with how sure we are and how much
of it a probe could have found anyway.

>>> res = mw.detect(cube, label="subject_number", controls=["label_shuffle"], seeds=5)
>>> res.summary()["best"], res.table.head(), res.chart()
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd
import xarray as xr

from mechwidgets.actions.base import ActionResult, ResultAction, RunContext, call_action
from mechwidgets.analysis.statistics import adjust_pvalues, bootstrap_pvalue, percentile_interval
from mechwidgets.core.components import EMBED
from mechwidgets.core.errors import CubeError, SpecError
from mechwidgets.extract.cube import activations_index
from mechwidgets.probes.sweep import (
    DEFAULT_CONTROLS,
    Protocol,
    ProtocolRun,
    pooled_boot,
    resolve_labels,
    run_protocol,
)


@dataclass(frozen=True)
class ProbePlan:
    """What ``run`` needs: the cube, the labels and the protocol (checked in ``prepare``)."""

    cube: xr.Dataset
    labels: tuple[str, ...]
    protocol: Protocol
    options: dict[str, Any]

    @classmethod
    def from_context(
        cls, context: RunContext, own: Iterable[str] = (), single: bool = False
    ) -> ProbePlan:
        """Read ``label``/``labels`` and the protocol from a RunContext.

        ``single`` actions (detect, collapse) take one label; compare takes several.
        """
        if not isinstance(context.cube, xr.Dataset):  # compare hands over one cube at a time
            raise CubeError("this action needs an activation cube; extract one first")
        protocol, options = Protocol.from_context(context, own={"label", "labels", *own})
        wanted = options.pop("labels", None) or options.pop("label", None)
        labels = resolve_labels(context.cube, wanted)
        if single and len(labels) != 1:
            raise SpecError(
                f"this action probes one label, got {', '.join(labels)}; use compare for several"
            )
        return cls(context.cube, labels, protocol, options)

    def component(self, agg: xr.Dataset) -> str:
        """The ``component`` option, else ``resid`` when probed, else the first probed one."""
        comps = [str(c) for c in agg["component"].values]
        comp = self.options.get("component") or ("resid" if "resid" in comps else comps[0])
        if comp not in comps:
            raise SpecError(f"component '{comp}' is not in the result; it has {comps}")
        return str(comp)

    def params(self) -> dict[str, Any]:
        """The run's parameters, for the bundle."""
        p = self.protocol
        return {
            "labels": list(self.labels),
            "controls": list(p.controls),
            "seeds": list(p.seeds),
            "permutations": p.permutations,
            "resamples": p.resamples,
            "strengths": list(p.strengths),
            "probe": p.probe,
            "metric": p.metric,
            "level": p.level,
            "correction": p.correction,
            "groups": p.groups,
        } | self.options


class ProbeResult(ActionResult):
    """Shared reading of a probe table: the real-probe rows and their best slice."""

    #: the registered name of the action that returns this result
    action_name = ""

    @classmethod
    def from_run(
        cls,
        run: ProtocolRun,
        plan: ProbePlan,
        data: xr.Dataset | None = None,
        table: Any = None,
        **params: Any,
    ) -> Any:
        """The result of ``plan`` run as ``run``; ``data``/``table`` replace the run's own."""
        return cls(
            action=cls.action_name,
            data=run.data if data is None else data,
            table=run.table if table is None else table,
            params=plan.params() | params,
            predictions=run.predictions,
            timings=run.timings,
            activations=activations_index(plan.cube),
        )

    @property
    def real(self) -> Any:
        """Real-probe rows (``control == "none"``)."""
        return self.table[self.table["control"] == "none"]

    def _best(self, rows: Any) -> dict[str, Any]:
        row = rows.loc[rows["score"].idxmax()]
        return {
            "layer": int(row["layer"]),
            "component": str(row["component"]),
            "score": float(row["score"]),
            "ci": [float(row["ci_low"]), float(row["ci_high"])],
            "ci_adj": [float(row["ci_adj_low"]), float(row["ci_adj_high"])],
            "p_adj": float(row["p_adj"]),
        }


#: a control task within this much of the real probe means it memorises word types
MEMORISE_GAP = 0.05


def units_phrase(unit: str, n: int) -> str:
    """E.g. ``10 test word types``, ``160 test items``, ``12 test groups ('noun')``."""
    if unit.startswith("group "):
        return f"{n} test groups ({unit.removeprefix('group ')})"
    return f"{n} test {unit}s"


class DetectResult(ProbeResult):
    """Probe scores per slice with intervals, controls, selectivity and corrected p-values."""

    action_name = "detect"

    def _best_vs_next(self, real: Any) -> dict[str, Any] | None:
        """Is the best slice better than the runner-up? Paired bootstrap on the same items."""
        if len(real) < 2:
            return None
        top = real.nlargest(2, "score")
        boot = pooled_boot(self.data).isel(label=0)
        a, b = (
            boot.sel(layer=r["layer"], component=r["component"]).values for _, r in top.iterrows()
        )
        lo, hi = percentile_interval(a - b, float(self.data.attrs["level"]))
        second = top.iloc[1]
        return {
            "layer": int(second["layer"]),
            "component": str(second["component"]),
            "diff": float(top["score"].iloc[0] - second["score"]),
            "diff_ci": [float(lo), float(hi)],
            "p_value": float(bootstrap_pvalue(a - b)),
        }

    def summary(self) -> dict[str, Any]:
        """Best slice, best layer per component, controls at the best slice, counts."""
        real = self.real
        best = self._best(real)
        at_best = self.table[
            (self.table["layer"] == best["layer"])
            & (self.table["component"] == best["component"])
            & (self.table["control"] != "none")
        ]
        alpha = 1 - float(self.data.attrs["level"])
        controls = {
            str(r["control"]): {
                "score": float(r["score"]),
                "gap": float(r["selectivity"]),
                "gap_ci": [float(r["selectivity_ci_low"]), float(r["selectivity_ci_high"])],
                "p_value": float(r["p_value"]),
                "p_adj": float(r["p_adj"]),
            }
            for _, r in at_best.iterrows()
        }
        first = real.iloc[0]
        task = controls.get("control_task")
        n_units = int(first.get("n_units", 0))
        return {
            "label": str(first["label"]),
            "metric": str(first["metric"]),
            "chance": float(first["chance"]),
            "majority": float(first.get("majority", np.nan)),
            "unit": str(first.get("unit", "item")),
            "n_units": n_units,
            "few_units": n_units < int(self.data.attrs.get("min_units", 0)),
            "memorises": bool(task and task["score"] >= best["score"] - MEMORISE_GAP),
            "correction": str(first["correction"]),
            "level": float(self.data.attrs["level"]),
            "best": best,
            "best_per_component": {
                str(comp): self._best(rows) for comp, rows in real.groupby("component", sort=False)
            },
            "controls": controls,
            "selectivity": controls.get("control_task", {}).get("gap"),
            "n_slices": len(real),
            "n_significant": int((real["p_adj"] < alpha).sum()),
            "first_significant": self._first_significant(real, alpha, best["component"]),
            "best_vs_next": self._best_vs_next(real),
            "seeds": len(self.data["seed"]),
            "permutations": int(self.data.sizes["draw"]),
            "resamples": int(self.data.sizes["resample"]),
        }

    def verdict(self) -> str:
        """E.g. "'number' is decodable: best resid layer 2, accuracy 0.97 [0.95, 0.99] ..."."""
        s = self.summary()
        b = s["best"]
        where = f"best {b['component']} layer {b['layer']}, {s['metric']} {b['score']:.3f}"
        ci = f"[{b['ci'][0]:.3f}, {b['ci'][1]:.3f}] vs chance {s['chance']:.3f}"
        test = f"{s['correction']}-adjusted p < {1 - s['level']:.2g}"
        controls = [str(c) for c in self.data["control"].values[1:]]
        if not controls:  # controls=[]: no null to test against
            return (
                f"'{s['label']}': {where} {ci}; untested: no controls ran, so there is no "
                "p-value (add label_shuffle to test it)"
            )
        ref = "label_shuffle" if "label_shuffle" in controls else controls[0]
        if s["n_significant"]:
            head = f"'{s['label']}' is decodable: {where} {ci}"
            tail = f"{s['n_significant']}/{s['n_slices']} slices beat {ref} ({test})"
            if s["first_significant"] is not None:
                first = "embed" if s["first_significant"] == EMBED else s["first_significant"]
                tail += f", {b['component']} from layer {first} on"
        elif self._unresolved(s):
            head = f"'{s['label']}' is undetermined: {where} {ci}"
            tail = (
                f"the probe beats every {ref} draw, but {s['seeds'] * s['permutations']} draws "
                f"cannot give a {test} over {s['n_slices']} slices; raise permutations"
            )
        else:
            head = f"'{s['label']}' is not decodable above {ref}: {where} {ci}"
            tail = f"0/{s['n_slices']} slices significant ({test})"
        parts = [head, tail, f"unit: {s['unit']}, {units_phrase(s['unit'], s['n_units'])}"]
        if s["few_units"]:
            parts.append(
                f"only {units_phrase(s['unit'], s['n_units'])}: too few to estimate their "
                "spread, so intervals count each as one observation; test more of them"
            )
        if s["memorises"]:
            task = s["controls"]["control_task"]["score"]
            parts.append(
                f"warning: the probe can memorise word types: selectivity ~0 (control task "
                f"{task:.3f} vs {b['score']:.3f})"
            )
        return "; ".join(parts)

    @staticmethod
    def _first_significant(real: pd.DataFrame, alpha: float, component: str) -> int | None:
        """The shallowest layer of ``component`` from which every deeper slice is
        significant: where the feature becomes decodable and stays so (None: the deepest
        layer is not significant)."""
        rows = real[real["component"] == component].sort_values("layer")
        first = None
        for layer, p_adj in zip(rows["layer"][::-1], rows["p_adj"][::-1], strict=True):
            if p_adj >= alpha:
                break
            first = int(layer)
        return first

    def _unresolved(self, s: dict[str, Any]) -> bool:
        """No slice significant only because the permutation count cannot resolve it: some
        slice beats every draw, yet the smallest p-value draws can give is not small enough
        after correction (B permutations give at best 1/(B+1))."""
        draws = s["seeds"] * s["permutations"]
        floor = 1.0 / (draws + 1.0)
        at_floor = (self.real["p_value"] <= floor * (1 + 1e-9)).any()
        adjusted = adjust_pvalues(np.full(s["n_slices"], floor), s["correction"]).min()
        return bool(at_floor and adjusted >= 1 - s["level"])

    def chart(self) -> Any:
        """Probe score per layer with CI band and control baselines, one panel per component."""
        from mechwidgets.viz.charts import layer_curve_chart

        return layer_curve_chart(self.table, metric=str(self.real["metric"].iloc[0]))


class Detect(ResultAction):
    """Does layer/component X encode feature Y? Probes every slice with controls."""

    name = "detect"

    def prepare(self, context: RunContext) -> ProbePlan:
        """Check the parameters and the label; the cube is validated when the sweep starts."""
        return ProbePlan.from_context(context, single=True)

    def run(self, prepared: ProbePlan) -> DetectResult:
        """Probe every slice and aggregate."""
        run = run_protocol(prepared.cube, prepared.labels, prepared.protocol)
        return DetectResult.from_run(run, prepared)


def detect(
    cube: xr.Dataset,
    label: str | None = None,
    *,
    controls: Iterable[str] = DEFAULT_CONTROLS,
    seeds: int = 5,
    seed: int = 0,
    client: Any = None,
    **params: Any,
) -> DetectResult:
    """Does each (layer, component) slice of ``cube`` linearly encode ``label``?

    Parameters
    ----------
    cube : an activation cube (``act``, ``split`` and the label along ``sample``).
    label : the label variable; may be omitted when the cube has only one.
    controls : any of ``label_shuffle``, ``random_subspace``, ``control_task``.
    seeds : how many seeds (shuffles, subspaces, control tasks, bootstrap streams).
    seed : the first seed value.
    client : a ``dask.distributed.Client``: each slice is probed on a worker, which opens
        the cube's file itself (:mod:`mechwidgets.cluster`); the same numbers as without.
    **params : protocol options: ``permutations`` (200), ``resamples`` (1000),
        ``strengths``, ``metric``, ``probe`` (``ridge``/``logistic``), ``level`` (0.95),
        ``correction`` (``holm``/``bh``), ``subspace_rank``, ``layers``, ``components``,
        ``groups`` (the unit of inference: a per-sample cube variable; default the
        cube's ``group``, else ``wordtype_<label>``, else items; ``"items"`` opts out).

    Intervals and p-values treat the unit as independent, not the item: bootstrap
    resamples draw whole units and label permutations respect them (see
    ``mechwidgets.probes.sweep``); the table's ``unit`` and ``n_units`` columns and the
    verdict say which unit was used.

    Returns
    -------
    A :class:`DetectResult`; ``.table`` has one row per (label, layer, component, control).

    Examples
    --------
    >>> res = detect(cube, label="subject_number", seeds=5)
    >>> res.summary()["best"]["layer"]
    """
    given = {"label": label, "seeds": seeds, **params}
    context = RunContext(cube=cube, params=given, controls=list(controls), seed=seed)
    return cast(DetectResult, call_action("detect", context, client))
