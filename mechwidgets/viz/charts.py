"""Chart builders: a tidy table in, an altair chart out.

Every action's picture is built here by a pure function, so a chart is a value that tests
compare with ``to_dict()`` and bundles save as Vega-Lite. The tables follow the actions'
tidy contract: one row per (label, layer, component, control) with ``score``, ``ci_low``
and ``ci_high``; ``control`` is ``"none"`` for the real probe.

>>> layer_curve_chart(result.table)            # probe score per layer, CI band, controls
>>> compare_chart(result.table, threshold=0.75)  # one curve per label, onset and peak marked
>>> cka_heatmap(result.data["cka"])             # layer x layer similarity, NaN = "undefined"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import xarray as xr

from mechwidgets.core.components import COMPONENT_ORDER, component_key
from mechwidgets.core.errors import MechError

if TYPE_CHECKING:  # altair takes seconds to import: each drawing function imports it
    import altair as alt

#: how each control baseline is drawn; the real probe ("none") is the solid line
CONTROL_STYLES = {
    "none": [1, 0],
    "label_shuffle": [6, 3],
    "random_subspace": [2, 2],
    "control_task": [8, 3, 2, 3],
}
PROBE = "probe"
UNDEFINED = "undefined"
_CURVE_COLUMNS = ("label", "layer", "component", "control", "score", "ci_low", "ci_high")


class ChartError(MechError, ValueError):
    """A table handed to a chart builder lacks what the chart needs."""


def layer_curve_chart(
    table: pd.DataFrame,
    chance: float | None = None,
    metric: str = "score",
    width: int = 220,
    height: int = 180,
) -> alt.FacetChart:
    """Probe score per layer, one panel per component (and one row per label).

    Parameters
    ----------
    table : tidy result table (see module docstring); a ``chance`` column, if present,
        draws a chance line per panel.
    chance : chance level to draw when the table has no ``chance`` column.
    metric : the y-axis title (e.g. ``"accuracy"``).
    width, height : size of one panel in pixels.

    Returns
    -------
    A faceted chart: the real probe as a solid line with its CI as a shaded band, each
    control as a dashed line in grey, and the chance level as a dotted rule.
    """
    import altair as alt

    df = _curve_frame(table)
    if chance is not None and "chance" not in df:
        df["chance"] = float(chance)
    df["baseline"] = df["control"].map(lambda c: PROBE if c == "none" else str(c))
    controls = [c for c in pd.unique(df["control"]) if c != "none"]
    domain = [PROBE, *controls]
    colour = alt.Color(
        "baseline:N",
        title="series",
        scale=alt.Scale(domain=domain, range=["#1f5fa8", *_greys(len(controls))]),
    )
    dashes = [CONTROL_STYLES.get(c, [4, 4]) for c in ["none", *controls]]
    dash = alt.StrokeDash(
        "baseline:N", title="series", scale=alt.Scale(domain=domain, range=dashes)
    )
    x = _layer_axis()
    y = alt.Y("score:Q", title=metric, scale=alt.Scale(zero=False))
    base = alt.Chart().properties(width=width, height=height)
    real = alt.datum.control == "none"
    layers: list[Any] = [
        base.mark_area(opacity=0.25, color="#1f5fa8")
        .encode(x=x, y=alt.Y("ci_low:Q", title=metric), y2="ci_high:Q")
        .transform_filter(real),
        base.mark_line(point=True).encode(
            x=x, y=y, color=colour, strokeDash=dash, tooltip=_tooltip(df)
        ),
    ]
    if "chance" in df:
        layers.append(base.mark_rule(strokeDash=[1, 3], color="black").encode(y="mean(chance):Q"))
    return _facet(alt.layer(*layers, data=df), df)


def compare_chart(
    table: pd.DataFrame,
    threshold: float = 0.75,
    metric: str = "score",
    width: int = 320,
    height: int = 220,
) -> alt.FacetChart:
    """One layer curve per label with CI bands, onset and peak marked.

    Parameters
    ----------
    table : tidy result table; only the real probe rows (``control == "none"``) are drawn.
    threshold : score a curve must reach for its first-layer-above-threshold marker.
    metric : the y-axis title.
    width, height : size of one panel in pixels.

    Returns
    -------
    A chart faceted by component: per label a line and CI band, a triangle at the first
    layer whose score reaches ``threshold``, a diamond at the peak, and the threshold rule.
    """
    import altair as alt

    df = _curve_frame(table)
    df = df[df["control"] == "none"].drop(columns="control")
    if df.empty:
        raise ChartError("compare_chart needs rows with control == 'none' (the real probe)")
    marks = _onset_and_peak(df, threshold)
    x = _layer_axis()
    colour = alt.Color(
        "label:N",
        title="label",
        sort=list(pd.unique(df["label"])),
        legend=alt.Legend(symbolOpacity=1),
    )
    base = alt.Chart().properties(width=width, height=height)
    layers = alt.layer(
        base.mark_area(opacity=0.2).encode(
            x=x,
            y=alt.Y("ci_low:Q", title=metric, scale=alt.Scale(zero=False), stack=None),
            y2="ci_high:Q",
            color=colour,
        ),
        base.mark_line(point=True).encode(x=x, y="score:Q", color=colour, tooltip=_tooltip(df)),
        base.mark_rule(strokeDash=[4, 4], color="black").encode(y=alt.datum(threshold)),
        base.mark_point(size=160, filled=True, stroke="black")
        .encode(
            x=x,
            y="score:Q",
            color=colour,
            shape=alt.Shape(
                "marker:N",
                title="marker",
                scale=alt.Scale(domain=["first above", "peak"], range=["triangle-up", "diamond"]),
            ),
            tooltip=["label:N", "marker:N", "layer:Q", alt.Tooltip("score:Q", format=".3f")],
        )
        .transform_filter(alt.datum.marker != ""),
        data=pd.concat([df.assign(marker=""), marks], ignore_index=True),
    )
    return _facet(layers, df, by_label=False)


def heatmap(
    table: pd.DataFrame,
    x: str,
    y: str,
    value: str,
    title: str | None = None,
    domain: Sequence[float] | None = None,
    annotate: bool | None = None,
    cell: int = 28,
) -> alt.LayerChart:
    """A grid of ``value`` over ``x`` by ``y`` (layer x component, layer x head, ...).

    Parameters
    ----------
    table : one row per cell with columns ``x``, ``y`` and ``value``.
    x, y, value : column names.
    title : the chart's heading (default: ``value``); the legend is titled ``value``, short
        enough not to be cut at vega's legend width.
    domain : colour scale limits; default: the data's range, centred on 0 with a diverging
        scheme when values have both signs.
    annotate : write each cell's value in it; default: when the grid has <= 16 x 16 cells.
    cell : cell size in pixels.

    Returns
    -------
    A layered chart. Missing or NaN cells are grey and read "undefined", never a number.
    """
    import altair as alt

    missing = [c for c in (x, y, value) if c not in table]
    if missing:
        raise ChartError(f"heatmap table lacks column(s) {missing}; it has {list(table.columns)}")
    df = table[[x, y, value]].copy()
    df[value] = pd.to_numeric(df[value], errors="coerce").astype(float)
    finite = np.isfinite(df[value].to_numpy())
    df.loc[~finite, value] = np.nan
    df["shown"] = [f"{v:.2f}" if ok else UNDEFINED for v, ok in zip(df[value], finite, strict=True)]
    df["text"] = df["shown"].where(finite, "–")
    xs, ys = _ordered(df[x]), _ordered(df[y])
    # long labels (token positions such as "6 [MASK]") would overlap side by side: slant them
    angle = 0 if max((len(str(v)) for v in xs), default=0) <= 4 else -45
    enc_x = alt.X(f"{x}:O", sort=xs, title=x, axis=alt.Axis(labelAngle=angle))
    enc_y = alt.Y(f"{y}:O", sort=ys, title=y)
    values = df.loc[finite, value]
    signed = bool(len(values) and values.min() < 0 < values.max())
    if domain is None:
        lim = float(values.abs().max()) if len(values) else 1.0
        domain = [-lim, lim] if signed else [float(values.min()), float(values.max())]
    lo, hi = (float(d) for d in domain)
    scale = alt.Scale(scheme="redblue" if signed else "viridis", reverse=signed, domain=[lo, hi])
    # white text on the scale's dark end(s): both extremes of redblue, the low end of viridis
    dark = f"abs(datum['{value}']) > {hi / 2}" if signed else f"datum['{value}'] < {(lo + hi) / 2}"
    tooltip = [f"{x}:O", f"{y}:O", alt.Tooltip("shown:N", title=value)]
    base = alt.Chart().properties(width=cell * len(xs), height=cell * len(ys))
    layers = [
        base.mark_rect()
        .encode(
            x=enc_x,
            y=enc_y,
            color=alt.Color(f"{value}:Q", title=value, scale=scale),
            tooltip=tooltip,
        )
        .transform_filter(alt.datum.shown != UNDEFINED),
        base.mark_rect(color="#d9d9d9")
        .encode(x=enc_x, y=enc_y, tooltip=tooltip)
        .transform_filter(alt.datum.shown == UNDEFINED),
    ]
    if annotate if annotate is not None else len(xs) <= 16 and len(ys) <= 16:
        layers.append(
            base.mark_text(fontSize=9).encode(
                x=enc_x,
                y=enc_y,
                text="text:N",
                color=alt.condition(dark, alt.value("white"), alt.value("black")),
                tooltip=tooltip,
            )
        )
    heading = alt.Title(title or value)
    if not finite.all():
        heading = alt.Title(title or value, subtitle=f"grey cells: {UNDEFINED}")
    return cast(alt.LayerChart, alt.layer(*layers, data=df)).properties(title=heading)


def method_agreement_chart(
    table: pd.DataFrame, x: str, y: str, title: str, color: str = "component"
) -> alt.LayerChart:
    """One point per cell: an approximation (``y``) against the exact value (``x``).

    The dashed diagonal is perfect agreement; points far from it are the cells where the
    approximation cannot be trusted (e.g. attribution patching across a saturated swap).
    """
    import altair as alt

    df = table[[x, y, color, "layer"]].dropna()
    lo = float(min(df[x].min(), df[y].min(), 0.0))
    hi = float(max(df[x].max(), df[y].max(), 1.0))
    diagonal = (
        alt.Chart(pd.DataFrame({x: [lo, hi], y: [lo, hi]}))
        .mark_line(strokeDash=[4, 4], color="#888")
        .encode(x=f"{x}:Q", y=f"{y}:Q")
    )
    points = (
        alt.Chart(df)
        .mark_circle(size=40, opacity=0.75)
        .encode(
            x=alt.X(f"{x}:Q", title=x, scale=alt.Scale(domain=[lo, hi])),
            y=alt.Y(f"{y}:Q", title=y, scale=alt.Scale(domain=[lo, hi])),
            color=alt.Color(f"{color}:N", sort=_ordered(df[color])),
            tooltip=[
                "layer:O",
                f"{color}:N",
                alt.Tooltip(f"{x}:Q", format=".3f"),
                alt.Tooltip(f"{y}:Q", format=".3f"),
            ],
        )
    )
    chart = cast(alt.LayerChart, alt.layer(diagonal, points))
    return chart.properties(title=title, width=260, height=260)


def cka_heatmap(da: xr.DataArray, title: str = "CKA") -> alt.LayerChart:
    """Layer x layer similarity from a 2-D DataArray (e.g. dims ``layer_a``, ``layer_b``).

    Parameters
    ----------
    da : a square similarity matrix with two named dims; NaN (undefined CKA, e.g. for a
        constant representation) is shown as "undefined".
    title : legend title.

    Returns
    -------
    The :func:`heatmap` of the matrix on a fixed 0..1 colour scale.
    """
    if da.ndim != 2:
        raise ChartError(f"cka_heatmap needs a 2-D DataArray, got dims {da.dims}")
    row, col = (str(d) for d in da.dims)
    name = str(da.name or "cka")
    table = da.rename(name).to_dataframe().reset_index()[[row, col, name]]
    return heatmap(table, x=col, y=row, value=name, title=title, domain=[0.0, 1.0])


def _curve_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The curve columns (and ``chance`` if present) with JSON-safe dtypes."""
    missing = [c for c in _CURVE_COLUMNS if c not in table]
    if missing:
        raise ChartError(f"chart table lacks column(s) {missing}; expected {list(_CURVE_COLUMNS)}")
    cols = [*_CURVE_COLUMNS, *(["chance"] if "chance" in table else [])]
    df = table[cols].copy()
    df["layer"] = df["layer"].astype(int)
    df["control"] = df["control"].fillna("none").astype(str)
    for col in ("label", "component"):
        df[col] = df[col].astype(str)
    return df.reset_index(drop=True)


def _onset_and_peak(df: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Rows marking, per (label, component), the first layer >= threshold and the peak."""
    rows = []
    for _, curve in df.sort_values("layer").groupby(["label", "component"], sort=False):
        above = curve[curve["score"] >= threshold]
        if len(above):
            rows.append(above.iloc[0].to_dict() | {"marker": "first above"})
        rows.append(curve.loc[curve["score"].idxmax()].to_dict() | {"marker": "peak"})
    return pd.DataFrame(rows, columns=[*df.columns, "marker"])


def _facet(layers: Any, df: pd.DataFrame, by_label: bool = True) -> alt.FacetChart:
    """One panel per component (columns) and, with several labels, per label (rows)."""
    import altair as alt

    column = alt.Column("component:N", sort=_ordered(df["component"]), title=None)
    if by_label and df["label"].nunique() > 1:
        row = alt.Row("label:N", sort=list(pd.unique(df["label"])), title=None)
        return layers.facet(column=column, row=row)
    return layers.facet(column=column)


def _layer_axis() -> alt.X:
    """Layers in order, the embedding layer (-1, first) labelled ``embed``."""
    import altair as alt

    labels = "datum.value == -1 ? 'embed' : format(datum.value, 'd')"
    return alt.X("layer:Q", title="layer", axis=alt.Axis(tickMinStep=1, labelExpr=labels))


def _tooltip(df: pd.DataFrame) -> list[Any]:
    import altair as alt

    extra = [c for c in ("control",) if c in df]
    return [
        "label:N",
        "component:N",
        *[f"{c}:N" for c in extra],
        "layer:Q",
        alt.Tooltip("score:Q", format=".3f"),
        alt.Tooltip("ci_low:Q", format=".3f"),
        alt.Tooltip("ci_high:Q", format=".3f"),
    ]


def _ordered(values: pd.Series) -> list[Any]:
    """Axis order: numbers ascending; components in the one component order; else as
    they come."""
    uniq = list(pd.unique(values))
    if pd.api.types.is_numeric_dtype(values):
        return sorted(int(v) if float(v).is_integer() else float(v) for v in uniq)
    known = sorted(
        (str(v) for v in uniq if component_key(str(v))[0] < len(COMPONENT_ORDER)), key=component_key
    )
    return known + [str(v) for v in uniq if v not in known]


def _greys(n: int) -> list[str]:
    palette = ["#7f7f7f", "#b07aa1", "#9c755f", "#bab0ac"]
    return [palette[i % len(palette)] for i in range(n)]
