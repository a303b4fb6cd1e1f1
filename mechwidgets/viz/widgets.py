"""Widgets: an interactive view over a result, and a form that runs an action.

:class:`LayerExplorer` is an anywidget whose traitlets are its whole contract with the
JavaScript in ``js/src`` (bundled into ``static/layer_explorer.js``, shipped in the wheel):
a layer x component heatmap of a result's real-probe scores with CI and controls on hover;
a click selects a cell, syncs it back as ``selected`` and shows that probe's score
distribution per class, or the patching grid of results that have one. Arrays travel as
little-endian float32 binary buffers with shape traits, never as JSON lists.
:class:`Launcher` is an ipywidgets form that builds a RunSpec and runs it.

>>> ex = mw.widgets.LayerExplorer(res)
>>> ex.selected = {"layer": 3, "component": "mlp"}
>>> ex.detail_kind
'histogram'
>>> mw.widgets.Launcher()
"""

from __future__ import annotations

import html
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import ipywidgets
import numpy as np
import pandas as pd
import traitlets
import xarray as xr

from mechwidgets.core.components import INTERVENED, STREAMS, LayerComponent, component_key
from mechwidgets.core.errors import MechError, SpecError
from mechwidgets.viz.samples import class_name, class_names

if TYPE_CHECKING:
    from mechwidgets.models.loading import Model

STATIC = Path(__file__).parent / "static"
#: the columns every action result's ``.table`` has (extras may follow)
TABLE_COLUMNS = ("label", "layer", "component", "control", "score", "ci_low", "ci_high")
_GRID_VALUES = ["score", "ci_low", "ci_high"]


class WidgetError(MechError, ValueError):
    """A widget was given data it cannot show."""


def _f32(values: Any) -> bytes:
    """``values`` as the little-endian float32 bytes the widgets' JavaScript decodes."""
    return np.ascontiguousarray(values, dtype="<f4").tobytes()


class LayerExplorer(anywidget.AnyWidget):
    """Heatmap of probe scores by layer x component; click a cell to see that probe.

    Parameters
    ----------
    result : an action result (anything with a tidy ``.table``; its ``.predictions`` with
        ``layer, component, y_true, y_score`` give the per-class histograms; a localize
        result's ``impact`` drops give the grid shown instead; a localize
        ranking plots its ``effect``; a polysemantic result plots each feature's probe
        score on the neurons per layer and, for a clicked layer, its top neurons'
        loadings) or a bare table with :data:`TABLE_COLUMNS`.
    label : the label to show first; default the table's first.
    bins : histogram bins for the score distributions.
    classes : class names per label, for the histograms (``{"subject_number":
        ["singular", "plural"]}``) or the Task the result came from; default: the
        built-in task the result's run named, else the class values.
    texts : the sentences a clicked probe's test samples are shown with (a Task, a cube
        or a list, by ``sample_id``); default the cube's, else the task the run named.
    model, cube : the model and the cube the result was computed on: with both, a click
        also shows the token view (:func:`mechwidgets.viz.token_scores`) of that slice.

    Examples
    --------
    >>> ex = LayerExplorer(res, label="subject_number")
    >>> ex.observe(lambda change: print(change["new"]), "selected")
    """

    _esm = STATIC / "layer_explorer.js"

    label = traitlets.Unicode().tag(sync=True)
    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    metric = traitlets.Unicode("score").tag(sync=True)
    layers = traitlets.List(traitlets.Int()).tag(sync=True)
    components = traitlets.List(traitlets.Unicode()).tag(sync=True)
    #: [n_layers, n_components]: the shape of ``scores``, ``ci_low`` and ``ci_high``
    shape = traitlets.List(traitlets.Int(), default_value=[0, 0]).tag(sync=True)
    scores = traitlets.Bytes(b"").tag(sync=True)
    ci_low = traitlets.Bytes(b"").tag(sync=True)
    ci_high = traitlets.Bytes(b"").tag(sync=True)
    #: control names; ``control_scores`` has shape [len(controls), *shape]
    controls = traitlets.List(traitlets.Unicode()).tag(sync=True)
    control_scores = traitlets.Bytes(b"").tag(sync=True)
    #: the clicked cell, ``{"layer": int, "component": str}``, or ``{}`` for none
    selected = traitlets.Dict().tag(sync=True)
    #: what the detail panel shows for ``selected``: "histogram", "grid" or "none"
    detail_kind = traitlets.Unicode("none").tag(sync=True)
    detail_title = traitlets.Unicode("click a cell to see that probe").tag(sync=True)
    #: class names (histogram) or grid row labels; ``detail_values`` has ``detail_shape``
    detail_rows = traitlets.List(traitlets.Unicode()).tag(sync=True)
    detail_cols = traitlets.List(traitlets.Unicode()).tag(sync=True)
    detail_shape = traitlets.List(traitlets.Int(), default_value=[0, 0]).tag(sync=True)
    detail_values = traitlets.Bytes(b"").tag(sync=True)
    #: histogram bin edges, ``detail_shape[1] + 1`` values
    detail_edges = traitlets.Bytes(b"").tag(sync=True)
    #: below the histogram: the clicked probe's test sentences (label, prediction, score)
    #: and, given ``model`` and ``cube``, its token view; HTML made here, escaped
    samples_html = traitlets.Unicode("").tag(sync=True)

    def __init__(
        self,
        result: Any,
        label: str | None = None,
        bins: int = 20,
        classes: Any = None,
        texts: Any = None,
        model: Model | None = None,
        cube: Any = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(result, pd.DataFrame):
            table, self._result = result, None
        elif isinstance(getattr(result, "table", None), pd.DataFrame):
            table, self._result = _as_score_table(result), result
        else:
            raise WidgetError(
                f"LayerExplorer needs an action result or its .table, got {type(result).__name__}"
            )
        missing = [c for c in TABLE_COLUMNS if c not in table.columns]
        if missing:
            raise WidgetError(
                f"the table lacks column(s) {', '.join(missing)}; "
                f"a result table needs {', '.join(TABLE_COLUMNS)}"
            )
        labels = [str(v) for v in pd.unique(table["label"])]
        if not labels:
            raise WidgetError("the result table is empty: run the action on some layers first")
        if label is not None and label not in labels:
            raise WidgetError(f"label {label!r} is not in the result; choose one of {labels}")
        if bins < 1:
            raise WidgetError(f"bins must be a positive integer, got {bins}")
        self._table = table.assign(label=table["label"].astype(str))
        self._bins = bins
        predictions = getattr(result, "predictions", None)
        self._predictions = predictions if isinstance(predictions, pd.DataFrame) else None
        self._grid = _grid_source(result)
        self._classes = class_names(result, classes, cube=cube)
        self._texts, self._model, self._cube = texts if texts is not None else cube, model, cube
        # label last: its observer fills the grid before the widget's state is first sent
        super().__init__(labels=labels, label=label or labels[0], **kwargs)

    def __repr__(self) -> str:
        return (
            f"LayerExplorer(label={self.label!r}, {len(self.layers)} layers x "
            f"{len(self.components)} components: {', '.join(self.components)})"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The widget, and where it cannot run a PNG of the heatmap (the static fallback)."""
        from mechwidgets.viz.chart_widget import with_png_fallback
        from mechwidgets.viz.charts import heatmap

        rows = self._table[
            (self._table["label"] == self.label) & (self._table["control"] == "none")
        ]
        cells = rows.groupby(["layer", "component"], as_index=False)["score"].mean()
        chart = heatmap(
            cells, x="layer", y="component", value="score", title=f"{self.label}: {self.metric}"
        )
        return with_png_fallback(super()._repr_mimebundle_(**kwargs), chart.to_dict(), repr(self))

    @traitlets.validate("label")
    def _check_label(self, proposal: dict[str, Any]) -> str:
        if proposal["value"] not in self.labels:
            raise WidgetError(
                f"label {proposal['value']!r} is not in the result; one of {self.labels}"
            )
        return str(proposal["value"])

    @traitlets.observe("label")
    def _on_label(self, change: dict[str, Any]) -> None:
        rows = self._table[self._table["label"] == change["new"]]
        real = rows[rows["control"] == "none"]
        layers = sorted(int(v) for v in pd.unique(rows["layer"]))
        comps = sorted((str(v) for v in pd.unique(rows["component"])), key=component_key)
        index = pd.MultiIndex.from_product([layers, comps], names=["layer", "component"])
        shape = [len(layers), len(comps)]

        def grid(frame: pd.DataFrame) -> np.ndarray:
            # several seeds of one probe are averaged; cells without a probe are NaN
            cells = frame.groupby(["layer", "component"])[_GRID_VALUES].mean().reindex(index)
            return cells.to_numpy(dtype=float).reshape(*shape, len(_GRID_VALUES))

        values = grid(real)
        controls = sorted(str(c) for c in pd.unique(rows["control"]) if c != "none")
        ctrl = [grid(rows[rows["control"] == c])[..., 0] for c in controls]
        with self.hold_sync():
            self.metric = str(rows["metric"].iloc[0]) if "metric" in rows else "score"
            self.layers, self.components, self.shape = layers, comps, shape
            self.scores, self.ci_low, self.ci_high = (_f32(values[..., k]) for k in range(3))
            self.controls = controls
            self.control_scores = _f32(np.stack(ctrl) if ctrl else np.zeros((0, *shape)))
            self.selected = {}

    @traitlets.validate("selected")
    def _check_selected(self, proposal: dict[str, Any]) -> dict[str, Any]:
        cell = dict(proposal["value"])
        if not cell:
            return cell
        layer, comp = cell.get("layer"), cell.get("component")
        if layer not in self.layers or comp not in self.components:
            raise WidgetError(
                f"no cell layer={layer!r}, component={comp!r}; "
                f"layers are {self.layers}, components {self.components}"
            )
        return {"layer": int(layer), "component": str(comp)}

    @traitlets.observe("selected")
    def _on_selected(self, change: dict[str, Any]) -> None:
        cell = change["new"]
        with self.hold_sync():
            if not cell:
                self._show_nothing("click a cell to see that probe")
            elif self._grid is not None:
                self._show_grid(cell["layer"], cell["component"])
            else:
                self._show_histogram(cell["layer"], cell["component"])

    def _show_nothing(self, why: str) -> None:
        self.detail_kind, self.detail_title = "none", why
        self.detail_rows, self.detail_cols, self.detail_shape = [], [], [0, 0]
        self.detail_values, self.detail_edges, self.samples_html = b"", b"", ""

    def _show_histogram(self, layer: int, comp: str) -> None:
        preds = self._predictions
        where = f"layer {layer} \u00b7 {comp}"
        if preds is None or not {"layer", "component", "y_true", "y_score"} <= set(preds):
            return self._show_nothing(f"{where}: this result has no per-sample predictions")
        keep = (preds["layer"] == layer) & (preds["component"] == comp)
        if "label" in preds:
            keep &= preds["label"].astype(str) == self.label
        if "control" in preds:
            keep &= preds["control"] == "none"
        rows = preds[keep]
        if rows.empty:
            return self._show_nothing(f"{where}: no predictions for this probe")
        rows = rows[rows["y_score"].notna()]
        if rows.empty:  # multi-class probes predict a class, not one score per sample
            return self._show_nothing(f"{where}: this probe has no per-sample score to plot")
        y_score = rows["y_score"].to_numpy(dtype=float)
        classes = sorted(pd.unique(rows["y_true"]))
        # probabilities get the fixed [0, 1] axis so that histograms of probes compare
        span = (0.0, 1.0) if y_score.min() >= 0 and y_score.max() <= 1 else None
        edges = np.histogram_bin_edges(y_score, bins=self._bins, range=span)
        counts = [np.histogram(y_score[rows["y_true"] == c], bins=edges)[0] for c in classes]
        self.detail_kind = "histogram"
        self.detail_title = f"{where}: {self.label} probe scores per class ({len(rows)} samples)"
        names = self._classes.get(self.label, ())
        self.detail_rows, self.detail_cols = [class_name(c, names) for c in classes], []
        self.detail_shape = [len(classes), self._bins]
        self.detail_values, self.detail_edges = _f32(counts), _f32(edges)
        self.samples_html = self._below(layer, comp)

    def _below(self, layer: int, comp: str) -> str:
        """The probe's test sentences and, given a model and a cube, its token view."""
        from mechwidgets.viz.samples import sample_texts, slice_samples

        if self._texts is None:  # the run's task, drawn once for every cell
            self._texts = sample_texts(self._result)
        try:
            samples = slice_samples(
                self._result, layer, comp, self.label, self._texts, self._classes
            )
            parts = [samples.to_html()]
        except MechError as exc:  # e.g. texts that do not match the predictions: say so
            parts = [f"<p>sentences: {html.escape(_one_line(exc))}</p>"]
        # the token view runs the model on a stream (no per-head slices)
        if self._model is not None and self._cube is not None and comp in STREAMS:
            from mechwidgets.viz.tokens import token_scores

            try:
                view = token_scores(self._model, self._cube, self.label, layer, comp, k=6)
                parts.append(view._repr_html_())
            except MechError as exc:  # e.g. a multi-class label has no token colours
                parts.append(f"<p>token view: {html.escape(_one_line(exc))}</p>")
        return "".join(parts)

    def _show_grid(self, layer: int, comp: str) -> None:
        grid = self._grid(layer, comp) if self._grid is not None else None
        where = f"layer {layer} \u00b7 {comp}"
        if grid is None:
            return self._show_nothing(f"{where}: no patching grid for this component")
        if grid.ndim != 2:
            raise WidgetError(f"a cell's grid must be a 2-D DataArray, got dims {grid.dims}")
        rows_dim, cols_dim = grid.dims
        self.detail_kind = "grid"
        self.detail_title = (
            f"{where}: {grid.name or 'patching effect'} ({rows_dim} \u00d7 {cols_dim})"
        )
        self.detail_rows = [str(v) for v in grid[rows_dim].values]
        self.detail_cols = [str(v) for v in grid[cols_dim].values]
        self.detail_shape = list(grid.shape)
        self.detail_values, self.detail_edges = _f32(grid.values), b""


def _as_score_table(result: Any) -> pd.DataFrame:
    """A result's table in the score contract; a localize ranking plots its ``effect``."""
    table = result.table
    if _is_polysemantic(result):
        return _neuron_probe_table(result)
    if "score" in table or "effect" not in table:
        return table
    ablation = table["ablation"].iloc[0] if "ablation" in table and len(table) else "ablation"
    label = (getattr(result, "params", None) or {}).get("label") or result.action
    return table.assign(
        label=label, control="none", score=table["effect"], metric=f"drop under {ablation}"
    )


_IMPACT_COLUMNS = {"layer", "component", "metric", "intervention", "drop"}


def _has_impact(result: Any) -> bool:
    impact = getattr(result, "impact", None)
    return isinstance(impact, pd.DataFrame) and set(impact) >= _IMPACT_COLUMNS


def _impact_grid(result: Any, layer: int, comp: str) -> xr.DataArray | None:
    """One site's drops as a metric x intervention grid, from a localize result's ``impact``."""
    impact = result.impact
    rows = impact[(impact["layer"] == layer) & (impact["component"] == comp)]
    if rows.empty:
        return None
    wide = rows.pivot_table(index="metric", columns="intervention", values="drop", sort=False)
    return xr.DataArray(
        wide.to_numpy(dtype=float),
        dims=("metric", "intervention"),
        coords={"metric": list(wide.index), "intervention": list(wide.columns)},
        name="drop",
    )


def _is_polysemantic(result: Any) -> bool:
    data = getattr(result, "data", None)
    return isinstance(data, xr.Dataset) and {"probe_score", "loading"} <= set(data.data_vars)


def _neuron_probe_table(result: Any) -> pd.DataFrame:
    """A polysemantic result in the score contract: each feature's probe on the neurons."""
    scores = result.data["probe_score"].transpose("feature", "layer")
    rows = [
        dict(label=str(f), layer=int(layer), component="neurons", control="none", score=float(v))
        for f, row in zip(scores["feature"].values, scores.values, strict=True)
        for layer, v in zip(scores["layer"].values, row, strict=True)
    ]
    return pd.DataFrame(rows).assign(ci_low=np.nan, ci_high=np.nan, metric="probe score")


#: neurons shown per clicked layer of a polysemantic result
TOP_NEURONS = 12


def _neuron_grid(result: Any, layer: int, comp: str) -> xr.DataArray | None:
    """The layer's most polysemantic neurons x features: their loadings."""
    table = result.table
    top = table[table["layer"] == layer].head(TOP_NEURONS)  # the table is sorted by index
    if top.empty:
        return None
    loading = result.data["loading"].sel(layer=layer, neuron=top["neuron"].to_numpy())
    loading = loading.transpose("neuron", "feature")
    return xr.DataArray(
        loading.values,
        dims=("neuron", "feature"),
        coords={
            "neuron": [str(LayerComponent("neuron", layer, neuron=int(n))) for n in top["neuron"]],
            "feature": loading["feature"].values,
        },
        name="loading",
    )


def _grid_source(result: Any) -> Any:
    """What draws a clicked cell's grid: a localize result's drops, a polysemantic
    result's top neurons; None for histograms."""
    if _has_impact(result):
        return lambda layer, comp: _impact_grid(result, layer, comp)
    if _is_polysemantic(result):
        return lambda layer, comp: _neuron_grid(result, layer, comp)
    return None


def _one_line(exc: BaseException) -> str:
    """An exception as one line: MechErrors as they are, others prefixed by their type."""
    text = " ".join(str(exc).split()) or "no message"
    return text if isinstance(exc, MechError) else f"{type(exc).__name__}: {text}"


class RunCancelled(MechError, RuntimeError):
    """The Launcher's run was cancelled (between stages or extraction batches)."""


class Launcher(ipywidgets.VBox):
    """A form that builds a RunSpec for any registered action and runs it.

    The widgets are attributes (``model``, ``task``, ``action``, ``layers``,
    ``components``, ``labels``, ``n``, ``seeds``, ``controls``, ``output_dir``,
    ``run_button``, ``cancel_button``, ``progress``, ``status``, ``output``), so a notebook
    or a test can set them and call :meth:`spec` or :meth:`run`. ``labels`` is
    comma-separated: one label for ``detect``, ``localize`` and ``collapse``, two or more
    for ``compare`` and ``polysemantic``; empty means the task's default. ``seeds`` follows
    the chosen action's default and is off for actions without seeds; ``controls`` are off
    for actions without controls (the patching and localize actions).

    The Run button runs in a background thread (:meth:`start`), so the notebook stays
    responsive: Run is disabled while a run is going, the one progress bar moves with the
    stages and with each extraction batch, and Cancel stops the run at the next batch or
    stage (the status line then says "cancelled"). The last result is ``.result``; the
    last failure is ``.error`` and shows in the output area as one line.

    Examples
    --------
    >>> ui = Launcher()
    >>> ui.action.value = "compare"
    >>> ui.labels.value = "subject_number, tense"
    >>> ui.spec()["labels"]
    ['subject_number', 'tense']
    """

    def __init__(self, **kwargs: Any) -> None:
        from mechwidgets.core.registry import list_actions
        from mechwidgets.data.catalog import list_tasks
        from mechwidgets.models.zoo import list_models
        from mechwidgets.probes.sweep import DEFAULT_CONTROLS

        models = list_models()
        actions = list_actions()
        wide = {"description_width": "90px"}
        # Combobox, not Dropdown: a Hugging Face id or a data file is typed in freely
        self.model = ipywidgets.Combobox(
            options=models, value=models[0] if models else "", description="model", style=wide
        )
        self.task = ipywidgets.Combobox(
            options=list_tasks(), value="subject_number", description="task", style=wide
        )
        self.action = ipywidgets.Dropdown(
            options=actions,
            value="detect" if "detect" in actions else (actions[0] if actions else None),
            description="action",
            style=wide,
        )
        self.layers = ipywidgets.Text(value="all", description="layers", style=wide)
        self.components: dict[str, ipywidgets.Checkbox] = {
            name: ipywidgets.Checkbox(value=name != "head", description=name, indent=False)
            for name in INTERVENED
        }
        self.labels = ipywidgets.Text(
            value="", placeholder="task default; compare: a, b", description="labels", style=wide
        )
        self.n = ipywidgets.BoundedIntText(
            value=2000, min=1, max=10_000_000, description="n samples", style=wide
        )
        self.seeds = ipywidgets.BoundedIntText(
            value=5, min=1, max=1000, description="seeds", style=wide
        )
        self.controls = {
            name: ipywidgets.Checkbox(
                value=name in DEFAULT_CONTROLS, description=name, indent=False
            )
            for name in ("label_shuffle", "random_subspace", "control_task")
        }
        self.output_dir = ipywidgets.Text(
            value="", placeholder="none: no bundle written", description="output folder", style=wide
        )
        self.run_button = ipywidgets.Button(description="Run", button_style="primary")
        self.cancel_button = ipywidgets.Button(description="Cancel", disabled=True)
        self.progress = ipywidgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="")
        self.status = ipywidgets.Label("")
        self.output = ipywidgets.Output()
        self.result: Any = None
        self.error: BaseException | None = None
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self.run_button.on_click(lambda _button: self.start())
        self.cancel_button.on_click(lambda _button: self.cancel())
        self.action.observe(lambda _change: self._follow_action(), names="value")
        self._follow_action()

        def row(label: str, boxes: dict[str, ipywidgets.Checkbox]) -> ipywidgets.HBox:
            head = ipywidgets.Label(label, layout=ipywidgets.Layout(width="94px"))
            return ipywidgets.HBox([head, *boxes.values()])

        form = [
            self.action,
            self.model,
            self.task,
            self.labels,
            self.layers,
            row("components", self.components),
            self.n,
            self.seeds,
            row("controls", self.controls),
            self.output_dir,
        ]
        bar = ipywidgets.HBox([self.run_button, self.cancel_button, self.progress, self.status])
        super().__init__(children=[*form, bar, self.output], **kwargs)

    def __repr__(self) -> str:
        last = self.result.verdict() if self.result is not None else "no run yet"
        return (
            f"Launcher: {self.action.value} on {self.model.value} \u00d7 {self.task.value} "
            f"(a form; it runs in a live notebook kernel); last run: {last}"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        """The form, and where widgets cannot run (nbconvert, GitHub) a one-line summary."""
        data = super()._repr_mimebundle_(**kwargs)
        return None if data is None else {**data, "text/plain": repr(self)}

    def _params(self) -> dict[str, Any]:
        """The chosen action's parameters (name -> pydantic field, with its default), from
        its Params class (:mod:`mechwidgets.core.params`); {} if none is chosen."""
        from mechwidgets.core.registry import action_params

        return dict(action_params(self.action.value).model_fields) if self.action.value else {}

    def _takes_controls(self) -> bool:
        """Whether the chosen action runs controls beside its probes."""
        from mechwidgets.core.registry import action_params

        return bool(self.action.value) and action_params(self.action.value).takes_controls

    def _follow_action(self) -> None:
        """Seeds take the action's default and are off for actions without seeds; the
        controls are off for actions without controls."""
        seeds = self._params().get("seeds")
        self.seeds.disabled = seeds is None
        if seeds is not None and isinstance(seeds.default, int):
            self.seeds.value = seeds.default
        for box in self.controls.values():
            box.disabled = not self._takes_controls()

    def spec(self) -> dict[str, Any]:
        """The flat RunSpec dict the form stands for (see ``RunSpec.from_dict``)."""
        comps = [name for name, box in self.components.items() if box.value]
        if not comps:
            raise SpecError("tick at least one component (resid, attn, mlp, head) and run again")
        if self.action.value is None:
            raise SpecError("no action is registered; import the package that defines one")
        layers = re.sub(r"\s+", "", self.layers.value) or "all"
        spec: dict[str, Any] = {
            "action": self.action.value,
            "model": self.model.value.strip(),
            "task": self.task.value.strip(),
            "layers": layers,
            "components": comps,
            "n": int(self.n.value),
        }
        if self._takes_controls():
            spec["controls"] = [name for name, box in self.controls.items() if box.value]
        params = self._params()
        labels = [v.strip() for v in self.labels.value.split(",") if v.strip()]
        if labels and "labels" in params:
            spec["labels"] = labels
        elif labels and "label" in params:
            if len(labels) > 1:
                raise SpecError(
                    f"{self.action.value} takes one label, got {', '.join(labels)}; give one, "
                    "or choose compare to set several side by side"
                )
            spec["label"] = labels[0]
        elif labels:
            raise SpecError(f"{self.action.value} takes no labels; clear the labels field")
        if "seeds" in params:
            spec["seeds"] = int(self.seeds.value)
        if self.output_dir.value.strip():
            spec["output_dir"] = self.output_dir.value.strip()
        return spec

    def start(self) -> threading.Thread:
        """Run the form in a background thread (what the Run button does); return it."""
        if self.running:
            raise SpecError("a run is going: wait for it, or press Cancel")
        self._set_running(True)  # before the thread starts: a second click finds Run off
        self._thread = threading.Thread(target=self._run, name="mechwidgets-launcher", daemon=True)
        self._thread.start()
        return self._thread

    def wait(self, timeout: float | None = None) -> Any:
        """Wait for a run started with :meth:`start`; return its result (None if it failed)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.result

    def cancel(self) -> None:
        """Stop the run at the next stage or extraction batch (what Cancel does)."""
        if self.running:
            self._cancel.set()
            self.status.value = "cancelling…"

    @property
    def running(self) -> bool:
        """Whether a run is going."""
        return self.run_button.disabled

    def run(self) -> Any:
        """Validate the form, run it here, show the result (or one line of error); return it."""
        if self.running:
            raise SpecError("a run is going: wait for it, or press Cancel")
        self._set_running(True)
        return self._run()

    def _run(self) -> Any:
        from mechwidgets.core.specs import RunSpec

        self.output.clear_output()
        self.progress.value, self.progress.bar_style = 0.0, "info"
        self.progress.description, self.status.value = "", ""
        self.result, self.error = None, None
        self._cancel.clear()
        try:
            spec = RunSpec.from_dict(self.spec())  # a bad field fails here, before torch loads
            from mechwidgets.runner import run_spec

            result = run_spec(spec, progress=self._report)
        except Exception as exc:  # a click handler's traceback is hidden: say what failed
            self.error = exc
            cancelled = isinstance(exc, RunCancelled)
            self.progress.bar_style = "warning" if cancelled else "danger"
            self.status.value = "cancelled" if cancelled else "failed"
            self.output.append_stderr(_one_line(exc) + "\n")
            return None
        finally:
            self._set_running(False)
        self.result = result
        self.progress.value, self.progress.bar_style = 1.0, "success"
        self.status.value = "done"
        from mechwidgets.viz.findings import display_parts

        for part in display_parts(result):  # verdict, chart, tables: one output each
            self.output.append_display_data(part)
        return result

    def _set_running(self, running: bool) -> None:
        self.run_button.disabled, self.cancel_button.disabled = running, not running
        self.run_button.description = "Running…" if running else "Run"

    def _report(self, fraction: float, stage: str = "") -> None:
        """Progress callback handed to ``run_spec``: fraction done and the stage's name.
        Raises :class:`RunCancelled` once Cancel was pressed, which stops the run there."""
        if self._cancel.is_set():
            where = "during" if stage == self.progress.description else "before"
            raise RunCancelled(
                f"cancelled {where} {stage or 'the next stage'} "
                f"({self.progress.value:.0%} done); press Run to start again"
            )
        self.progress.description = stage[:12]  # first: who observes the value sees its stage
        self.progress.value = min(1.0, max(0.0, float(fraction)))
        self.status.value = f"{stage} {self.progress.value:.0%}" if stage != "done" else ""
