"""altair's import no longer compiles jsonschema's IRI grammar; an IRI check still works."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import sys
import mechwidgets.viz.charts
import altair
from jsonschema import FormatChecker
deferred = "lark" not in sys.modules
checker = FormatChecker()
checks = [checker.conforms(v, "iri") for v in ("http://example.com/\\u00e4", "not an iri", "a:b")]
from rfc3987_syntax.syntax_helpers import is_valid_syntax_iri
print(deferred, checks, is_valid_syntax_iri("a:b"), type(sys.modules["rfc3987_syntax"]).__name__)
"""


def test_altair_imports_without_the_iri_grammar_and_iri_checks_still_work():
    pytest.importorskip("rfc3987_syntax")  # only installed with Jupyter's dependencies
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True
    ).stdout.split()
    deferred, checks, submodule, kind = out[0], " ".join(out[1:4]), out[4], out[5]
    assert deferred == "True"  # the grammar library was not imported with altair
    assert checks == "[True, False, True]"  # the real checker's answers, on first use
    assert submodule == "True" and kind == "module"  # then the real module took its place
