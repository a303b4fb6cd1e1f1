"""mechwidgets: Jupyter-native mechanistic interpretability.

Load a model, turn texts into a labelled activation cube, and ask five questions of it:
``detect``, ``compare``, ``localize``, ``polysemantic`` and ``collapse``.

>>> import mechwidgets as mw
>>> model = mw.load_model("toy-grammar")
>>> cube = mw.extract(model, mw.get_task("subject_number"), layers="all")
"""

from __future__ import annotations

from mechwidgets import metrics
from mechwidgets.actions.collapse import collapse
from mechwidgets.actions.compare import compare
from mechwidgets.actions.detect import detect
from mechwidgets.actions.interventions.attribution import attribution_patch
from mechwidgets.actions.interventions.patching import patch
from mechwidgets.actions.localize import localize
from mechwidgets.actions.polysemantic import polysemantic
from mechwidgets.data.catalog import get_task, get_task_pairs, list_tasks
from mechwidgets.data.tasks import Task
from mechwidgets.extract import extract
from mechwidgets.jupyter.magics import load_ipython_extension, unload_ipython_extension
from mechwidgets.models.loading import Model, load_model
from mechwidgets.models.zoo import list_models
from mechwidgets.viz import widgets

__version__ = "0.1.0"
__all__ = [
    "Model",
    "Task",
    "attribution_patch",
    "collapse",
    "compare",
    "detect",
    "extract",
    "get_task",
    "get_task_pairs",
    "list_models",
    "list_tasks",
    "load_ipython_extension",
    "load_model",
    "localize",
    "metrics",
    "patch",
    "polysemantic",
    "unload_ipython_extension",
    "widgets",
]
