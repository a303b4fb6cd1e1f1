"""The bundle's ``report.html``: one page that renders offline.

Vega, Vega-Lite and vega-embed are inlined from vl-convert's JavaScript bundle, so the
page has no external script and opens from a laptop with no network, years later. It
shows the verdict, the headline numbers, every chart, the table and the provenance.

>>> page = report_html(title="detect: demo", verdict="...", summary={}, table=df,
...                    charts={"main": chart.to_dict()}, artifacts={})
"""

from __future__ import annotations

import html
import json
from typing import Any

import pandas as pd
import vl_convert

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;
color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.verdict{font-size:1.1em;padding:.6em .9em;background:#eef4fb;border-left:4px solid #1f5fa8}
table{border-collapse:collapse;font-size:.85em}td,th{padding:2px 8px;border-bottom:1px solid #eee;
text-align:right}th{background:#f6f6f6}
.summary td,.summary th{text-align:left}pre{background:#f6f6f6;padding:.8em;overflow:auto;
font-size:.8em}.chart{margin:1em 0}.wide{overflow-x:auto}
"""


def report_html(
    title: str,
    verdict: str,
    summary: dict[str, Any],
    table: pd.DataFrame,
    charts: dict[str, dict[str, Any]],
    artifacts: dict[str, Any],
) -> str:
    """A self-contained HTML report.

    Parameters
    ----------
    title : page heading.
    verdict : the result's one-line verdict.
    summary : headline numbers (JSON-ready).
    table : the tidy result table.
    charts : chart name -> Vega-Lite spec dict.
    artifacts : the ``artifacts.json`` content (JSON-ready), shown as provenance.

    Returns
    -------
    The HTML document as a string.
    """
    divs = "\n".join(
        f'<h3>{html.escape(name)}</h3><div class="chart" id="chart-{i}"></div>'
        for i, name in enumerate(charts)
    )
    embeds = "\n".join(
        f'vegaEmbed("#chart-{i}", {_script_json(spec)}, {{actions: false, renderer: "svg"}});'
        for i, spec in enumerate(charts.values())
    )
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in _flat(summary)
    )
    with pd.option_context("display.max_rows", 500):
        table_html = table.to_html(index=False, float_format="{:.3f}".format, na_rep="—")
    provenance = html.escape(json.dumps(artifacts, indent=2))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
<script>{_inline_js(vl_convert.javascript_bundle())}</script>
</head><body>
<h1>{html.escape(title)}</h1>
<p class="verdict">{html.escape(verdict)}</p>
<h2>Summary</h2><table class="summary">{rows}</table>
<h2>Charts</h2>
{divs}
<h2>Table</h2>
<div class="wide">{table_html}</div>
<h2>Provenance</h2>
<pre>{provenance}</pre>
<script>
{embeds}
</script>
</body></html>
"""


def _flat(summary: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested summary -> (dotted key, readable value) rows; floats to 4 significant digits."""
    rows: list[tuple[str, str]] = []
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flat(value, f"{name}.")
        elif isinstance(value, list):
            rows.append((name, "[" + ", ".join(_cell(v) for v in value) + "]"))
        else:
            rows.append((name, _cell(value)))
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "—" if value is None else str(value)


def _script_json(spec: dict[str, Any]) -> str:
    """JSON safe inside a <script> element: no ``</`` can close it early."""
    return json.dumps(spec).replace("</", "<\\/")


def _inline_js(code: str) -> str:
    # the bundle has no "</script" today; escaping keeps a future one from closing the tag
    return code.replace("</script", "<\\/script")
