"""Pictures of results: altair charts, the chart widget, widgets and the views below the layer.

>>> mw.viz.ChartView(res.chart())                               # interactive, offline
>>> mw.viz.token_scores(model, cube, "subject_number", layer=2)  # coloured tokens
>>> mw.viz.attention_patterns(model, task.texts[:3])             # attention per head

Names load on first use (PEP 562), like the package's top level: importing
``mechwidgets.viz.widgets`` does not pull in the views' torch, nnsight and scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mechwidgets.viz.deferred_grammar import defer_iri_grammar

if TYPE_CHECKING:
    from mechwidgets.viz.attention import AttentionPatterns, attention_patterns
    from mechwidgets.viz.chart_widget import ChartView
    from mechwidgets.viz.tokens import TokenScores, token_scores

_LAZY = {
    "AttentionPatterns": "mechwidgets.viz.attention",
    "attention_patterns": "mechwidgets.viz.attention",
    "ChartView": "mechwidgets.viz.chart_widget",
    "TokenScores": "mechwidgets.viz.tokens",
    "token_scores": "mechwidgets.viz.tokens",
}
__all__ = ["AttentionPatterns", "ChartView", "TokenScores", "attention_patterns", "token_scores"]

# Before any chart imports altair: its schema library's IRI grammar compiles on first use
# only (1.3 s of CPU at import otherwise; see mechwidgets.viz.deferred_grammar).
defer_iri_grammar()


def __getattr__(name: str) -> Any:
    """Import a name on first use and keep it (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'mechwidgets.viz' has no attribute '{name}'")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
