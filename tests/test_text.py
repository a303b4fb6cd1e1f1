"""score_table: controls side by side, gap to the strongest control."""

from __future__ import annotations

import pandas as pd
import pytest

from mechwidgets.core.errors import MechError
from mechwidgets.report.text import score_table


def test_controls_become_columns_and_gap_uses_the_strongest():
    rows = [
        dict(label="y", layer=0, component="resid", control="none", score=0.9),
        dict(label="y", layer=0, component="resid", control="label_shuffle", score=0.5),
        dict(label="y", layer=0, component="resid", control="random_subspace", score=0.7),
    ]
    table = pd.DataFrame(rows).assign(ci_low=0.85, ci_high=0.95)
    lines = score_table(table).splitlines()
    assert lines[0].split() == [
        "label",
        "layer",
        "component",
        "probe",
        "95%",
        "CI",
        "label_shuffle",
        "random_subspace",
        "gap",
    ]
    assert lines[1].split() == [
        "y",
        "0",
        "resid",
        "0.900",
        "[0.85,",
        "0.95]",
        "0.500",
        "0.700",
        "+0.200",
    ]
    assert len(lines) == 2


def test_needs_the_tidy_columns():
    with pytest.raises(MechError, match="needs column"):
        score_table(pd.DataFrame({"layer": [0]}))
