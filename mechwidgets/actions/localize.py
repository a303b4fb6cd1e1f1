"""``localize``: which layers, components and heads carry a feature and matter causally.

Probing says where a feature can be read; only an intervention says where the model uses
it. ``localize`` does both: it probes every candidate (residual stream, attention and MLP
writes, per-head writes) at the task's read token, keeps the ``top_k`` best decoded, and
knocks each out (zero, mean or resample ablation, or noising: patching in the activation
of a corrupt prompt, or without one of a sample of the label's other class). For
each it measures two drops side by side, each with a simultaneous bootstrap interval over
the samples: the behaviour metric (e.g. the is/are logit difference, or the log-prob of
the repeated tokens) and a probe metric (``probe=mw.metrics.probe(...)``; with a label and
none given, the accuracy of a probe read after the last block). Without a label (e.g. the
induction task) every candidate is intervened on and ranked by causal effect alone. A
model without an output head (an encoder loaded with ``AutoModel``) has no logits: its
candidates are ranked by the probe metric's drop, and a logit behaviour given explicitly
is refused before any forward pass.
Residual streams are ablated at the read token only (ablating a whole stream at every
position removes the input itself); attention, MLP and head writes at every position.

>>> res = mw.localize(model, mw.get_task("subject_number"), label="subject_number")
>>> res.ranking.head(), res.impact_matrix
>>> mw.localize(model, mw.get_task("induction"), components=["head"])  # task's own metric
>>> mw.localize(encoder, task, label="number", probe=mw.metrics.probe(det, cube=cube))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from mechwidgets.actions.base import ActionResult, ModelAction
from mechwidgets.analysis.statistics import bootstrap_weights, simultaneous_interval
from mechwidgets.core.components import (
    COMPONENT_ORDER,
    INTERVENED,
    STREAMS,
    LayerComponent,
    table_components,
)
from mechwidgets.core.errors import SpecError, TaskError
from mechwidgets.core.params import INTERVENTIONS
from mechwidgets.core.registry import Needs, check_params
from mechwidgets.data.catalog import PromptPairs
from mechwidgets.data.tasks import Task
from mechwidgets.extract.extractor import extract
from mechwidgets.intervene.edits import READ, Cell, capture, run_cells
from mechwidgets.intervene.metrics import LogitDiff, ProbeReadout, describe, orientation, probe
from mechwidgets.intervene.pairs import check_lengths, clean_and_corrupt
from mechwidgets.intervene.prompts import Prompts
from mechwidgets.intervene.scoring import Scorer, bind, output_head
from mechwidgets.intervene.sites import components_of
from mechwidgets.intervene.sources import Source, ablation_source
from mechwidgets.probes.linear import LinearProbe, fit_probe
from mechwidgets.viz.charts import heatmap

if TYPE_CHECKING:
    from mechwidgets.models.loading import Model

#: what a metric measures in a localize run: the behaviour, or a probe's readout (the
#: ``metric`` column of ``impact`` and the prefix of the ranking's drop columns)
Role = Literal["behavior", "probe"]


def localize(
    model: Model,
    task: Task | PromptPairs,
    label: str | None = None,
    *,
    behavior: Any = None,
    probe: ProbeReadout | Any = None,
    components: str | Sequence[str] = INTERVENED,
    top_k: int = 8,
    interventions: Sequence[str] | None = None,
    corrupt: Sequence[str] | None = None,
    n: int = 200,
    rank_by: str | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    cube: xr.Dataset | None = None,
) -> LocalizeResult:
    """Rank components by probe score and causal effect on a behaviour.

    Parameters
    ----------
    model : from :func:`mechwidgets.load_model`.
    task : a Task, or PromptPairs (clean prompts as samples, their corrupt prompts for
        ``patch``, the clean-minus-corrupt answer logit difference as behaviour).
    label : the feature to probe; None skips probing and intervenes on every candidate.
    behavior : the metric (:mod:`mechwidgets.intervene.metrics`); default the task's own. A logit
        difference of two fixed words with a label (``logit_diff("is", "are")`` on subject
        number) is signed per class, by the sign of its clean mean in that class, so the
        drop measures lost preference for the right word in both classes. On a model
        without an output head the task's own (logit) behaviour is skipped.
    probe : a probe or hidden-state metric (:func:`~mechwidgets.intervene.metrics.probe`,
        :func:`~mechwidgets.intervene.metrics.hidden`) whose drop is reported beside the
        behaviour's; default, with a label, the accuracy of a probe fitted after the last
        block.
    components : kinds ``resid``, ``attn``, ``mlp``, ``head``, ``neuron`` or selectors
        such as ``"head:1.*"``.
    top_k : with a label, how many of the best-decoded candidates to intervene on
        (neurons, which are not probed, are always intervened on).
    interventions : among ``zero``, ``mean``, ``resample`` and ``patch`` (noising: the
        activation of the sample's corrupt prompt, ``patch:noise(corrupt)``, or without
        corrupt prompts of a sample of another class of ``label`` with at least as many
        tokens, ``patch:noise(other-class)``); default the three ablations, plus
        ``patch`` when corrupt prompts or a label are given.
    corrupt : one corrupt prompt per task sample (same token counts), for ``patch``.
    n : most samples to intervene on (the test split when probing).
    rank_by : the intervention that orders the ranking; default ``mean`` or the first.
    resamples, level, seed : bootstrap over samples for simultaneous intervals.
    cube : an activation cube of ``task`` to probe on (the runner passes its own); used
        when it holds every probed candidate and the last layer's residual stream, else
        one is extracted at the task's read positions.

    Returns
    -------
    LocalizeResult with ``ranking``, ``impact`` and charts. Candidates are ranked by the
    behaviour's drop, or by the probe metric's where there is no behaviour.

    Examples
    --------
    >>> res = mw.localize(model, task, label="subject_number", top_k=8,
    ...                   interventions=["zero", "mean", "resample"])
    """
    given = dict(label=label, behavior=behavior, probe=probe, components=components, top_k=top_k)
    given |= dict(interventions=interventions, corrupt=corrupt, n=n, rank_by=rank_by)
    check_params("localize", given | dict(resamples=resamples, level=level))
    task, corrupt = _as_task(task, corrupt)
    kinds = _interventions(interventions, corrupt is not None, label is not None)
    names = {k: k if k != "patch" else _patch_name(corrupt is not None) for k in kinds}
    rank_by = rank_by or ("mean" if "mean" in kinds else kinds[0])
    if rank_by not in kinds:
        raise SpecError(f"rank_by '{rank_by}' is not among the interventions {list(kinds)}")
    candidates = components_of(model, components)
    if label is not None:
        task.classes(label)  # raises a one-line TaskError for an unknown label
        samples = task.indices("test")[:n]
    else:
        samples = np.arange(min(n, len(task)))
    if len(samples) < 2:
        raise TaskError(f"localize needs at least 2 samples to intervene on, got {len(samples)}")
    # every check that needs no forward pass comes first: the prompts, the metrics bound to
    # them (an output head, labels, layers) and the corrupt prompts' token counts
    prompts = _prompts(model, task, [task.texts[i] for i in samples], samples)
    bad = None
    if "patch" in kinds and corrupt is not None:
        bad = _prompts(model, task, [corrupt[i] for i in samples], samples)
        check_lengths(prompts, bad)
    metrics = _metrics(model, task, behavior, probe, label)
    scorers = {what: bind(m, model, prompts) for what, m in metrics.items()}
    if label is not None:
        scores, readout = _probe(model, task, label, candidates, cube)
        tested = _top(candidates, scores, top_k)
        if "probe" not in metrics:
            metrics["probe"] = probe_of(readout, model.shape.n_layers - 1, task.labels[label])
            scorers["probe"] = bind(metrics["probe"], model, prompts)
    else:
        scores, tested = {}, list(candidates)
    effects = _intervene(model, task, metrics, scorers, prompts, bad, tested, kinds, label, seed)
    probe_metric = metrics.get("probe")
    return _result(
        model, task, label, candidates, tested, scores, effects, names, rank_by, samples,
        resamples, level, seed, getattr(probe_metric, "component", None),
        top_k=top_k if label is not None else None,  # used only when probing picks the tested
    )  # fmt: skip


def _as_task(task: Task | PromptPairs, corrupt: Sequence[str] | None) -> tuple[Task, Any]:
    """A Task and its corrupt prompts (from PromptPairs, or as given)."""
    if not isinstance(task, Task | PromptPairs):
        raise TaskError(f"localize takes a Task or PromptPairs, got {type(task).__name__}")
    return clean_and_corrupt(task, corrupt)


def _prompts(model: Model, task: Task, texts: list[str], samples: np.ndarray) -> Prompts:
    positions = None if task.positions is None else np.asarray(task.positions)[samples]
    return Prompts.build(model, texts, positions, samples, len(task))


def _metrics(
    model: Model, task: Task, behavior: Any, probe_metric: Any, label: str | None
) -> dict[Role, Any]:
    """``behavior`` and ``probe`` metrics by role; the task's own behaviour by default,
    skipped on a model without an output head when a probe metric or label stands in."""
    metrics: dict[Role, Any] = {}
    if probe_metric is not None:
        metrics["probe"] = probe_metric
    chosen = behavior if behavior is not None else task.behavior
    stands_in = probe_metric is not None or label is not None
    if behavior is None and output_head(model) is None and stands_in:
        chosen = None
    if chosen is not None:
        metrics["behavior"] = chosen
    if not metrics and label is None:
        raise SpecError(
            f"task '{task.name}' has no behaviour metric and no label; pass "
            "behavior=mw.metrics.logit_diff(...), probe=mw.metrics.probe(...) or label=..."
        )
    return metrics


def probe_of(readout: LinearProbe, layer: int, labels: np.ndarray) -> ProbeReadout:
    """The readout probe as a metric: its accuracy on the true labels at ``layer``."""
    return probe(readout, layer=layer, labels=labels, score="accuracy")


def _patch_name(has_corrupt: bool) -> str:
    return f"patch:noise({'corrupt' if has_corrupt else 'other-class'})"


def _interventions(
    asked: Sequence[str] | None, has_corrupt: bool, has_label: bool
) -> tuple[str, ...]:
    if asked is None:
        return ("mean", "resample", "zero") + (("patch",) if has_corrupt or has_label else ())
    kinds = tuple([asked] if isinstance(asked, str) else asked)
    unknown = [k for k in kinds if k not in INTERVENTIONS]
    if unknown or not kinds:
        raise SpecError(
            f"unknown intervention(s) {unknown}: choose from {', '.join(INTERVENTIONS)}"
        )
    if "patch" in kinds and not (has_corrupt or has_label):
        raise SpecError(
            "the 'patch' intervention needs corrupt prompts or a label: pass corrupt=[...], "
            "PromptPairs, or label=..."
        )
    return kinds


def _probe(
    model: Model,
    task: Task,
    label: str,
    candidates: list[LayerComponent],
    cube: xr.Dataset | None = None,
) -> tuple[dict[LayerComponent, float], LinearProbe]:
    """Test score of a probe on every candidate's activations, and the readout probe.

    The readout probe reads the residual stream after the last block; interventions are
    scored by how much its test accuracy drops. ``cube`` is used when it covers every
    probed candidate; otherwise one is extracted.
    """
    last = model.shape.n_layers - 1
    probed = [c for c in candidates if c.kind != "neuron"]
    if cube is None or not _covers(cube, [*probed, LayerComponent("resid", last)], task):
        cube = extract(model, task, layers="all", components=probed_kinds(probed), progress=False)
    y, split = task.labels[label], task.split
    scores = {}
    for comp in candidates:
        if comp.kind != "neuron":
            x = cube["act"].sel(layer=comp.layer, component=comp.name).values
            scores[comp] = fit_probe(x, y, split, metric="accuracy").test_score
    readout = fit_probe(
        cube["act"].sel(layer=last, component="resid").values, y, split, metric="accuracy"
    )
    return scores, readout


def probed_kinds(candidates: Sequence[LayerComponent]) -> list[str]:
    """The cube components probing ``candidates`` reads: ``resid`` (the readout) first,
    the other streams, and ``head`` when heads are among them (neurons are not probed)."""
    streams = {c.name for c in candidates if c.kind in STREAMS}
    heads = ["head"] if any(c.kind == "head" for c in candidates) else []
    return ["resid", *sorted(streams - {"resid"}), *heads]


def _covers(cube: xr.Dataset, needed: list[LayerComponent], task: Task) -> bool:
    """Whether ``cube`` holds one row per task sample and every ``needed`` layer x component."""
    if "act" not in cube or cube.sizes.get("sample") != len(task):
        return False
    layers = {int(v) for v in cube["layer"].values}
    comps = {str(v) for v in cube["component"].values}
    return all(c.layer in layers and c.name in comps for c in needed)


def _top(
    candidates: list[LayerComponent], scores: dict[LayerComponent, float], k: int
) -> list[LayerComponent]:
    """The ``k`` best-decoded candidates (earlier layers first on ties), plus all neurons."""
    probed = sorted(scores, key=lambda c: (-scores[c], c.layer))
    keep = set(probed[:k]) | {c for c in candidates if c not in scores}
    return [c for c in candidates if c in keep]


@dataclass(frozen=True)
class _Effects:
    """Per-sample drops by role (``behavior``, ``probe``) and intervention, oriented so that
    positive means the behaviour (or the probe's readout) was lost."""

    drops: dict[Role, dict[str, np.ndarray]]  # role -> intervention -> (tested, n)
    clean: dict[Role, float]  # role -> clean mean (oriented)
    names: dict[Role, str]  # role -> the metric's name (and how it was signed)


def _intervene(
    model: Model,
    task: Task,
    metrics: dict[Role, Any],
    scorers: dict[Role, Scorer],
    prompts: Prompts,
    bad: Prompts | None,
    tested: list[LayerComponent],
    kinds: tuple[str, ...],
    label: str | None,
    seed: int,
) -> _Effects:
    """Run every intervention on every tested candidate; per-sample drops of each metric."""
    roles = list(scorers)
    bound = [scorers[r] for r in roles]
    cells = [Cell(c, READ if c.kind == "resid" else None) for c in tested]
    _, values = capture(model, prompts, [], bound)
    base = dict(zip(roles, values.cpu().numpy(), strict=True))
    truth = None if label is None else task.labels[label][prompts.samples]
    signs, names = {}, {}
    for role in roles:
        signs[role], names[role] = _signs(metrics[role], base[role], truth, label)
    drops: dict[Role, dict[str, np.ndarray]] = {role: {} for role in roles}
    for how in kinds:
        if how == "patch" and bad is not None:
            source = Source(bad)
        elif how == "patch":
            source = ablation_source("resample", prompts, seed, classes=truth)
        else:
            source = ablation_source(how, prompts, seed)
        values, _ = run_cells(model, prompts, cells, source, bound)
        for role, after in zip(roles, values.cpu().numpy(), strict=True):
            drops[role][how] = signs[role] * (base[role][None] - after)
    return _Effects(
        drops=drops,
        clean={role: float((signs[role] * base[role]).mean()) for role in roles},
        names=names,
    )


def _signs(
    metric: Any, base: np.ndarray, truth: np.ndarray | None, label: str | None
) -> tuple[np.ndarray, str]:
    """Per-sample orientation of the metric (+1: larger is more behaviour) and its name.

    A fixed-word logit difference on a labelled task flips sign between classes (is-are
    for singular, are-is for plural subjects); each class gets the sign of its clean mean
    so the drops of both classes add up instead of cancelling.
    """
    name = describe(metric)
    sign = np.full(len(base), float(orientation(metric)))
    fixed = isinstance(metric, LogitDiff) and len(metric.correct) == len(metric.wrong) == 1
    if truth is not None and fixed:
        for value in np.unique(truth):
            members = truth == value
            sign[members] = 1.0 if base[members].mean() >= 0 else -1.0
        if (sign < 0).any():
            name += f", signed by {label} class"
    return sign, name


def _result(
    model: Model,
    task: Task,
    label: str | None,
    candidates: list[LayerComponent],
    tested: list[LayerComponent],
    scores: dict[LayerComponent, float],
    effects: _Effects,
    names: dict[str, str],
    rank_by: str,
    samples: np.ndarray,
    resamples: int,
    level: float,
    seed: int,
    readout: LayerComponent | None,
    top_k: int | None = None,
) -> LocalizeResult:
    """Intervals, the tidy impact table, the ranking and the dataset."""
    weights = bootstrap_weights(len(samples), resamples, np.random.default_rng([seed, 13]))
    rows = []
    for what, per in effects.drops.items():
        for how, drops in per.items():
            draws = drops @ weights.T / weights.sum(1)  # (tested, resamples)
            low, high, _ = simultaneous_interval(draws, level)
            for i, comp in enumerate(tested):
                rows.append(
                    {
                        "site": str(comp),
                        "layer": comp.layer,
                        "component": comp.name,
                        "metric": what,
                        "intervention": names[how],
                        "drop": float(drops[i].mean()),
                        "ci_low": float(low[i]),
                        "ci_high": float(high[i]),
                        "n": len(samples),
                    }
                )
    impact = pd.DataFrame(rows)
    main: Role = "behavior" if "behavior" in effects.drops else "probe"
    ranking = _ranking(
        candidates, tested, scores, impact, names, rank_by, list(effects.drops), main
    )
    data = xr.Dataset.from_dataframe(
        impact.set_index(["site", "metric", "intervention"])[["drop", "ci_low", "ci_high"]]
    )
    data["probe_score"] = xr.DataArray(
        [scores.get(c, np.nan) for c in candidates],
        dims="candidate",
        coords={"candidate": [str(c) for c in candidates]},
    )
    data.attrs.update(
        metric=effects.names[main],
        probe_metric=effects.names.get("probe", ""),
        label=label or "",
        rank_by=names[rank_by],
        level=level,
        interval="simultaneous over candidates (max statistic)",
    )
    return LocalizeResult(
        action="localize",
        data=data,
        table=ranking,
        params={
            "label": label,
            "metric": effects.names[main],
            "probe_metric": effects.names.get("probe"),
            "interventions": list(names.values()),
            "rank_by": names[rank_by],
            "n": len(samples),
            "top_k": top_k,
            "task": task.name,
            "model": model.name,
        },
        impact=impact,
        clean_behavior=effects.clean.get("behavior", float("nan")),
        clean_probe=effects.clean.get("probe", float("nan")),
        rank_by=names[rank_by],
        metric=effects.names[main],
        ranked_on=main,
        probe_metric=effects.names.get("probe", ""),
        readout_layer=None if readout is None else readout.layer,
    )


def _ranking(
    candidates: list[LayerComponent],
    tested: list[LayerComponent],
    scores: dict[LayerComponent, float],
    impact: pd.DataFrame,
    names: dict[str, str],
    rank_by: str,
    roles: list[Role],
    main: Role,
) -> pd.DataFrame:
    """One row per candidate, sorted by the ``main`` metric's drop under ``rank_by``
    (untested last), with every metric's drop under every intervention beside it."""
    table = pd.DataFrame(
        {
            "site": [str(c) for c in candidates],
            "layer": [c.layer for c in candidates],
            "component": [c.name for c in candidates],
            "probe_score": [scores.get(c, np.nan) for c in candidates],
            "tested": [c in tested for c in candidates],
        }
    )
    ranked = impact[(impact["metric"] == main) & (impact["intervention"] == names[rank_by])]
    ranked = ranked.set_index("site")
    table["effect"] = table["site"].map(ranked["drop"])
    table["ci_low"] = table["site"].map(ranked["ci_low"])
    table["ci_high"] = table["site"].map(ranked["ci_high"])
    table["ablation"] = names[rank_by]
    for name in names.values():
        for what in [r for r in ("behavior", "probe") if r in roles]:
            part = impact[(impact["metric"] == what) & (impact["intervention"] == name)]
            table[f"{what}_drop[{name}]"] = table["site"].map(part.set_index("site")["drop"])
    order = table.sort_values(
        ["tested", "effect", "probe_score"], ascending=[False, False, False], na_position="last"
    )
    return order.reset_index(drop=True)


@dataclass(repr=False, frozen=True)
class LocalizeResult(ActionResult):
    """Candidates ranked by causal effect, and the drop of each metric under each intervention.

    ``ranking`` (also ``table``): one row per candidate with ``site``, ``layer``,
    ``component`` (``resid``/``attn``/``mlp``/``head.H``/``neuron.N``), ``probe_score``
    (test accuracy of a probe on it; NaN unprobed), ``tested``, ``effect`` (the drop of
    the metric ranked on, ``ranked_on``: the behaviour, or the probe metric where there is
    none, under the ``ablation`` named beside it) with ``ci_low``/``ci_high``, and one
    ``behavior_drop[...]``/``probe_drop[...]`` column per intervention, side by side.
    ``impact``: the tidy site x metric x intervention drops with intervals.
    """

    impact: pd.DataFrame = field(default_factory=pd.DataFrame)
    clean_behavior: float = float("nan")
    clean_probe: float = float("nan")
    rank_by: str = "mean"
    metric: str = ""
    ranked_on: str = "behavior"
    probe_metric: str = ""
    readout_layer: int | None = None

    @property
    def ranking(self) -> pd.DataFrame:
        """Candidates sorted by causal effect (the result's table)."""
        return self.table

    @property
    def impact_matrix(self) -> pd.DataFrame:
        """Site x ``metric[intervention]`` matrix of drops (intervals in ``impact``)."""
        wide = self.impact.assign(
            column=self.impact["metric"] + "[" + self.impact["intervention"] + "]"
        )
        order = list(dict.fromkeys(self.table.loc[self.table["tested"], "site"]))
        return wide.pivot(index="site", columns="column", values="drop").reindex(order)

    def summary(self) -> dict[str, Any]:
        """Headline numbers: the top candidate and its drop, clean metric values."""
        top = self.table.iloc[0]
        return {
            "top": top["site"],
            "effect": float(top["effect"]),
            "ci": [float(top["ci_low"]), float(top["ci_high"])],
            "ablation": self.rank_by,
            "metric": self.metric,
            "ranked_on": self.ranked_on,
            "clean_behavior": self.clean_behavior,
            "probe_metric": self.probe_metric,
            "clean_probe": self.clean_probe,
            "top_probe_drop": float(top.get(f"probe_drop[{self.rank_by}]", np.nan)),
            "readout_layer": self.readout_layer,
            "tested": int(self.table["tested"].sum()),
            "candidates": len(self.table),
            "n": self.params.get("n"),
        }

    def verdict(self) -> str:
        """One line: which candidate matters most, by how much, under which ablation."""
        s = self.summary()
        clean = s["clean_behavior"] if self.ranked_on == "behavior" else s["clean_probe"]
        line = (
            f"{s['top']} matters most: {s['ablation']} ablation lowers {s['metric']} by "
            f"{s['effect']:.2f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}] (clean "
            f"{clean:.2f}, n={s['n']})"
        )
        if self.ranked_on == "behavior" and self.probe_metric:
            line += f", and {self.probe_metric} by {s['top_probe_drop']:.2f}"
        if len(self.table) > 1 and bool(self.table["tested"].iloc[1]):
            nxt = self.table.iloc[1]
            line += f"; next {nxt['site']} {nxt['effect']:.2f}"
        return line

    def chart(self) -> Any:
        """Behaviour drop per layer x component (streams), or per layer x head."""
        charts = self.charts()
        return charts.get("main", charts.get("heads"))

    def charts(self) -> dict[str, Any]:
        """Heatmaps of the ranking's effect: streams, heads, and probe scores when probed."""
        df = self.table
        title = f"drop of {self.metric} ({self.rank_by})"
        out = {}
        comps = table_components(df)
        streams = df[df["component"].isin(STREAMS)]
        is_head = [c.kind == "head" for c in comps]
        heads = df.assign(head=[c.head for c in comps])[is_head]
        if len(streams):
            out["main"] = heatmap(streams, x="component", y="layer", value="effect", title=title)
        if len(heads):
            out["heads"] = heatmap(heads, x="head", y="layer", value="effect", title=title)
        probed = df[df["probe_score"].notna()]
        if len(probed):
            out["probe"] = heatmap(
                probed, x="component", y="layer", value="probe_score", title="probe accuracy"
            )
        return out


class Localize(ModelAction):
    """The registered action: :func:`localize` on the context's model, task and cube."""

    takes_components = True
    takes_cube = True

    def needs(self, params: Mapping[str, Any]) -> Needs:
        """With a label, a cube holding what is probed (heads included when asked for);
        without one, no cube (nothing is probed)."""
        if params.get("label") is None:
            return Needs(cube=False)
        comps = params.get("components")
        items = [] if comps is None else [comps] if isinstance(comps, str) else list(comps)
        kinds = {str(item).partition(":")[0] for item in items}
        return Needs(components=tuple(k for k in COMPONENT_ORDER if k in kinds and k != "neuron"))
