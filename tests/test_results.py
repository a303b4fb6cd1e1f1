"""What every result shows in Jupyter: verdict first, then the chart, a compact table, details."""

from __future__ import annotations

import base64
import html
import re

import altair as alt
import pandas as pd
import pytest

import mechwidgets as mw
from mechwidgets.probes.synthetic import planted_cube
from mechwidgets.report.text import compact_frame
from mechwidgets.viz.chart_widget import PNG_MAX_SHARP, ChartView
from mechwidgets.viz.findings import SHOWN_ROWS, display_parts, tables_html

WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def result():
    cube = planted_cube({"number": {(1, "resid"): 3.0}}, n_samples=400, n_layers=5, seed=2)
    return mw.detect(cube, label="number", seeds=1, permutations=50, resamples=200)


def test_display_reads_verdict_then_chart_then_tables(result):
    verdict, chart, tables = display_parts(result)
    assert verdict._repr_mimebundle_()["text/plain"] == result.verdict()
    assert result.verdict() in html.unescape(verdict._repr_mimebundle_()["text/html"])
    assert isinstance(chart, ChartView)
    # the chart as res.chart() draws it, under a reader's title
    titled = result.chart().properties(
        title="Probe score per layer, with controls and 95% intervals"
    )
    assert chart.spec == titled.to_dict()
    assert repr(chart) == "ChartView('Probe score per layer, with controls and 95% intervals')"
    page = tables._repr_mimebundle_()["text/html"]
    assert page.index("<table") < page.index("<details>")  # compact first, full table after


def test_chart_output_is_a_widget_with_a_png_fallback_not_svg_in_html(result):
    data, meta = ChartView(result.chart())._repr_mimebundle_()
    assert WIDGET in data
    png = base64.b64decode(data["image/png"])
    assert png.startswith(b"\x89PNG")
    # a 3-panel chart is past PNG_MAX_SHARP: drawn at 1x, shown at its own size
    size = meta["image/png"]
    assert size["width"] * size["height"] > PNG_MAX_SHARP
    assert size["width"] == int.from_bytes(png[16:20], "big")
    small = alt.Chart(pd.DataFrame({"x": [0, 1]})).mark_point().encode(x="x:Q")
    small_data, small_meta = ChartView(small)._repr_mimebundle_()
    small_png = base64.b64decode(small_data["image/png"])
    assert small_meta["image/png"]["width"] * 2 == int.from_bytes(small_png[16:20], "big")
    assert "text/html" not in data and "image/svg+xml" not in data
    assert not re.search(r"0x[0-9a-f]{6,}", data["text/plain"])


def test_compact_table_puts_controls_in_columns_and_says_how_many_rows_are_shown(result):
    compact = compact_frame(result.table)
    real = result.table[result.table["control"] == "none"]
    assert len(compact) == len(real) == 15  # 5 layers x 3 components
    controls = sorted(set(result.table["control"]) - {"none"})
    assert set(controls) <= set(compact.columns) and "gap" in compact.columns
    assert "control" not in compact.columns
    page = tables_html(result.table)
    assert f"showing {SHOWN_ROWS} of 15" in html.unescape(page)
    assert "<code>res.table</code> has all" in page
    compact_part = page[: page.index("<details>")]
    assert compact_part.count("<tr") == SHOWN_ROWS + 1  # header + the rows shown
    full = page[page.index("<details>") :]
    assert full.count("<tr") == len(result.table) + 1


def test_p_values_show_for_the_real_probe_only(result):
    compact = compact_frame(result.table)
    assert list(compact.columns).count("p_adj") == 1
    real = result.table[result.table["control"] == "none"].reset_index(drop=True)
    assert list(compact["p_adj"]) == [f"{p:.3g}" for p in real["p_adj"]]


def test_tables_without_controls_keep_headline_columns_and_join_intervals():
    ranking = pd.DataFrame(
        dict(site=["L1.attn", "L0.mlp"], layer=[1, 0], component=["attn", "mlp"],
             probe_score=[0.9, float("nan")], effect=[0.41234, 0.1], ci_low=[0.3, 0.0],
             ci_high=[0.5, 0.2], tested=[True, True], extra=[1, 2])
    )  # fmt: skip
    compact = compact_frame(ranking)
    assert list(compact.columns) == ["site", "probe_score", "effect", "95% CI"]
    assert list(compact["effect"]) == ["0.412", "0.100"]
    assert list(compact["probe_score"]) == ["0.900", "—"]
    assert list(compact["95% CI"]) == ["[0.30, 0.50]", "[0.00, 0.20]"]


def test_plain_repr_is_deterministic_and_free_of_addresses(result):
    text = repr(result)
    assert text == repr(result)
    assert text.startswith("DetectResult(detect): " + result.verdict())
    assert f"showing {SHOWN_ROWS} of 15" in text
    assert not re.search(r"0x[0-9a-f]{6,}", text)


def test_a_failing_chart_shows_its_error_between_verdict_and_tables(result, monkeypatch):
    def broken():
        raise ValueError("no chart for you")

    monkeypatch.setattr(result, "chart", broken)
    verdict, failed, tables = display_parts(result)
    assert failed._repr_mimebundle_()["text/plain"] == "chart failed: ValueError: no chart for you"
    assert "<table" in tables._repr_mimebundle_()["text/html"]


def test_single_bundle_display_has_verdict_and_tables_without_svg(result):
    bundle = result._repr_mimebundle_()
    assert bundle["text/plain"] == repr(result)
    assert result.verdict() in html.unescape(bundle["text/html"])
    assert "<svg" not in bundle["text/html"]


# ---- report.html reads as a report ----------------------------------------------------


def test_report_leads_with_title_verdict_and_methods_and_ends_with_provenance(result, tmp_path):
    page = (result.to_bundle(tmp_path / "run") / "report.html").read_text()
    text = html.unescape(page)
    assert "<h1>detect 'number'</h1>" in text  # the run's own description, not "detect: run"
    order = [
        text.index(result.verdict()),
        text.index("<h2>Methods</h2>"),
        text.index("Probe score per layer, with controls and 95% intervals"),  # not "main"
        text.index("showing 12 of 15"),
        text.index("<summary>Provenance"),
    ]
    assert order == sorted(order)
    methods = text[text.index("<h2>Methods</h2>") : text.index("<h2>Results</h2>")]
    for said in ("ridge probe", "1 seed(s)", "label-shuffled probe", "random subspace",
                 "200 bootstrap resamples", "50 label permutations", "holm-corrected"):  # fmt: skip
        assert said in methods, said
    # the flat headline numbers and the JSON are there, but collapsed at the end
    assert text.index("best_per_component.resid.score") > text.index("<h2>Details</h2>")


def test_chart_keys_read_as_titles():
    from mechwidgets.report.html import run_title
    from mechwidgets.viz.findings import chart_title

    assert chart_title("cka_resid", "collapse") == ("Layer-to-layer similarity (CKA), resid stream")
    assert chart_title("main", "compare") == "Layer curves per label: onset and peak"
    spec = {"extraction": {"model_name": "toy-grammar"}, "dataset": {"name": "agreement"}}
    record = {"action": "compare", "params": {"labels": ["a", "b"]}, "spec": spec}
    assert run_title(record) == "compare 'a' vs 'b' in toy-grammar, task agreement"
