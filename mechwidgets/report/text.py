"""Plain-text views of result tables, for terminals and logs.

The tidy table has one row per (label, layer, component, control); a person reads it
best with the controls side by side: one row per (label, layer, component), the probe's
score with its interval, each control's score, and the gap between probe and the
strongest control.

>>> print(score_table(result.table))
label           layer  component  probe  95% CI        label_shuffle  random_subspace  gap
subject_number      0  resid      0.612  [0.57, 0.65]  0.497          0.541            0.071
"""

from __future__ import annotations

import pandas as pd

from mechwidgets.viz.charts import ChartError

_KEYS = ["label", "layer", "component"]


def score_table(table: pd.DataFrame, digits: int = 3) -> str:
    """The tidy table with controls as columns, as aligned text.

    Parameters
    ----------
    table : tidy result table with ``label``, ``layer``, ``component``, ``control``,
        ``score``, ``ci_low`` and ``ci_high``; a ``p_adj`` column, if present, is shown.
    digits : decimals for scores.

    Returns
    -------
    The text; tables without a ``control`` column print as they are.
    """
    need = [*_KEYS, "control", "score", "ci_low", "ci_high"]
    if any(c not in table for c in need):
        missing = [c for c in need if c not in table]
        raise ChartError(f"score_table needs column(s) {missing}; got {list(table.columns)}")
    real = table[table["control"] == "none"].set_index(_KEYS)
    out = pd.DataFrame(index=real.index)
    out["probe"] = real["score"].map(f"{{:.{digits}f}}".format)
    out["95% CI"] = [
        f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(real["ci_low"], real["ci_high"], strict=True)
    ]
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
    return out.reset_index().to_string(index=False)
