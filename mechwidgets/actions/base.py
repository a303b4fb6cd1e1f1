"""The result object every action returns.

A result is a value (``.data``, an ``xarray.Dataset`` of every number, and ``.table``, a
tidy ``pandas.DataFrame``), a picture (``.chart()``, an altair chart) and an artifact
(``.to_bundle(path)``). In Jupyter it reads as a finding: the one-line verdict, the chart
as an interactive offline widget (with a PNG fallback where widgets do not run), a
compact table with the controls as columns, and the full table collapsed under
"details". Its plain-text repr is deterministic so notebooks test cleanly.

>>> res = mw.detect(cube, label="subject_number")
>>> res.summary()["best"]
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import xarray as xr

from mechwidgets.cluster import using
from mechwidgets.core.errors import SpecError
from mechwidgets.core.registry import check_params, get_action, load, registration

if TYPE_CHECKING:
    from mechwidgets.models.loading import Model


@dataclass
class RunContext:
    """What an action's ``prepare`` receives: the data, the model if needed, and parameters.

    ``cube`` follows the cube contract (see ``mechwidgets.extract.cube``); ``model`` and
    ``task`` are set for actions that intervene on a model (``localize``, ``polysemantic``
    on a model, ``collapse`` with recovery). ``spec`` is the RunSpec as a dict when the run
    came from one, so the bundle can reproduce it.
    """

    cube: xr.Dataset | list[xr.Dataset] | None = None  # a list: compare across tasks
    model: Model | None = None
    task: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    controls: list[str] | None = None  # None: the action's default controls
    seed: int = 0
    spec: dict[str, Any] | None = None

    def selectors(self) -> list[str] | None:
        """The extraction selectors of the RunSpec this run came from, or None. A config's
        ``components``/``layers`` are written into them, so actions that take components
        (localize, patch) read them here."""
        selectors = ((self.spec or {}).get("extraction") or {}).get("selectors")
        return None if selectors is None else list(selectors)

    def evolve(self, **changes: Any) -> RunContext:
        """A copy with ``changes`` (``dataclasses.replace``; the runner's lazy context
        keeps its model unbuilt)."""
        return replace(self, **changes)


class ResultAction:
    """Base of the built-in actions: ``summarize`` is the result's own ``summary()``."""

    def summarize(self, result: ActionResult) -> dict[str, Any]:
        """The result's headline numbers."""
        return result.summary()


class ModelAction(ResultAction):
    """An action that calls its registered function on the context's model and dataset:
    ``prepare`` gathers the keyword arguments (the config's parameters over the model, the
    dataset and the seed), ``run`` makes the call."""

    #: the function's parameter that takes the dataset
    data_parameter = "task"
    #: whether the function takes ``components`` (then a config's selectors give them)
    takes_components = False
    #: whether the function takes ``cube`` (then it is handed the runner's cube)
    takes_cube = False
    name: str

    def prepare(self, context: RunContext) -> dict[str, Any]:
        """The model, the dataset and the config's parameters, as the function takes them."""
        if context.model is None or context.task is None:
            raise SpecError(f"{self.name} needs a model and a task; give both in the config")
        params = dict(context.params)
        selectors = context.selectors()
        if self.takes_components and "components" not in params and selectors:
            params["components"] = selectors
        data = {"model": context.model, self.data_parameter: context.task, "seed": context.seed}
        if self.takes_cube:
            data["cube"] = context.cube
        return data | params

    def run(self, prepared: dict[str, Any]) -> ActionResult:
        """Call the registered function."""
        result: ActionResult = load(registration(self.name).function)(**prepared)
        return result


def run_action(name: str, context: RunContext) -> ActionResult:
    """Run the registered action ``name`` through its three verbs and return its result."""
    action = get_action(name)
    result: ActionResult = action.run(action.prepare(context))
    return replace(result, spec=context.spec, caveats=caveats(context.cube, result.data))


def call_action(name: str, context: RunContext, client: Any = None) -> ActionResult:
    """What a public action function (``mw.detect(...)``) does with its arguments:
    checks them (``context.params``) against the action's Params first, a one-line
    SpecError naming a bad one before any work, then runs the action, with each slice on
    the dask ``client``'s workers when one is given (:func:`mechwidgets.cluster.using`)."""
    check_params(name, context.params)
    with using(client):
        return run_action(name, context)


def caveats(cube: xr.Dataset | list[xr.Dataset] | None, data: xr.Dataset) -> list[str]:
    """What a verdict must add about its inputs: texts the model could not see that were
    left out (``extract(..., unseen="exclude")``), and slices skipped because they were
    all NaN (except attention and MLP at the embedding layer, which have no value there)."""
    from mechwidgets.core.components import EMBED

    notes = []
    cubes = [] if cube is None else list(cube) if isinstance(cube, list) else [cube]
    excluded = sum(int(c.attrs.get("unseen_excluded", 0)) for c in cubes)
    if excluded:
        notes.append(f"{excluded} text(s) the model cannot see were left out")
    if "probed" in data.variables:
        probed = data["probed"]
        skipped = [
            f"{comp} layer {layer}"
            for layer in probed["layer"].values
            for comp in probed["component"].values
            if not bool(probed.sel(layer=layer, component=comp))
            and not (int(layer) == EMBED and comp != "resid")
        ]
        if skipped:
            more = f" and {len(skipped) - 4} more" if len(skipped) > 4 else ""
            notes.append(f"skipped as all NaN: {', '.join(skipped[:4])}{more}")
    return notes


@dataclass(repr=False, frozen=True)
class ActionResult:
    """Base class for action results; subclasses fill ``summary``, ``verdict`` and ``chart``.

    A result is a frozen value: what is added after the action ran (the spec, timings,
    caveats) makes a new result (``dataclasses.replace``), never changes this one.
    """

    action: str
    data: xr.Dataset
    table: pd.DataFrame
    params: dict[str, Any] = field(default_factory=dict)
    #: the RunSpec (as a dict) that produced this result, when run from a spec
    spec: dict[str, Any] | None = None
    #: predictions per test sample for ``predictions.parquet`` (may be empty)
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: wall-clock seconds per stage, recorded in the bundle
    timings: dict[str, float] = field(default_factory=dict)
    #: where the activations came from: cube files, keys and shapes
    activations: dict[str, Any] = field(default_factory=dict)
    #: what the verdict adds about the inputs (see :func:`caveats`)
    caveats: list[str] = field(default_factory=list)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Each subclass's ``verdict`` ends with the result's caveats, written once here
        rather than in every action."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("verdict")
        if own is None or getattr(own, "adds_caveats", False):
            return

        @functools.wraps(own)
        def verdict(self: ActionResult) -> str:
            line = own(self)
            return "; ".join([line, *(c for c in self.caveats if c not in line)])

        verdict.adds_caveats = True  # type: ignore[attr-defined]
        cls.verdict = verdict  # type: ignore[method-assign]

    def summary(self) -> dict[str, Any]:
        """Headline numbers, JSON-serialisable."""
        raise NotImplementedError

    def verdict(self) -> str:
        """One line a researcher can read at a glance."""
        raise NotImplementedError

    def chart(self) -> Any:
        """The result's main altair chart."""
        raise NotImplementedError

    def charts(self) -> dict[str, Any]:
        """Every chart of this result by name; the bundle saves each one."""
        return {"main": self.chart()}

    def samples(
        self, layer: int, component: str = "resid", label: str | None = None, texts: Any = None
    ) -> Any:
        """The test sentences of one probed slice with label, prediction and score, the
        misclassified first (:func:`mechwidgets.viz.samples.slice_samples`)."""
        from mechwidgets.viz.samples import slice_samples

        return slice_samples(self, layer, component, label=label, texts=texts)

    def to_bundle(self, path: str | Path) -> Path | str:
        """Write the reproducible artifact bundle to ``path`` (a folder or an fsspec URL such
        as ``s3://bucket/run``) and return it."""
        from mechwidgets.report.bundle import write_bundle

        return write_bundle(self, path)

    def __repr__(self) -> str:
        from mechwidgets.viz.findings import tables_text

        return f"{type(self).__name__}({self.action}): {self.verdict()}\n{tables_text(self.table)}"

    def _ipython_display_(self) -> None:
        """Jupyter's display: verdict, interactive chart, compact table, details."""
        from IPython.display import display

        from mechwidgets.viz.findings import display_parts

        for part in display_parts(self):
            display(part)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """Verdict and tables as HTML, for frontends that take one bundle (no chart)."""
        from mechwidgets.viz.findings import tables_html, verdict_html

        return {
            "text/plain": repr(self),
            "text/html": verdict_html(self.verdict()) + tables_html(self.table),
        }
