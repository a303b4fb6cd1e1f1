"""Keep altair's import from compiling an IRI grammar that charts never use.

altair imports jsonschema, whose format checkers import ``rfc3987_syntax`` when it is
installed (Jupyter's own dependencies install it), and that module compiles 39 Earley
grammars with lark as it is imported: 1.3 s of CPU, over half of what importing altair
costs on a first chart, for the ``iri`` string format, which no Vega-Lite schema uses.

:func:`defer_iri_grammar` puts a stand-in for ``rfc3987_syntax`` in ``sys.modules``
before jsonschema is imported: the first time anything reads from it (an ``iri`` format
check, or any other use), it imports the real module in its place and hands that over,
so every caller gets the real behaviour, later. When jsonschema or the real module is
already imported, or the package is absent, it does nothing.

>>> defer_iri_grammar()
>>> import altair   # no grammar compiled
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

MODULE = "rfc3987_syntax"


class _Deferred(types.ModuleType):
    """Stands for ``rfc3987_syntax`` until something reads from it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_real(), name)


def _real() -> types.ModuleType:
    """The real module, imported in the stand-in's place."""
    if isinstance(sys.modules.get(MODULE), _Deferred):
        del sys.modules[MODULE]
    return importlib.import_module(MODULE)


def is_valid_syntax(term: str, value: str) -> bool:
    """The real ``rfc3987_syntax.is_valid_syntax`` (what jsonschema imports by name)."""
    return bool(_real().is_valid_syntax(term, value))


def defer_iri_grammar() -> None:
    """Install the stand-in (see the module docstring); safe to call more than once."""
    if MODULE in sys.modules or "jsonschema" in sys.modules:
        return
    spec = importlib.util.find_spec(MODULE)
    if spec is None:
        return
    stand_in = _Deferred(MODULE, "rfc3987_syntax, imported on first use (mechwidgets)")
    # the real spec and search path: the import system reads them without a first use,
    # and submodules (rfc3987_syntax.syntax_helpers) import as from the real package
    stand_in.__spec__ = spec
    stand_in.__path__ = list(spec.submodule_search_locations or [])
    stand_in.is_valid_syntax = is_valid_syntax  # type: ignore[attr-defined]
    sys.modules[MODULE] = stand_in
