"""A result as findings: the verdict first, then the chart, a compact table, the details.

What a result's rich display and its ``report.html`` share: the verdict as a heading
paragraph, the compact table (controls as columns, see
:func:`mechwidgets.report.text.compact_frame`) cut to its first rows with a line saying
so, and the full tidy table collapsed under "details".

>>> display_parts(res)   # [verdict, chart, tables], each a mimebundle-bearing object
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from mechwidgets.report.text import compact_frame

#: rows of the compact table shown before "showing k of N"
SHOWN_ROWS = 12
#: rows of the full table written into the collapsed details (beyond: use ``res.table``)
DETAIL_ROWS = 500

#: chart key -> human title; ``cka_<component>`` and unknown keys are spelled out
CHART_TITLES = {
    "detect": "Probe score per layer, with controls and 95% intervals",
    "compare": "Layer curves per label: onset and peak",
    "collapse": "Decodability per layer, with controls",
    "localize": "Drop in behaviour when each site is ablated",
    "polysemantic": "Loadings of the flagged neurons on each feature",
    "heads": "Drop in behaviour when each head is ablated",
    "probe": "Probe accuracy per site",
    "auroc": "AUROC of each flagged neuron per feature",
    "recovery": "Recovery by patching",
    "agreement": "Attribution patching against activation patching",
}
_STYLE = (
    "<style>.mw-verdict{font-size:1.05em;font-weight:600;margin:.3em 0 .5em;padding:.4em .7em;"
    "border-left:4px solid #1f5fa8;background:rgba(31,95,168,.08)}"
    ".mw-note{opacity:.75;font-size:.9em;margin:.2em 0}"
    ".mw-tables details{margin-top:.4em}.mw-tables summary{cursor:pointer}</style>"
)


def verdict_html(verdict: str) -> str:
    """The verdict as one emphasised paragraph."""
    return f"{_STYLE}<p class='mw-verdict'>{html.escape(verdict)}</p>"


def tables_html(table: pd.DataFrame, shown: int = SHOWN_ROWS) -> str:
    """The compact table (first ``shown`` rows), then the full table under "details"."""
    compact = _safe_compact(table)
    k, n = min(shown, len(compact)), len(compact)
    note = f"showing {k} of {n} — <code>res.table</code> has all" if k < n else f"{n} rows"
    full = table.head(DETAIL_ROWS)
    cut = f", first {DETAIL_ROWS}" if len(table) > DETAIL_ROWS else ""
    with pd.option_context("display.max_rows", DETAIL_ROWS, "display.max_columns", None):
        full_html = full.to_html(index=False, float_format="{:.3f}".format, na_rep="—")
        compact_html = compact.head(k).to_html(index=False, na_rep="—")
    return (
        f"<div class='mw-tables'>{compact_html}<p class='mw-note'>{note}</p>"
        f"<details><summary>details: the full table ({len(table)} rows \u00d7 "
        f"{table.shape[1]} columns{cut})</summary><div style='overflow-x:auto'>{full_html}"
        "</div></details></div>"
    )


def tables_text(table: pd.DataFrame, shown: int = SHOWN_ROWS) -> str:
    """The compact table as text, first ``shown`` rows, with the same "showing" line."""
    compact = _safe_compact(table)
    k, n = min(shown, len(compact)), len(compact)
    body = compact.head(k).to_string(index=False)
    return body + (f"\nshowing {k} of {n} — res.table has all" if k < n else "")


def chart_title(name: str, action: str) -> str:
    """A chart key (``main``, ``cka_resid``, ``heads``) as a human title."""
    if name == "main":
        return CHART_TITLES.get(action, f"{action} result")
    if name.startswith("cka_"):
        return f"Layer-to-layer similarity (CKA), {name.removeprefix('cka_')} stream"
    return CHART_TITLES.get(name, name.replace("_", " ").capitalize())


def display_parts(result: Any) -> list[Any]:
    """The rich display's outputs in reading order: verdict, chart (or why not), tables."""
    from mechwidgets.viz.chart_widget import ChartView

    verdict = result.verdict()
    parts: list[Any] = [_Bundle({"text/plain": verdict, "text/html": verdict_html(verdict)})]
    try:
        chart = result.chart()
        # no schema validation here: tests/test_charts.py validates every chart builder, and
        # jsonschema's first validation costs ~0.4 s CPU of the first display
        spec = chart.to_dict(validate=False)
        if not spec.get("title"):  # a reader's title, not none
            title = chart_title("main", result.action)
            spec = chart.properties(title=title).to_dict(validate=False)
        parts.append(ChartView(spec))
    except Exception as exc:  # a broken chart must show, not hide, its error
        why = f"chart failed: {type(exc).__name__}: {exc}"
        parts.append(_Bundle({"text/plain": why, "text/html": _error_html(why)}))
    parts.append(
        _Bundle({"text/plain": tables_text(result.table), "text/html": tables_html(result.table)})
    )
    return parts


def _safe_compact(table: pd.DataFrame) -> pd.DataFrame:
    """The compact table; a table that cannot be made compact shows as it is."""
    try:
        return compact_frame(table)
    except (ValueError, KeyError):
        return table


def _error_html(text: str) -> str:
    return f"<p style='color:#b00'>{html.escape(text)}</p>"


class _Bundle:
    """A ready mimebundle that IPython's ``display`` shows as it is."""

    def __init__(self, data: dict[str, str]) -> None:
        self.data = data

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, str]:
        return self.data
