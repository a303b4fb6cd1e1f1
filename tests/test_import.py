"""``import mechwidgets`` and ``%load_ext mechwidgets`` load nothing heavy; the lazy names work."""

from __future__ import annotations

import json
import subprocess
import sys

import mechwidgets as mw

HEAVY = ("torch", "nnsight", "transformers", "altair")


def _loaded_after(code: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """The ``heavy`` modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
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


def test_a_default_detect_on_a_cube_imports_no_model_chart_or_stats_stack() -> None:
    """The first display's budget: detect's intervals and p-values come from scipy.special,
    its accuracy from numpy; scipy.stats (0.45-0.66 s), scikit-learn and the model stack
    are not imported for a default detect on a cube."""
    code = (
        "import mechwidgets as mw\n"
        "from mechwidgets.probes.synthetic import planted_cube\n"
        "cube = planted_cube({'f': {1: 2.0}}, n_layers=2)\n"
        "assert mw.detect(cube, seeds=2, permutations=50, resamples=100).verdict\n"
    )
    assert _loaded_after(code, (*HEAVY, "scipy.stats", "sklearn")) == []


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


def test_a_bad_config_fails_in_one_line_with_nothing_heavy_imported(tmp_path) -> None:
    """``mechinterp run`` of a config with a misspelt or an out-of-range action parameter:
    the one-line error comes from the RunSpec's parse, before torch and the actions load."""
    base = "action: {name: detect, params: {%s}}\nmodel: toy-grammar\ntask: subject_number\n"
    cases = {
        "permutatoins: 100": "unknown parameter 'permutatoins' for detect "
        "(did you mean 'permutations'?)",
        "level: 1.5": "bad value 1.5 for 'detect' parameter 'level': give a number between 0 "
        "and 1, e.g. 0.95",
    }
    for params, message in cases.items():
        config = tmp_path / "bad.yaml"
        config.write_text(base % params)
        code = (
            "import contextlib, io, json, sys\n"
            "from mechwidgets.cli import main\n"
            "err = io.StringIO()\n"
            "with contextlib.redirect_stderr(err):\n"
            f"    status = main(['run', {str(config)!r}])\n"
            f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "print(json.dumps({'status': status, 'err': err.getvalue(), 'heavy': heavy}))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
        )
        found = json.loads(out.stdout.strip().splitlines()[-1])
        lines = found["err"].splitlines()
        assert found["status"] == 2 and len(lines) == 1, found
        assert lines[0].startswith(f"mechinterp: error: {message}")
        assert found["heavy"] == []
