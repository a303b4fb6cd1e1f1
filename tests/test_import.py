"""``import mechwidgets`` and ``%load_ext mechwidgets`` load nothing heavy; the lazy names work."""

from __future__ import annotations

import json
import subprocess
import sys

import mechwidgets as mw

HEAVY = ("torch", "nnsight", "transformers", "altair")


def _loaded_after(code: str) -> list[str]:
    """The heavy modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_loads_nothing_heavy() -> None:
    assert _loaded_after("import mechwidgets") == []


def test_load_ext_loads_nothing_heavy_and_registers_the_magic() -> None:
    code = (
        "from IPython.testing.globalipapp import start_ipython\n"
        "ip = start_ipython()\n"
        "ip.run_line_magic('load_ext', 'mechwidgets')\n"
        "assert 'mechinterp' in ip.magics_manager.magics['cell']\n"
    )
    assert _loaded_after(code) == []


def test_every_public_name_resolves() -> None:
    assert set(mw.__all__) == {*mw._LAZY, "load_ipython_extension", "unload_ipython_extension"}
    for name in mw.__all__:
        assert getattr(mw, name) is not None, name
    assert set(mw.__all__) <= set(dir(mw))


def test_subpackages_are_attributes_in_a_fresh_interpreter() -> None:
    code = "import mechwidgets as mw\nassert mw.viz.ChartView and mw.data.__name__.endswith('data')"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_extract_stays_the_function_when_its_subpackage_loads() -> None:
    from mechwidgets.extract.extractor import extract

    subpackage = sys.modules["mechwidgets.extract"]
    vars(mw).pop("extract", None)
    mw.extract = subpackage  # what the import system does on loading it
    assert "extract" not in vars(mw)
    assert mw.extract is extract


def test_unknown_name_is_an_attribute_error() -> None:
    assert not hasattr(mw, "no_such_name")
