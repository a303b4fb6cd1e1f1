"""polysemantic: does one neuron load on several unrelated features?

For every MLP neuron of every layer (the cube's ``neurons`` variable) and every feature:

- ``loading``: how the neuron's activity follows the feature, in correlation units: the
  activation pattern of a linear probe (Haufe et al. 2014), as the neuron's standardised
  partial regression on all features (see :mod:`mechwidgets.analysis.neurons` for why the
  pattern and not the decoder weights); ``loading_z`` and ``p_value`` test it as a rank
  statistic (the same loading on normal scores, so heavy-tailed activations and features
  cannot fake significance) against its exact shuffled-label null, and ``p_perm`` from
  sampled shuffles of that statistic is a check;
- ``cosine`` and ``mass``: how the feature's probe direction (ridge on the standardised
  neurons, strength chosen on the val split) sits on the neuron's basis vector;
- ``auroc``: the neuron's selectivity for a 0/1 feature, a rank-based cross-check.

The multi-feature loading index is each neuron's second-largest ``|loading|``. A neuron is
polysemantic when at least two features load on it at ``|loading| >= threshold``, tested
by Benjamini & Heller's partial conjunction and corrected (Holm by default) across every
neuron of every layer. ``res.shortlist`` lists those neurons, most polysemantic first.

>>> res = mw.polysemantic(model, task, labels=["subject_number", "animacy", "sentiment"])
>>> res.shortlist.head(), res.chart()
>>> mw.polysemantic(cube, labels=["a", "b", "c"], threshold=0.3, correction="bh")
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import xarray as xr

from mechwidgets.actions.base import ActionResult, ResultAction, RunContext, call_action
from mechwidgets.analysis.neurons import (
    auroc,
    count_features,
    decoder_alignment,
    feature_loadings,
    loading_index,
    rank_test,
    two_sided_p,
)
from mechwidgets.analysis.statistics import permutation_pvalue, score
from mechwidgets.cluster import map_slices
from mechwidgets.core.components import LayerComponent
from mechwidgets.core.errors import SpecError
from mechwidgets.core.registry import Needs
from mechwidgets.extract.cube import NEURONS, activations_index, check_cube, check_finite
from mechwidgets.probes.controls import shuffled_labels
from mechwidgets.probes.linear import (
    Standardizer,
    blas_threads_for,
    fit_select_predict,
    make_path,
)
from mechwidgets.probes.sweep import (
    CubeView,
    Protocol,
    label_names,
    read_cube,
    resolve_labels,
)

if TYPE_CHECKING:
    from mechwidgets.models.loading import Model

DEFAULT_THRESHOLD = 0.2
#: the per-(layer, feature, neuron) numbers of a result
_PER_FEATURE = ("loading", "loading_z", "p_value", "p_perm", "cosine", "mass", "auroc")
#: neurons drawn in the chart when none is flagged (the highest loading indices)
CHART_FALLBACK = 10
#: most neurons a heatmap draws: the top of the shortlist, so a notebook output stays small
CHART_MAX = 40
#: the random stream of the shuffled labellings, per seed
_SHUFFLE_STREAM = 7
#: the random stream that breaks ties in the neurons' ranks, per layer
_TIE_STREAM = 8


@dataclass(frozen=True)
class NeuronPlan:
    """What ``run`` needs, checked in ``prepare``."""

    cube: xr.Dataset
    view: CubeView
    labels: tuple[str, ...]
    layers: tuple[int, ...]
    protocol: Protocol
    threshold: float

    def params(self) -> dict[str, Any]:
        """The run's parameters, for the bundle."""
        p = self.protocol
        return {
            "labels": list(self.labels),
            "layers": list(self.layers),
            "threshold": self.threshold,
            "seeds": list(p.seeds),
            "permutations": p.permutations,
            "strengths": list(p.strengths),
            "probe": p.probe,
            "level": p.level,
            "correction": p.correction,
        }


@dataclass(frozen=True)
class LayerStats:
    """One layer's numbers: per (feature, neuron) those named in :data:`_PER_FEATURE`,
    per feature its probe's score and strength, and the sampled shuffles' sum of squared
    z-scores with how many were finite (summed over layers, the null's spread)."""

    loading: np.ndarray
    loading_z: np.ndarray
    p_value: np.ndarray
    p_perm: np.ndarray
    cosine: np.ndarray
    mass: np.ndarray
    auroc: np.ndarray
    probe_score: np.ndarray
    probe_alpha: np.ndarray
    null_sq: float
    null_count: int


class PolysemanticResult(ActionResult):
    """Per-neuron loadings, the multi-feature loading index and the polysemantic shortlist.

    ``table`` has one row per (layer, neuron), most polysemantic first; ``data`` holds every
    number by ``layer``, ``feature`` and ``neuron``.
    """

    @property
    def shortlist(self) -> pd.DataFrame:
        """The flagged neurons: layer, neuron, loading index, features, p-values, loadings."""
        rows = self.table[self.table["polysemantic"]]
        return rows.drop(columns="polysemantic").reset_index(drop=True)

    @property
    def loadings(self) -> pd.DataFrame:
        """One row per (layer, neuron, feature): loading, its z and p-values, the probe
        direction's cosine and mass, and the AUROC."""
        cols = list(_PER_FEATURE)
        return self.data[cols].to_dataframe().reset_index()[["layer", "neuron", "feature", *cols]]

    def summary(self) -> dict[str, Any]:
        """Counts, the top of the shortlist, probe scores and the null's calibration."""
        d = self.data
        top = self.shortlist.head(5)
        return {
            "labels": [str(f) for f in d["feature"].values],
            "layers": [int(v) for v in d["layer"].values],
            "n_neurons": int(np.isfinite(d["loading_index"]).sum()),
            "n_polysemantic": int(d["polysemantic"].sum()),
            "threshold": float(d.attrs["threshold"]),
            "correction": str(d.attrs["correction"]),
            "level": float(d.attrs["level"]),
            "top": [
                {
                    "layer": int(r["layer"]),
                    "neuron": int(r["neuron"]),
                    "loading_index": float(r["loading_index"]),
                    "features": str(r["features"]),
                    "p_adj": float(r["p_adj"]),
                }
                for _, r in top.iterrows()
            ],
            "probe_score": {
                str(f): {int(k): float(v) for k, v in zip(d["layer"].values, row, strict=True)}
                for f, row in zip(
                    d["feature"].values,
                    d["probe_score"].transpose("feature", "layer").values,
                    strict=True,
                )
            },
            "null_sd": float(d.attrs["null_sd"]),
            "permutations": int(d.attrs["draws"]),
        }

    def verdict(self) -> str:
        """E.g. "2 of 2048 neurons load on 2+ of 4 features (...): top layer 3 neuron 7 ..."."""
        s = self.summary()
        rule = (
            f"{s['correction']}-adjusted p < {1 - s['level']:.2g}, |loading| >= {s['threshold']:g}"
        )
        scope = f"of {s['n_neurons']} neurons load on 2+ of {len(s['labels'])} features ({rule})"
        if s["top"]:
            t = s["top"][0]
            return (
                f"{s['n_polysemantic']} {scope}: top layer {t['layer']} neuron {t['neuron']} "
                f"({t['features']}; index {t['loading_index']:.2f}, p_adj {t['p_adj']:.2g})"
            )
        best = self.table.iloc[0]
        return (
            f"none {scope}; highest index: layer {int(best['layer'])} neuron "
            f"{int(best['neuron'])} ({best['loading_index']:.2f})"
        )

    def chart(self) -> Any:
        """Neuron x feature heatmap of loadings for the shortlist (or the top indices)."""
        return self._heatmap("loading", "loading (partial correlation)", [-1.0, 1.0])

    def charts(self) -> dict[str, Any]:
        """The loading heatmap and the same neurons' AUROC per feature."""
        return {"main": self.chart(), "auroc": self._heatmap("auroc", "AUROC", [0.0, 1.0])}

    def _heatmap(self, value: str, title: str, domain: list[float]) -> Any:
        from mechwidgets.viz.charts import heatmap

        shown = (self.shortlist if len(self.shortlist) else self.table).head(
            CHART_MAX if len(self.shortlist) else CHART_FALLBACK
        )
        keys = list(zip(shown["layer"], shown["neuron"], strict=True))
        long = self.loadings.set_index(["layer", "neuron"]).loc[keys].reset_index()
        long["unit"] = [
            str(LayerComponent("neuron", int(la), neuron=int(ne)))
            for la, ne in zip(long["layer"], long["neuron"], strict=True)
        ]
        if not len(self.shortlist):
            note = f" — none flagged, top {len(shown)} by index"
        elif len(self.shortlist) > len(shown):
            note = f" — top {len(shown)} of {len(self.shortlist)} flagged"
        else:
            note = ""
        return heatmap(long, x="feature", y="unit", value=value, title=title + note, domain=domain)


class Polysemantic(ResultAction):
    """Does one neuron load on several unrelated features? Loadings, index, shortlist."""

    name = "polysemantic"

    def needs(self, params: Mapping[str, Any]) -> Needs:
        """A cube with MLP neurons, so the runner's one extraction serves it."""
        return Needs(neurons=True)

    def prepare(self, context: RunContext) -> NeuronPlan:
        """Check the cube (extracting neurons from a model and task if needed) and labels."""
        # the null is always the label shuffle; the probe controls of detect do not apply
        ctx = context.evolve(controls=["label_shuffle"])
        protocol, options = Protocol.from_context(ctx, own={"label", "labels", "threshold"})
        cube = _neuron_cube(context, protocol)
        wanted = options.get("labels") or options.get("label")
        labels = tuple(label_names(cube)) if wanted is None else resolve_labels(cube, wanted)
        if len(labels) < 2:
            raise SpecError(
                f"polysemanticity needs at least 2 features, got {len(labels)} "
                f"({', '.join(labels) or 'none'}); pass labels=[...] with two or more"
            )
        view = read_cube(_per_sample(cube), labels, replace(protocol, layers=None))
        for name, lab in view.labels.items():
            if lab.encoding.kind == "multiclass":
                raise SpecError(
                    f"label '{name}' has {lab.encoding.classes.size} classes; polysemantic "
                    "takes 0/1 or continuous features: make one 0/1 label per class of interest"
                )
        present = [int(v) for v in cube["layer"].values]
        missing = sorted(set(protocol.layers or ()) - set(present))
        if missing:
            raise SpecError(f"layer(s) {missing} not in the cube's neurons; it has {present}")
        threshold = options.get("threshold", DEFAULT_THRESHOLD)
        if not isinstance(threshold, int | float) or not 0 <= threshold < 1:
            raise SpecError(f"bad value {threshold!r} for 'threshold': use a number in [0, 1)")
        layers = tuple(v for v in present if protocol.layers is None or v in protocol.layers)
        return NeuronPlan(cube, view, labels, layers, protocol, float(threshold))

    def run(self, prepared: NeuronPlan) -> PolysemanticResult:
        """Loadings, probes and the null per layer; then the index and the corrected test."""
        plan = prepared
        n = plan.cube.sizes["sample"]
        orders = np.concatenate(
            [
                shuffled_labels(np.arange(n), np.zeros(n), plan.protocol.permutations, rng)
                for rng in (
                    np.random.default_rng([s, _SHUFFLE_STREAM]) for s in plan.protocol.seeds
                )
            ],
            axis=1,
        )
        # on a dask client (mechwidgets.cluster.using) each layer is a task on a worker
        light = replace(plan, cube=xr.Dataset(), view=replace(plan.view, cube=xr.Dataset()))
        keys = [(layer,) for layer in plan.layers]
        with blas_threads_for(n * plan.cube.sizes["neuron"]):
            done = dict(map_slices(plan.cube, _layer_on, keys, light, orders))
        per_layer = [done[key] for key in keys]
        data = _assemble(plan, per_layer, orders.shape[1])
        return PolysemanticResult(
            action="polysemantic",
            data=data,
            table=_neuron_table(data),
            params=plan.params(),
            activations=activations_index(plan.cube, NEURONS),
        )


def _neuron_cube(context: RunContext, protocol: Protocol) -> xr.Dataset:
    """The context's cube, or one extracted from its model and task with neurons."""
    cube = context.cube
    has_neurons = isinstance(cube, xr.Dataset) and NEURONS in cube.data_vars
    if not has_neurons and context.model is not None and context.task is not None:
        from mechwidgets.extract.extractor import extract

        layers = list(protocol.layers) if protocol.layers else "all"
        return extract(
            context.model, context.task, layers=layers, components=["resid"], neurons=True
        )
    if cube is None:
        raise SpecError("polysemantic needs a cube with neurons, or a model and a task")
    check_cube(cube, need=NEURONS)
    return cast(xr.Dataset, cube)


def _per_sample(cube: xr.Dataset) -> xr.Dataset:
    """The cube's per-sample variables with an empty ``act``, for :func:`read_cube`.

    read_cube owns the rules for splits and labels; it also insists on an ``act`` variable,
    which a neurons-only cube need not have, and its layers are not the neurons' anyway.
    """
    names = [str(k) for k, v in cube.variables.items() if v.dims == ("sample",)]
    empty = np.zeros((cube.sizes["sample"], 0, 0, 0), np.float32)
    return cube[names].assign(act=(("sample", "layer", "component", "dim"), empty))


def _layer_on(cube: xr.Dataset, layer: int, plan: NeuronPlan, orders: np.ndarray) -> LayerStats:
    """:func:`_layer_stats` over ``cube`` (a worker's own opening of the plan's cube)."""
    return _layer_stats(replace(plan, cube=cube), layer, orders)


def _layer_stats(plan: NeuronPlan, layer: int, orders: np.ndarray) -> LayerStats:
    """Every per-(feature, neuron) number of one layer, its probes' scores and its null."""
    x = check_finite(
        np.asarray(
            plan.cube[NEURONS].sel(layer=layer).transpose("sample", "neuron").values, np.float64
        ),
        f"neurons at layer {layer}",
    )
    labs = [plan.view.labels[name] for name in plan.labels]
    y = np.stack([lab.codes.astype(np.float64) for lab in labs], axis=1)
    load = feature_loadings(x, y, list(plan.labels))
    # the test runs on normal scores (rank-based), whose Gaussian tail holds under heavy tails
    ties = np.random.default_rng([plan.protocol.seeds[0], _TIE_STREAM, layer])
    test = rank_test(x, y, ties, list(plan.labels))
    z = test.z
    null = test.shuffled(orders)  # (draws, features, neurons)
    p_perm = permutation_pvalue(np.abs(z), np.abs(np.moveaxis(null, 0, -1)))
    p_perm[np.isnan(z)] = np.nan
    weights, probe_score, alpha = _probes(plan, x)
    cosine, mass = decoder_alignment(weights)
    selectivity = np.stack(
        [
            auroc(x, lab.codes) if lab.encoding.kind == "binary" else np.full(x.shape[1], np.nan)
            for lab in labs
        ]
    )
    selectivity[:, ~load.valid] = np.nan
    return LayerStats(
        loading=load.beta,
        loading_z=z,
        p_value=two_sided_p(z),
        p_perm=p_perm,
        cosine=cosine.T,
        mass=mass.T,
        auroc=selectivity,
        probe_score=probe_score,
        probe_alpha=alpha,
        null_sq=float(np.nansum(null**2)),
        null_count=int(np.isfinite(null).sum()),
    )


def _probes(plan: NeuronPlan, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One probe per feature on the layer's standardised neurons, sharing one factorisation.

    Returns the weights ``(neurons, features)`` on standardised neurons, each probe's test
    score and its chosen strength (validation split).
    """
    tr, va, te = plan.view.masks
    xs = Standardizer.fit(x[tr]).transform(x)
    path = make_path(plan.protocol.probe, xs[tr][None], np.float32)
    proj_val, proj_test = path.project(xs[va][None]), path.project(xs[te][None])
    alphas = np.asarray(plan.protocol.strengths) * tr.sum()
    weights, scores, chosen = [], [], []
    for name in plan.labels:
        lab = plan.view.labels[name]
        codes = lab.codes[:, None]
        fit = fit_select_predict(
            path, proj_val, proj_test, codes[tr][None], codes[va][None],
            lab.encoding, lab.metric, alphas,
        )  # fmt: skip
        out = lab.encoding.output(fit.test_decision, lab.metric)[0, :, 0]
        scores.append(score(lab.metric, codes[te, 0], out))
        path.fit(lab.encoding.targets(codes[tr][None]), alphas)
        weights.append(path.weights(fit.alpha_index)[0, :, 0])
        chosen.append(alphas[fit.alpha_index[0, 0]])
    return np.stack(weights, axis=1), np.array(scores), np.array(chosen)


def _assemble(plan: NeuronPlan, per_layer: list[LayerStats], draws: int) -> xr.Dataset:
    """Stack the layers, count loading features per neuron (corrected over all) and index."""
    stacked = (*_PER_FEATURE, "probe_score", "probe_alpha")
    stack = {k: np.stack([getattr(s, k) for s in per_layer]) for k in stacked}
    null_sq, null_count = np.array([(s.null_sq, s.null_count) for s in per_layer]).sum(axis=0)
    n_layer, n_feat, n_neuron = stack["loading"].shape
    flat = {k: np.moveaxis(stack[k], 1, -1).reshape(-1, n_feat) for k in ("p_value", "loading")}
    count = count_features(
        flat["p_value"], flat["loading"], plan.threshold, plan.protocol.level,
        plan.protocol.correction,
    )  # fmt: skip
    names = np.array(plan.labels)
    features = [", ".join(names[o[:k]]) for o, k in zip(count.order, count.n_features, strict=True)]
    dims3, dims2 = ("layer", "feature", "neuron"), ("layer", "neuron")
    per_neuron = {
        "loading_index": loading_index(stack["loading"], axis=1),
        "n_features": count.n_features,
        "features": np.array(features, dtype=object),
        "poly_p": count.pvalues[:, 1],
        "poly_p_adj": count.adjusted[:, 1],
        "polysemantic": count.n_features >= 2,
    }
    data = xr.Dataset(
        {
            **{k: (dims3, stack[k]) for k in _PER_FEATURE},
            **{k: (dims2, np.reshape(v, (n_layer, n_neuron))) for k, v in per_neuron.items()},
            "probe_score": (("layer", "feature"), stack["probe_score"]),
            "probe_alpha": (("layer", "feature"), stack["probe_alpha"]),
        },
        coords={
            "layer": list(plan.layers),
            "feature": list(plan.labels),
            "neuron": plan.cube["neuron"].values,
        },
    )
    data.attrs = {
        "threshold": plan.threshold,
        "correction": plan.protocol.correction,
        "level": plan.protocol.level,
        "draws": draws,
        # the sampled shuffles' z-scores should have unit spread (exact null moments)
        "null_sd": float(np.sqrt(null_sq / null_count)),
        "loading": "standardised partial regression of each neuron on all features",
        "p_value": "two-sided, normal-scores (rank) loading, exact permutation moments, "
        "normal tail",
        "p_perm": f"two-sided, {draws} sampled label shuffles",
        "poly_p": "partial conjunction (Benjamini-Heller, Bonferroni) for >= 2 features",
    }
    return data


def _neuron_table(data: xr.Dataset) -> pd.DataFrame:
    """One row per (layer, neuron): flagged first, then by loading index (undefined last)."""
    cols = ["loading_index", "n_features", "features", "poly_p", "poly_p_adj", "polysemantic"]
    table = data[cols].to_dataframe().reset_index()
    table = table.rename(columns={"poly_p": "p_value", "poly_p_adj": "p_adj"})
    wide = (
        data["loading"]
        .to_dataframe()
        .reset_index()
        .pivot(index=["layer", "neuron"], columns="feature", values="loading")
    )
    wide = wide[list(data["feature"].values)]
    wide.columns = [f"loading[{f}]" for f in wide.columns]
    table = table.merge(wide.reset_index(), on=["layer", "neuron"])
    table["polysemantic"] = table["polysemantic"].astype(bool)
    table = table.sort_values(
        ["polysemantic", "loading_index", "layer", "neuron"],
        ascending=[False, False, True, True],
        na_position="last",
        kind="stable",
    )
    return table.reset_index(drop=True)


def polysemantic(
    source: xr.Dataset | Model,
    task: Any = None,
    labels: str | Iterable[str] | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    permutations: int = 200,
    seeds: int = 1,
    seed: int = 0,
    client: Any = None,
    **params: Any,
) -> PolysemanticResult:
    """Which MLP neurons load on two or more of ``labels``?

    Parameters
    ----------
    source : a cube with a ``neurons`` variable, or a model from :func:`mw.load_model`
        (then ``task`` is required and neurons are extracted at the task's positions).
    task : the Task to run the model on (with a model).
    labels : two or more 0/1 or continuous labels; default all labels of the cube.
    threshold : smallest ``|loading|`` (correlation units) that counts a feature.
    permutations : sampled label shuffles per seed, for ``p_perm`` and the null check.
    seeds, seed : how many shuffle seeds, and the first.
    client : a ``dask.distributed.Client``: each layer is tested on a worker, which opens
        the cube's file itself (:mod:`mechwidgets.cluster`); the same numbers as without.
    **params : ``layers``, ``level`` (0.95), ``correction`` (``holm``/``bh``), ``probe``
        (``ridge``/``logistic``), ``strengths``, ``metric``.

    Returns
    -------
    A :class:`PolysemanticResult`; ``.shortlist`` holds the flagged neurons, most
    polysemantic first, ``.loadings`` every (layer, neuron, feature) number.

    Examples
    --------
    >>> res = polysemantic(model, task, labels=["subject_number", "sentiment", "tense"])
    >>> res.shortlist[["layer", "neuron", "loading_index", "features", "p_adj"]]
    """
    from mechwidgets.models.loading import Model

    given = {
        "labels": labels,
        "threshold": threshold,
        "permutations": permutations,
        "seeds": seeds,
        **params,
    }
    if isinstance(source, Model):
        if task is None:
            raise SpecError(
                "with a model, pass the task to run it on: polysemantic(model, task, ...)"
            )
        context = RunContext(model=source, task=task, params=given, seed=seed)
    else:
        if task is not None:
            raise SpecError("task= goes with a model; a cube already holds its samples and labels")
        context = RunContext(cube=source, params=given, seed=seed)
    return cast(PolysemanticResult, call_action("polysemantic", context, client))
