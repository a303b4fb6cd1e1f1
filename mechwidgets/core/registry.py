"""Registry of actions by name, and what each needs from the runner.

The runner, the CLI and the magics look actions up here, so a new analysis is one
decorated class away from every entry point. A registration names the action's public
function (whose keyword parameters are the config's ``action.params``, checked when a
RunSpec is parsed: :func:`mechwidgets.core.specs.action_params`), and the action says
what it needs (:class:`Needs`) so the runner builds it once: the cube with the components
and neurons the action reads, or no cube for an action that runs the model itself.

>>> @register_action("recovery", function=recovery_test)
... class Recovery: ...
>>> get_action("recovery"), action_function("recovery"), action_needs("detect", {})
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from mechwidgets.core.errors import SpecError


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


_ACTIONS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_action(name: str, function: Callable[..., Any] | None = None) -> Callable[[T], T]:
    """Class decorator: make an action available by ``name``.

    ``function`` is the action's public function, whose keyword parameters a config may
    set; default the function called ``name`` in the class's module.
    """

    def wrap(cls: T) -> T:
        cls.name = name  # type: ignore[attr-defined]
        if function is not None:
            cls.function = staticmethod(function)  # type: ignore[attr-defined]
        _ACTIONS[name] = cls
        return cls

    return wrap


def _load_builtin() -> None:
    import mechwidgets.actions  # noqa: F401  (registers the built-in actions on import)


def get_action(name: str) -> Action:
    """An instance of the action registered as ``name``."""
    _load_builtin()
    if name not in _ACTIONS:
        raise SpecError(f"unknown action '{name}': choose one of {', '.join(list_actions())}")
    action: Action = _ACTIONS[name]()
    return action


def list_actions() -> list[str]:
    """Names of all registered actions."""
    _load_builtin()
    return sorted(_ACTIONS)


def action_function(name: str) -> Callable[..., Any] | None:
    """The public function of action ``name`` (its parameters are the config's), or None."""
    _load_builtin()
    cls = _ACTIONS.get(name)
    if cls is None:
        return None
    function = getattr(cls, "function", None) or getattr(sys.modules[cls.__module__], name, None)
    return function if callable(function) else None


def action_needs(name: str, params: Mapping[str, Any]) -> Needs:
    """What action ``name`` run with ``params`` needs from the runner (default: a cube)."""
    _load_builtin()
    cls = _ACTIONS.get(name)
    needs = getattr(cls(), "needs", None) if cls is not None else None
    return Needs() if needs is None else needs(params)
