"""Registry of actions by name.

The runner, the CLI and the magics look actions up here, so a new analysis is one
decorated class away from every entry point.

>>> @register_action("detect")
... class Detect: ...
>>> get_action("detect")
"""

from __future__ import annotations

from collections.abc import Callable
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


_ACTIONS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_action(name: str) -> Callable[[T], T]:
    """Class decorator: make an action available by ``name``."""

    def wrap(cls: T) -> T:
        cls.name = name  # type: ignore[attr-defined]
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
