"""Compact views of result tables: controls side by side, for terminals, notebooks, reports.

The tidy table has one row per (label, layer, component, control); a person reads it
best with the controls side by side: one row per (label, layer, component), the probe's
score with its interval, each control's score, and the gap between probe and the
strongest control. p-values belong to the real probe only, so only its ``p_adj`` shows.
Tables without controls (localize's ranking, polysemantic's neurons) keep their headline
columns, intervals joined into one "95% CI" column.

>>> print(score_table(result.table))
label           layer  component  probe  95% CI        label_shuffle  random_subspace  gap
subject_number      0  resid      0.612  [0.57, 0.65]  0.497          0.541            0.071
"""

from __future__ import annotations

import pandas as pd

from mechwidgets.viz.charts import ChartError

_KEYS = ["label", "layer", "component"]
#: headline columns of tables without controls, in the order shown (those present)
_HEADLINE = (
    "site", "label", "layer", "component", "neuron", "features", "loading_index",
    "probe_score", "effect", "ci", "p_adj",
)  # fmt: skip


def score_frame(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The tidy table with controls as columns, values formatted as text.

    Parameters
    ----------
    table : tidy result table with ``label``, ``layer``, ``component``, ``control``,
        ``score``, ``ci_low`` and ``ci_high``; a ``p_adj`` column, if present, is shown
        for the real probe.
    digits : decimals for scores.

    Returns
    -------
    One row per (label, layer, component): ``probe``, ``95% CI``, one column per control,
    ``gap`` (probe minus the strongest control) and ``p_adj``.
    """
    need = [*_KEYS, "control", "score", "ci_low", "ci_high"]
    if any(c not in table for c in need):
        missing = [c for c in need if c not in table]
        raise ChartError(f"score_table needs column(s) {missing}; got {list(table.columns)}")
    real = table[table["control"] == "none"].set_index(_KEYS)
    out = pd.DataFrame(index=real.index)
    out["probe"] = real["score"].map(f"{{:.{digits}f}}".format)
    out["95% CI"] = _intervals(real["ci_low"], real["ci_high"])
    controls = table[table["control"] != "none"].pivot_table(
        index=_KEYS, columns="control", values="score", sort=False
    )
    for name in controls.columns:
        out[name] = controls[name].reindex(out.index).map(f"{{:.{digits}f}}".format)
    if len(controls.columns):
        gap = real["score"] - controls.max(axis=1).reindex(real.index)
        out["gap"] = gap.map(f"{{:+.{digits}f}}".format)
    if "p_adj" in real:
        out["p_adj"] = real["p_adj"].map("{:.3g}".format)
    return out.reset_index()


def score_table(table: pd.DataFrame, digits: int = 3) -> str:
    """:func:`score_frame` as aligned text (what the CLI prints)."""
    return score_frame(table, digits).to_string(index=False)


def compact_frame(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A result table as a reader wants it: :func:`score_frame` when it has controls,
    else its headline columns (numbers to ``digits`` decimals, intervals joined)."""
    if "control" in table and "score" in table:
        return score_frame(table, digits)
    out = table.copy()
    if {"ci_low", "ci_high"} <= set(out):
        out["ci"] = _intervals(out["ci_low"], out["ci_high"])
    loadings = [c for c in out if str(c).startswith("loading[")]
    keep = [c for c in _HEADLINE if c in out] + loadings
    if "site" in keep:  # a site already names its layer and component
        keep = [c for c in keep if c not in ("layer", "component")]
    out = out[keep or list(out.columns)].rename(columns={"ci": "95% CI"})
    for col in out:
        if pd.api.types.is_float_dtype(out[col]):
            fmt = "{:.3g}" if col == "p_adj" else f"{{:.{digits}f}}"
            out[col] = out[col].map(lambda v, f=fmt: "—" if pd.isna(v) else f.format(v))
    return out.reset_index(drop=True)


def _intervals(low: pd.Series, high: pd.Series) -> list[str]:
    return [
        "—" if pd.isna(lo) else f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(low, high, strict=True)
    ]
