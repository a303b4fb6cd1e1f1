"""mechwidgets: Jupyter-native mechanistic interpretability.

Load a model, turn texts into a labelled activation cube, and ask five questions of it:
``detect``, ``compare``, ``localize``, ``polysemantic`` and ``collapse``.

>>> import mechwidgets as mw
>>> model = mw.load_model("toy-grammar")
>>> cube = mw.extract(model, mw.get_task("subject_number"), layers="all")

The top-level names are imported on first use (as scikit-learn and xarray do), so
``import mechwidgets`` and ``%load_ext mechwidgets`` load none of torch, nnsight,
transformers or altair; ``bench/import_time.py`` measures it.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and IDEs
    from mechwidgets.actions.collapse import collapse
    from mechwidgets.actions.compare import compare
    from mechwidgets.actions.detect import detect
    from mechwidgets.actions.localize import localize
    from mechwidgets.actions.patching import attribution_patch, patch
    from mechwidgets.actions.polysemantic import polysemantic
    from mechwidgets.data.catalog import get_task, get_task_pairs, list_tasks
    from mechwidgets.data.tasks import Task
    from mechwidgets.extract import extract
    from mechwidgets.extract.cube import open_cube
    from mechwidgets.extract.store import convert_cube
    from mechwidgets.intervene import metrics
    from mechwidgets.models.loading import Model, load_model
    from mechwidgets.models.zoo import list_models
    from mechwidgets.viz import widgets

__version__ = "0.1.0"

#: public name -> the module that defines it (a module itself when the name is the module's)
_LAZY = {
    "Model": "mechwidgets.models.loading",
    "Task": "mechwidgets.data.tasks",
    "attribution_patch": "mechwidgets.actions.patching",
    "collapse": "mechwidgets.actions.collapse",
    "compare": "mechwidgets.actions.compare",
    "convert_cube": "mechwidgets.extract.store",
    "detect": "mechwidgets.actions.detect",
    "extract": "mechwidgets.extract.extractor",
    "get_task": "mechwidgets.data.catalog",
    "get_task_pairs": "mechwidgets.data.catalog",
    "list_models": "mechwidgets.models.zoo",
    "list_tasks": "mechwidgets.data.catalog",
    "load_model": "mechwidgets.models.loading",
    "localize": "mechwidgets.actions.localize",
    "metrics": "mechwidgets.intervene.metrics",
    "open_cube": "mechwidgets.extract.cube",
    "patch": "mechwidgets.actions.patching",
    "polysemantic": "mechwidgets.actions.polysemantic",
    "widgets": "mechwidgets.viz.widgets",
}
#: subpackages reachable as attributes (``mw.viz.ChartView``), also imported on first use
_SUBPACKAGES = frozenset(
    {
        "actions",
        "analysis",
        "core",
        "data",
        "intervene",
        "jupyter",
        "models",
        "probes",
        "report",
        "viz",
    }
)
__all__ = [
    "Model",
    "Task",
    "attribution_patch",
    "collapse",
    "compare",
    "convert_cube",
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
    "open_cube",
    "patch",
    "polysemantic",
    "unload_ipython_extension",
    "widgets",
]


def __getattr__(name: str) -> Any:
    """Import a top-level name on first use and keep it (PEP 562)."""
    where = _LAZY.get(name) or (f"mechwidgets.{name}" if name in _SUBPACKAGES else None)
    if where is None:
        raise AttributeError(f"module 'mechwidgets' has no attribute '{name}'")
    module = importlib.import_module(where)
    # a function named like its module (polysemantic) is the value; a module (metrics) is
    value = getattr(module, name, module)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBPACKAGES})


class _Package(types.ModuleType):
    """This package's module type: a subpackage named like a lazy function (``extract``)
    does not replace it when the subpackage is imported first (the import system sets a
    package's attribute to each submodule it loads)."""

    def __setattr__(self, name: str, value: Any) -> None:
        where = _LAZY.get(name)
        if isinstance(value, types.ModuleType) and where and where != value.__name__:
            return  # ``mw.extract`` stays the function, resolved by ``__getattr__``
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext mechwidgets``: register the ``%mechinterp`` magics (nothing heavy loads)."""
    from mechwidgets.jupyter.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext mechwidgets``."""
    from mechwidgets.jupyter.magics import unload_ipython_extension as unload

    unload(ipython)
