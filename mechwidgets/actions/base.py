"""The result object every action returns.

A result is a value (``.data``, an ``xarray.Dataset`` of every number, and ``.table``, a
tidy ``pandas.DataFrame``), a picture (``.chart()``, an altair chart; the rich repr shows
chart, table and a one-line verdict in Jupyter) and an artifact (``.to_bundle(path)``).
Its plain-text repr is deterministic so notebooks test cleanly.

>>> res = mw.detect(cube, label="subject_number")
>>> res.summary()["best"]
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import vl_convert
import xarray as xr

from mechwidgets.core.registry import get_action


@dataclass
class RunContext:
    """What an action's ``prepare`` receives: the data, the model if needed, and parameters.

    ``cube`` follows the cube contract (see ``mechwidgets.extract.cube``); ``model`` and
    ``task`` are set for actions that intervene on a model (``localize``, ``polysemantic``
    on a model, ``collapse`` with recovery). ``spec`` is the RunSpec as a dict when the run
    came from one, so the bundle can reproduce it.
    """

    cube: xr.Dataset | None = None
    model: Any = None
    task: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    controls: list[str] = field(default_factory=list)
    seed: int = 0
    spec: dict[str, Any] | None = None


class ResultAction:
    """Base of the built-in actions: ``summarize`` is the result's own ``summary()``."""

    def summarize(self, result: ActionResult) -> dict[str, Any]:
        """The result's headline numbers."""
        return result.summary()


def run_action(name: str, context: RunContext) -> ActionResult:
    """Run the registered action ``name`` through its three verbs and return its result."""
    action = get_action(name)
    result: ActionResult = action.run(action.prepare(context))
    result.spec = context.spec
    return result


@dataclass(repr=False)
class ActionResult:
    """Base class for action results; subclasses fill ``summary``, ``verdict`` and ``chart``."""

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

    def to_bundle(self, path: str | Path) -> Path:
        """Write the reproducible artifact bundle to ``path`` and return it."""
        from mechwidgets.report.bundle import write_bundle

        return write_bundle(self, Path(path))

    def __repr__(self) -> str:
        with pd.option_context("display.width", 120, "display.max_columns", 20):
            head = self.table.head(12).to_string(index=False, float_format="{:.3f}".format)
        more = f"\n... {len(self.table) - 12} more rows" if len(self.table) > 12 else ""
        return f"{type(self).__name__}({self.action}): {self.verdict()}\n{head}{more}"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        plain = repr(self)
        try:
            # SVG rendered here by vl-convert: altair's own HTML output loads vega from a
            # CDN (blank offline) and its Vega-Lite 6 mimetype is newer than JupyterLab's.
            chart_html = vl_convert.vegalite_to_svg(self.chart().to_dict())
            table_html = self.table.head(20).to_html(index=False, float_format="{:.3f}".format)
            body = (
                f"<div class='mechwidgets-result'><p><b>{html.escape(self.verdict())}</b></p>"
                f"{chart_html}{table_html}</div>"
            )
        except Exception as exc:  # a broken rich repr must show, not hide, its error
            body = (
                f"<pre>{html.escape(plain)}</pre><p style='color:#b00'>rich display failed: "
                f"{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</p>"
            )
        return {"text/plain": plain, "text/html": body}
