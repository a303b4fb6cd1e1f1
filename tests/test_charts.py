"""Chart builders: structure of the Vega-Lite they emit, on synthetic tidy tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from mechwidgets.core.errors import MechError
from mechwidgets.viz.charts import (
    UNDEFINED,
    cka_heatmap,
    compare_chart,
    heatmap,
    layer_curve_chart,
)

CONTROLS = ("none", "label_shuffle", "random_subspace")


def tidy(labels=("subject_number",), layers=4, slope=0.1, chance=None) -> pd.DataFrame:
    """A detect-shaped table: real probe rising with depth, controls flat at chance."""
    rows = []
    for li, label in enumerate(labels):
        for comp in ("resid", "attn", "mlp"):
            for layer in range(layers):
                for control in CONTROLS:
                    score = 0.5 + (slope - 0.02 * li) * layer if control == "none" else 0.5
                    row = dict(label=label, layer=layer, component=comp, control=control)
                    row |= dict(score=score, ci_low=score - 0.03, ci_high=score + 0.03)
                    if chance is not None:
                        row["chance"] = chance
                    rows.append(row)
    return pd.DataFrame(rows)


def layers_of(spec: dict) -> list[dict]:
    return spec["spec"]["layer"] if "spec" in spec else spec["layer"]


def values_of(spec: dict) -> list[dict]:
    (rows,) = spec["datasets"].values()
    return rows


def test_layer_curve_has_ci_band_for_real_probe_only():
    spec = layer_curve_chart(tidy()).to_dict()
    band = next(layer for layer in layers_of(spec) if layer["mark"]["type"] == "area")
    assert band["encoding"]["y"]["field"] == "ci_low"
    assert band["encoding"]["y2"]["field"] == "ci_high"
    assert band["transform"] == [{"filter": "(datum.control === 'none')"}]
    assert spec["facet"]["column"]["field"] == "component"
    assert spec["facet"]["column"]["sort"] == ["resid", "attn", "mlp"]


def test_layer_curve_draws_each_control_dashed():
    spec = layer_curve_chart(tidy()).to_dict()
    line = next(layer for layer in layers_of(spec) if layer["mark"]["type"] == "line")
    dash = line["encoding"]["strokeDash"]["scale"]
    assert dash["domain"] == ["probe", "label_shuffle", "random_subspace"]
    solid, *dashed = dash["range"]
    assert solid == [1, 0]
    assert all(len(d) >= 2 and d[1] > 0 for d in dashed)
    assert len({tuple(d) for d in dashed}) == len(dashed)  # controls tell apart
    baselines = {row["baseline"] for row in values_of(spec)}
    assert baselines == {"probe", "label_shuffle", "random_subspace"}


def test_layer_curve_chance_line_from_column_or_argument():
    def rules(chart):
        return [la for la in layers_of(chart.to_dict()) if la["mark"]["type"] == "rule"]

    assert rules(layer_curve_chart(tidy())) == []
    from_column = rules(layer_curve_chart(tidy(chance=0.5)))
    from_arg = layer_curve_chart(tidy(), chance=0.25).to_dict()
    assert len(from_column) == 1 and from_column[0]["encoding"]["y"]["field"] == "chance"
    assert {row["chance"] for row in values_of(from_arg)} == {0.25}


def test_layer_curve_rows_per_label_and_is_deterministic():
    table = tidy(labels=("subject_number", "animacy"))
    first, second = (json.dumps(layer_curve_chart(table).to_dict()) for _ in range(2))
    assert first == second
    assert json.loads(first)["facet"]["row"]["sort"] == ["subject_number", "animacy"]
    assert "param_" not in first and "view_" not in first  # no generated ids


def test_compare_marks_onset_and_peak_per_label():
    spec = compare_chart(tidy(labels=("a", "b"), layers=5), threshold=0.7).to_dict()
    marks = [r for r in values_of(spec) if r["marker"]]
    onset = {
        (r["label"], r["component"]): r["layer"] for r in marks if r["marker"] == "first above"
    }
    peak = {(r["label"], r["component"]): r["layer"] for r in marks if r["marker"] == "peak"}
    # a rises 0.1 per layer (0.7 at layer 2), b 0.08 (0.74 at layer 3); both peak last
    assert {onset[("a", c)] for c in ("resid", "attn", "mlp")} == {2}
    assert {onset[("b", c)] for c in ("resid", "attn", "mlp")} == {3}
    assert set(peak.values()) == {4}
    assert len(values_of(spec)) == 2 * 3 * 5 + len(marks)  # real probe rows only
    bands = [la for la in layers_of(spec) if la["mark"]["type"] == "area"]
    assert bands[0]["encoding"]["color"]["field"] == "label"
    assert bands[0]["encoding"]["y"]["stack"] is None  # bands overlap, never stack


def test_compare_without_onset_when_threshold_unreached():
    spec = compare_chart(tidy(layers=3), threshold=0.99).to_dict()
    markers = {r["marker"] for r in values_of(spec)}
    assert markers == {"", "peak"}


def test_heatmap_layer_by_component():
    table = pd.DataFrame(
        [dict(layer=la, component=c, delta=la - 1.5) for la in range(4) for c in ("mlp", "attn")]
    )
    spec = heatmap(table, "layer", "component", "delta").to_dict()
    rect = layers_of(spec)[0]
    assert rect["encoding"]["x"]["sort"] == [0, 1, 2, 3]
    assert rect["encoding"]["y"]["sort"] == ["attn", "mlp"]  # known components in model order
    scale = rect["encoding"]["color"]["scale"]
    assert scale["domain"] == [-1.5, 1.5] and scale["scheme"] == "redblue"


def test_cka_heatmap_nan_is_undefined_not_a_number():
    m = np.full((3, 3), 0.5)
    m[0, :] = m[:, 0] = np.nan  # a constant layer 0
    da = xr.DataArray(
        m, dims=("layer_a", "layer_b"), coords={"layer_a": [0, 1, 2], "layer_b": [0, 1, 2]}
    )
    spec = cka_heatmap(da).to_dict()
    rows = values_of(spec)
    undefined = [r for r in rows if r["layer_a"] == 0 or r["layer_b"] == 0]
    assert len(undefined) == 5
    assert all(r["cka"] is None and r["shown"] == UNDEFINED for r in undefined)
    assert "NaN" not in json.dumps(spec)
    grey = [
        la
        for la in layers_of(spec)
        if la.get("transform") == [{"filter": f"(datum.shown === '{UNDEFINED}')"}]
    ]
    assert len(grey) == 1
    assert spec["title"]["subtitle"] == f"grey cells: {UNDEFINED}"
    assert layers_of(spec)[0]["encoding"]["color"]["scale"]["domain"] == [0.0, 1.0]


def test_bad_tables_fail_with_one_line():
    with pytest.raises(MechError, match="lacks column"):
        layer_curve_chart(pd.DataFrame({"layer": [0], "score": [1.0]}))
    with pytest.raises(MechError, match="control == 'none'"):
        compare_chart(tidy().query("control != 'none'"))
    with pytest.raises(MechError, match="2-D"):
        cka_heatmap(xr.DataArray(np.zeros(3), dims=("layer",)))
