"""Errors a researcher can act on.

Every error the toolkit raises on bad input is a :class:`MechError` whose message is
one line: what is wrong, and what to do about it. The CLI prints it without a traceback
and the Jupyter magics turn it into a ``UsageError``.

>>> raise SelectorError("bad selector 'mlp:x': layers must be integers, e.g. 'mlp:0-3'")
"""

from __future__ import annotations


class MechError(Exception):
    """Base class: a one-line, actionable message about bad input or state."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class SpecError(MechError, ValueError):
    """A run config (YAML, magic arguments or keyword arguments) is malformed."""


class SelectorError(MechError, ValueError):
    """A component selector string is malformed or out of range for the model."""


class ModelError(MechError):
    """A model cannot be found, loaded or mapped to an architecture adapter."""


class TaskError(MechError, ValueError):
    """A task or user data set cannot be used as given."""


class CubeError(MechError, ValueError):
    """An activation cube does not follow the cube contract."""


class CacheError(MechError):
    """A cache file is missing, corrupt or cannot be written."""
