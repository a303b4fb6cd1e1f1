"""Pictures of results: altair charts, the chart widget, widgets and the views below the layer.

>>> mw.viz.ChartView(res.chart())                               # interactive, offline
>>> mw.viz.token_scores(model, cube, "subject_number", layer=2)  # coloured tokens
>>> mw.viz.attention_patterns(model, task.texts[:3])             # attention per head
"""

from mechwidgets.viz.attention import AttentionPatterns, attention_patterns
from mechwidgets.viz.chart_widget import ChartView
from mechwidgets.viz.tokens import TokenScores, token_scores

__all__ = ["AttentionPatterns", "ChartView", "TokenScores", "attention_patterns", "token_scores"]
