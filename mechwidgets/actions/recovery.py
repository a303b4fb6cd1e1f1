"""Recovery by patching: does a feature lost with depth come back when its earlier
representation is put back into a later layer?

``collapse`` finds a feature decodable at a peak layer ``k`` and less so at a later
readout layer ``r``. Recovery runs the model again and, in the same forward pass,
replaces the residual stream after block ``t`` (at every position) by the residual stream
after block ``k`` of the same input, so blocks ``k+1..t`` are skipped and blocks after
``t`` run on the earlier representation. A probe is then fitted again at layer ``r``
(train split, strength on val, score on test) on the patched activations.

"Returns" means: the readout probe's test score after patching minus before has a paired
bootstrap interval over test items whose lower bound is above 0. ``recovered_share`` =
(after - before) / (source - before) says how much of the gap to the source layer's own
score is closed (1: the readout decodes the feature as well as layer ``k`` did). Over
several target layers the first one that recovers locates the last block that destroys
the feature: patching before it is undone by it, patching after it is not.

>>> rec = recovery_test(model, task, "subject_number", source_layer=1, readout_layer=3)
>>> rec.table[["target_layer", "before", "after", "change", "ci_low", "ci_high", "returns"]]
>>> mw.collapse(cube, label="subject_number", recovery=dict(model=model, task=task))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from mechwidgets.actions.base import ActionResult, ModelAction
from mechwidgets.analysis.statistics import (
    batch_score,
    bootstrap_pvalue,
    bootstrap_weights,
    percentile_interval,
)
from mechwidgets.core.errors import SpecError
from mechwidgets.core.registry import Needs, check_params
from mechwidgets.data.tasks import Task
from mechwidgets.intervene.readouts import patched_readouts
from mechwidgets.probes.linear import fit_probe

if TYPE_CHECKING:
    from mechwidgets.models.loading import Model

#: keys a ``recovery=`` mapping may hold
RECOVERY_KEYS = (
    "model",
    "task",
    "source_layer",
    "target_layer",
    "readout_layer",
    "batch_size",
    "resamples",
    "level",
    "seed",
)


@dataclass(repr=False, frozen=True)
class RecoveryResult(ActionResult):
    """Readout decodability before and after patching, one row per target layer."""

    def summary(self) -> dict[str, Any]:
        """Layers, scores and, per target layer, the change with its interval."""
        d = self.data
        rows = self.table
        first = rows[rows["returns"]]
        return {
            "label": str(d.attrs["label"]),
            "metric": str(d.attrs["metric"]),
            "source_layer": int(d.attrs["source_layer"]),
            "readout_layer": int(d.attrs["readout_layer"]),
            "source_score": float(d.attrs["source_score"]),
            "before": float(d.attrs["before"]),
            "targets": [
                {
                    "target_layer": int(r["target_layer"]),
                    "after": float(r["after"]),
                    "change": float(r["change"]),
                    "ci": [float(r["ci_low"]), float(r["ci_high"])],
                    "p_value": float(r["p_value"]),
                    "returns": bool(r["returns"]),
                    "recovered_share": float(r["recovered_share"]),
                }
                for _, r in rows.iterrows()
            ],
            "first_recovering_target": None if first.empty else int(first["target_layer"].iloc[0]),
            "level": float(d.attrs["level"]),
            "returns_means": str(d.attrs["returns_means"]),
        }

    def verdict(self) -> str:
        """E.g. "recovery: layer 1 patched into layer 2 brings 'x' back at layer 3: ..."."""
        s = self.summary()
        head = f"layer {s['source_layer']} patched into layer"
        back = [t for t in s["targets"] if t["returns"]]
        if not back:
            layers = ", ".join(str(t["target_layer"]) for t in s["targets"])
            best = max(t["after"] for t in s["targets"])
            return (
                f"recovery: {head} {layers} does not raise '{s['label']}' at layer "
                f"{s['readout_layer']} ({s['metric']} unpatched {s['before']:.3f}, patched at "
                f"most {best:.3f}; no change interval above 0)"
            )
        t = back[0]
        return (
            f"recovery: {head} {t['target_layer']} brings '{s['label']}' back at layer "
            f"{s['readout_layer']}: {s['metric']} {s['before']:.3f} -> {t['after']:.3f}, change "
            f"{t['change']:+.3f} [{t['ci'][0]:+.3f}, {t['ci'][1]:+.3f}], "
            f"{t['recovered_share']:.0%} of the gap to layer {s['source_layer']}"
        )

    def chart(self) -> Any:
        """Readout score after patching per target layer (CI band), unpatched and source
        scores as dashed references."""
        from mechwidgets.viz.charts import layer_curve_chart

        s = self.summary()
        t = self.table
        rows = {
            "none": (t["after"], t["after_ci_low"], t["after_ci_high"]),
            "unpatched": (s["before"], np.nan, np.nan),
            f"layer {s['source_layer']} itself": (s["source_score"], np.nan, np.nan),
        }
        curve = pd.concat(
            [
                pd.DataFrame(
                    {
                        "label": s["label"],
                        "layer": t["target_layer"],
                        "component": "resid",
                        "control": control,
                        "score": score,
                        "ci_low": low,
                        "ci_high": high,
                    }
                )
                for control, (score, low, high) in rows.items()
            ],
            ignore_index=True,
        )
        return layer_curve_chart(curve, metric=f"{s['metric']} at layer {s['readout_layer']}")


@dataclass(frozen=True)
class RecoverySpec:
    """A checked ``recovery=`` request; ``None`` layers take collapse's peak and final."""

    model: Model
    task: Task
    source_layer: int | None = None
    target_layers: tuple[int, ...] | None = None
    readout_layer: int | None = None
    batch_size: int = 128
    resamples: int = 1000
    level: float = 0.95
    seed: int = 0

    @classmethod
    def parse(cls, value: Any, model: Model | None = None, task: Any = None) -> RecoverySpec:
        """From a mapping (``dict(model=..., task=..., source_layer=..., ...)``), or True to
        use ``model`` and ``task`` (a run config's own) with every default."""
        given = {} if value is True else value
        if not isinstance(given, Mapping):
            raise SpecError(
                f"recovery must be a mapping such as dict(model=model, task=task), got "
                f"{type(value).__name__}"
            )
        unknown = sorted(set(given) - set(RECOVERY_KEYS))
        if unknown:
            raise SpecError(
                f"unknown recovery key(s) {', '.join(unknown)}; allowed: {', '.join(RECOVERY_KEYS)}"
            )
        model, task = given.get("model", model), given.get("task", task)
        if model is None or not isinstance(task, Task):
            raise SpecError(
                "recovery patches the model: pass recovery=dict(model=model, task=task) with "
                "the model and Task the cube was extracted from"
            )
        target = given.get("target_layer")
        options = {k: given[k] for k in ("batch_size", "resamples", "level", "seed") if k in given}
        return cls(
            model,
            task,
            given.get("source_layer"),
            None if target is None else tuple(np.atleast_1d(target).tolist()),
            given.get("readout_layer"),
            **options,
        )

    def params(self) -> dict[str, Any]:
        """JSON-safe parameters for a bundle."""
        return {
            "model": getattr(self.model, "name", type(self.model).__name__),
            "task": self.task.name,
            "source_layer": self.source_layer,
            "target_layer": None if self.target_layers is None else list(self.target_layers),
            "readout_layer": self.readout_layer,
            "resamples": self.resamples,
            "level": self.level,
            "seed": self.seed,
        }

    def run(self, label: str, peak_layer: int, final_layer: int) -> RecoveryResult:
        """:func:`recovery_test` with collapse's peak and final layers as defaults."""
        return recovery_test(
            self.model,
            self.task,
            label,
            source_layer=peak_layer if self.source_layer is None else self.source_layer,
            target_layers=self.target_layers,
            readout_layer=final_layer if self.readout_layer is None else self.readout_layer,
            batch_size=self.batch_size,
            resamples=self.resamples,
            level=self.level,
            seed=self.seed,
        )


def recovery_test(
    model: Model,
    task: Task,
    label: str,
    *,
    source_layer: int,
    target_layers: int | Sequence[int] | None = None,
    readout_layer: int | None = None,
    batch_size: int = 128,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> RecoveryResult:
    """Patch the residual stream after block ``source_layer`` into later layers and probe
    ``label`` at ``readout_layer`` before and after.

    Parameters
    ----------
    model : from :func:`mechwidgets.load_model` (any family; no output head needed).
    task : the samples, labels, splits and read positions (all samples are run).
    label : the feature to decode.
    source_layer : the layer whose residual stream is patched in (e.g. collapse's peak).
    target_layers : layers whose residual stream is replaced; default every layer strictly
        between source and readout.
    readout_layer : where decodability is measured; default the model's last layer.
    batch_size : prompts per forward pass.
    resamples, level, seed : paired bootstrap over test items for the intervals.

    Returns
    -------
    A :class:`RecoveryResult`, one row per target layer: ``before``, ``after``, ``change``
    with ``ci_low``/``ci_high`` and ``p_value`` (one-sided, change > 0), ``returns`` and
    ``recovered_share``.
    """
    layers = dict(source_layer=source_layer, target_layers=target_layers)
    given = layers | dict(readout_layer=readout_layer, batch_size=batch_size)
    check_params("recovery", given | dict(label=label, resamples=resamples, level=level))
    task.classes(label)  # a one-line TaskError for an unknown label
    last = model.shape.n_layers - 1
    readout = last if readout_layer is None else int(readout_layer)
    if target_layers is None:
        targets = tuple(range(source_layer + 1, readout))
    else:
        targets = tuple(int(t) for t in np.atleast_1d(target_layers))
    _check_layers(source_layer, targets, readout, last)
    streams = patched_readouts(model, task, source_layer, targets, readout, batch_size).streams
    y, split = np.asarray(task.labels[label]), np.asarray(task.split)
    probes = [fit_probe(x, y, split) for x in streams]
    test = split == "test"
    metric = probes[0].metric
    outputs = np.stack(
        [
            p.encoding.output(p.decision(x[test]), metric)[:, 0]
            for x, p in zip(streams, probes, strict=True)
        ],
        axis=1,
    )
    truth = probes[0].encoding.encode(y[test])
    weights = bootstrap_weights(int(test.sum()), resamples, np.random.default_rng([seed, 17]))
    boot = batch_score(metric, truth, outputs, weights)  # (resamples, 2 + targets)
    scores = np.array([p.test_score for p in probes])
    return _result(label, metric, source_layer, targets, readout, scores, boot, level)


def _check_layers(source: int, targets: tuple[int, ...], readout: int, last: int) -> None:
    layers = {"source_layer": source, "readout_layer": readout}
    for name, layer in [*layers.items(), *(("target_layer", t) for t in targets)]:
        if not isinstance(layer, int | np.integer) or not 0 <= layer <= last:
            raise SpecError(f"{name} {layer!r} is not a block of the model (0-{last})")
    if not targets:
        raise SpecError(
            f"no layer between source_layer {source} and readout_layer {readout} to patch "
            "into; choose an earlier source or a later readout, or give target_layer"
        )
    bad = [t for t in targets if not source < t < readout]
    if bad:
        raise SpecError(
            f"target_layer {bad[0]} must lie after source_layer {source} and before "
            f"readout_layer {readout} (patching at the readout layer returns the source's "
            "representation by construction)"
        )


def _result(
    label: str,
    metric: str,
    source: int,
    targets: tuple[int, ...],
    readout: int,
    scores: np.ndarray,
    boot: np.ndarray,
    level: float,
) -> RecoveryResult:
    """Per target layer: change with its paired interval, p-value and recovered share.

    ``scores`` and ``boot``'s columns are the test scores of the probes on the
    :class:`~mechwidgets.intervene.readouts.Readouts` streams: before, source, then after
    each target.
    """
    before, src, after = float(scores[0]), float(scores[1]), scores[2:]
    diff = boot[:, 2:] - boot[:, :1]  # paired: the same resampled test items
    low, high = percentile_interval(diff.T, level)
    after_low, after_high = percentile_interval(boot[:, 2:].T, level)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(src != before, (after - before) / (src - before), np.nan)
    table = pd.DataFrame(
        {
            "label": label,
            "source_layer": source,
            "target_layer": list(targets),
            "readout_layer": readout,
            "before": before,
            "after": after,
            "change": after - before,
            "ci_low": low,
            "ci_high": high,
            "p_value": bootstrap_pvalue(diff.T),
            "returns": low > 0,
            "recovered_share": share,
            "after_ci_low": after_low,
            "after_ci_high": after_high,
            "source_score": src,
        }
    )
    data = xr.Dataset.from_dataframe(table.set_index("target_layer").drop(columns="label"))
    data.attrs = {
        "label": label,
        "metric": metric,
        "source_layer": source,
        "readout_layer": readout,
        "source_score": src,
        "before": before,
        "level": level,
        "returns_means": (
            f"the readout probe's test {metric} after patching minus before has a "
            f"{level:.0%} paired bootstrap interval above 0"
        ),
    }
    return RecoveryResult(
        action="recovery",
        data=data,
        table=table,
        params={
            "label": label,
            "source_layer": source,
            "target_layers": list(targets),
            "readout_layer": readout,
            "level": level,
        },
    )


class Recovery(ModelAction):
    """Does a feature lost with depth return when an earlier residual stream is patched in?"""

    def needs(self, params: Mapping[str, Any]) -> Needs:
        """A model and a task; no cube (``label`` and ``source_layer`` are required
        parameters, so a config without them fails when parsed)."""
        return Needs(cube=False)
