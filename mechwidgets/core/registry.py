"""Registry of actions by name: one registration per action, importing nothing heavy.

A :class:`Registration` names the action's typed, frozen parameters (a class of
:mod:`mechwidgets.core.params`), and its action class, public function and result class
by dotted path, imported on the first run. Listing the actions and checking a config's
parameters (:func:`check_params`, what a RunSpec does when it is parsed) therefore load
no torch, scikit-learn or xarray: a typo fails in well under a second. The runner, the
CLI, the magics and the Launcher look actions up here, and an action says what it needs
(:class:`Needs`) so the runner builds it once: the cube with the components and neurons
the action reads, or no cube for an action that runs the model itself. A new analysis is
one decorated class away from every entry point (:func:`register_action`).

>>> list_actions()[:3]
['attribution_patch', 'collapse', 'compare']
>>> check_params("detect", {"label": "subject_number", "seeds": 3}).seeds
3
>>> action_needs("patch", {})  # imports the patching action now
Needs(cube=False, components=(), neurons=False, pairs=True)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from mechwidgets.core.errors import SpecError
from mechwidgets.core.params import (
    AttributionParams,
    CollapseParams,
    CompareParams,
    DetectParams,
    LocalizeParams,
    Params,
    PatchParams,
    PolysemanticParams,
    RecoveryParams,
    check,
)


class Action(Protocol):
    """The contract every action keeps: three verbs, called in order by the runner."""

    name: str

    def prepare(self, context: Any) -> Any:
        """Check inputs and gather what ``run`` needs (cube slices, labels, model handles)."""

    def run(self, prepared: Any) -> Any:
        """Do the work and return a result object."""

    def summarize(self, result: Any) -> dict[str, Any]:
        """The headline numbers of a result, JSON-serialisable."""


@dataclass(frozen=True)
class Needs:
    """What an action takes from the runner, so the runner extracts once.

    Parameters
    ----------
    cube : an activation cube of the task (False: the action runs the model itself, and
        the runner extracts nothing).
    components : cube components the action reads beyond the config's selectors, e.g.
        ``("head",)``; the runner adds them at every layer before extracting.
    neurons : the cube must carry MLP neuron activations.
    pairs : the dataset as clean/corrupt prompt pairs
        (:func:`mechwidgets.data.catalog.get_task_pairs`) rather than a task.
    """

    cube: bool = True
    components: tuple[str, ...] = ()
    neurons: bool = False
    pairs: bool = False


#: an object, or where to import it from: ``"package.module:name"``
Ref = str | Any


@dataclass(frozen=True)
class Registration:
    """One action: its name, its parameters, and what runs it.

    Parameters
    ----------
    name : what a config's ``action`` and the magic's first word say.
    params : the typed parameters a config's ``action.params`` and the public function's
        keyword arguments are checked against.
    action : the class with ``prepare``/``run``/``summarize`` (:class:`Action`).
    function : the public function (``mw.detect``), whose keyword arguments are ``params``.
    result : the class of the result the action returns.
    """

    name: str
    params: type[Params]
    action: Ref
    function: Ref
    result: Ref


def _builtin(
    name: str, params: type[Params], module: str, action: str, result: str, function: str = ""
) -> Registration:
    """A registration of this package's, in ``mechwidgets.actions.<module>``."""
    where = f"mechwidgets.actions.{module}"
    return Registration(
        name, params, f"{where}:{action}", f"{where}:{function or name}", f"{where}:{result}"
    )


_ACTIONS: dict[str, Registration] = {
    r.name: r
    for r in (
        _builtin("detect", DetectParams, "detect", "Detect", "DetectResult"),
        _builtin("compare", CompareParams, "compare", "Compare", "CompareResult"),
        _builtin("collapse", CollapseParams, "collapse", "Collapse", "CollapseResult"),
        _builtin(
            "polysemantic", PolysemanticParams, "polysemantic", "Polysemantic", "PolysemanticResult"
        ),
        _builtin("localize", LocalizeParams, "localize", "Localize", "LocalizeResult"),
        _builtin("patch", PatchParams, "patching", "Patch", "PatchResult"),
        _builtin(
            "attribution_patch", AttributionParams, "patching", "AttributionPatch", "PatchResult"
        ),
        _builtin(
            "recovery", RecoveryParams, "recovery", "Recovery", "RecoveryResult", "recovery_test"
        ),
    )
}
T = TypeVar("T", bound=type)


def register_action(
    name: str, params: type[Params] = Params, function: Callable[..., Any] | None = None
) -> Callable[[T], T]:
    """Class decorator: make an action (outside this package) available by ``name``.

    Parameters
    ----------
    name : the action's name in configs and the magic.
    params : its :class:`~mechwidgets.core.params.Params` subclass; default none taken.
    function : its public function, if it has one.
    """

    if name in _ACTIONS:
        raise SpecError(f"action '{name}' is already registered; choose another name")

    def wrap(cls: T) -> T:
        _ACTIONS[name] = Registration(name, params, cls, function, None)
        return cls

    return wrap


def load(ref: Ref) -> Any:
    """The object a registration names: imported from ``"module:name"`` on first use."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def registration(name: str) -> Registration:
    """The registration of action ``name``; a one-line SpecError for an unknown name."""
    if name not in _ACTIONS:
        raise SpecError(f"unknown action '{name}': choose one of {', '.join(list_actions())}")
    return _ACTIONS[name]


def get_action(name: str) -> Action:
    """An instance of the action registered as ``name`` (its module imported now)."""
    action: Action = load(registration(name).action)()
    action.name = name
    return action


def list_actions() -> list[str]:
    """Names of all registered actions."""
    return sorted(_ACTIONS)


def action_params(name: str) -> type[Params]:
    """The parameters class of action ``name``."""
    return registration(name).params


def check_params(name: str, values: Mapping[str, Any]) -> Params:
    """``values`` checked as action ``name``'s parameters: the typed, frozen Params, or a
    one-line SpecError naming the parameter and what it takes."""
    return check(action_params(name), values, name)


def action_function(name: str) -> Callable[..., Any] | None:
    """The public function of action ``name`` (its keyword arguments are the Params)."""
    function = registration(name).function
    return None if function is None else load(function)


def action_needs(name: str, params: Mapping[str, Any]) -> Needs:
    """What action ``name`` run with ``params`` needs from the runner (default: a cube)."""
    needs = getattr(get_action(name), "needs", None)
    return Needs() if needs is None else needs(params)
