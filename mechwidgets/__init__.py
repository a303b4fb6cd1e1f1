"""mechwidgets: Jupyter-native mechanistic interpretability.

Load a model, turn texts into a labelled activation cube, and ask five questions of it:
``detect``, ``compare``, ``localize``, ``polysemantic`` and ``collapse``.

>>> import mechwidgets as mw
>>> model = mw.load_model("toy-grammar")
>>> cube = mw.extract(model, mw.get_task("subject_number"), layers="all")
"""

from __future__ import annotations

__version__ = "0.1.0"

from mechwidgets.jupyter.magics import load_ipython_extension, unload_ipython_extension
from mechwidgets.viz import widgets as widgets  # mw.widgets.LayerExplorer(res)
from mechwidgets.extract import extract as extract
from mechwidgets.models.loading import Model as Model
from mechwidgets.models.loading import load_model as load_model
from mechwidgets.data.catalog import get_task as get_task
from mechwidgets.data.catalog import get_task_pairs as get_task_pairs
from mechwidgets.data.catalog import list_tasks as list_tasks
from mechwidgets.data.tasks import Task as Task
from mechwidgets.models.zoo import list_models as list_models
from mechwidgets.actions.detect import detect as detect
from mechwidgets.actions.compare import compare as compare
from mechwidgets.actions.collapse import collapse as collapse
from mechwidgets.actions.polysemantic import polysemantic as polysemantic
from mechwidgets import metrics as metrics
from mechwidgets.actions.localize import localize as localize
from mechwidgets.actions.interventions.patching import patch as patch
from mechwidgets.actions.interventions.attribution import attribution_patch as attribution_patch
