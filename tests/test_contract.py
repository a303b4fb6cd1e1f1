"""The contract every registered action keeps, checked over all of them (as scikit-learn's
``parametrize_with_checks``): a deterministic plain repr, equal in another process; a
bundle that re-runs to the same numbers in another process; charts that serialise; bad
parameters refused before any work; results the notebook display and widgets take.

A new action must add a small config to ``CASES``; the first test fails until it does.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_runner import tiny_dir  # noqa: F401  (session fixture)

from mechwidgets.core.errors import MechError, SpecError
from mechwidgets.core.registry import (
    action_function,
    action_params,
    list_actions,
    load,
    registration,
)
from mechwidgets.core.specs import RunSpec
from mechwidgets.models import loading
from mechwidgets.report.bundle import read_artifacts
from mechwidgets.runner import run_spec

TINY = "<tiny>"  # the 2-block random GPT-NeoX of test_runner, over the grammar's words
PROTOCOL = {"seeds": 1, "permutations": 20, "resamples": 100}
PATCHING = {"components": ["resid", "attn"], "grid": ["layer", "component"], "n": 8}
#: action -> (model, task, n, params): small enough to run in seconds
CASES: dict[str, tuple[str, str, int, dict]] = {
    "detect": (TINY, "subject_number", 80, {"label": "subject_number", **PROTOCOL}),
    "compare": (TINY, "grammar_all", 160, {"labels": ["subject_number", "tense"], **PROTOCOL}),
    "collapse": (TINY, "subject_number", 80, {"label": "subject_number", **PROTOCOL}),
    "localize": (
        TINY,
        "subject_number",
        80,
        {
            "label": "subject_number",
            "top_k": 2,
            "interventions": ["mean"],
            "n": 16,
            "resamples": 50,
        },
    ),  # fmt: skip
    "polysemantic": (
        TINY,
        "grammar_all",
        160,
        {"labels": ["subject_number", "tense"], "seeds": 1, "permutations": 9},
    ),
    "patch": (TINY, "subject_number", 40, {**PATCHING, "resamples": 50}),
    "attribution_patch": (TINY, "subject_number", 40, {**PATCHING, "resamples": 50}),
    "recovery": (  # three blocks at least: a layer between source and readout
        "toy-grammar",
        "subject_number",
        160,
        {"label": "subject_number", "source_layer": 0, "resamples": 50},
    ),
}
RERUN = """
import json, sys
from mechwidgets.runner import metrics_difference, run_bundle
out = {}
for name, bundle in json.loads(sys.argv[1]).items():
    result = run_bundle(bundle, output_dir=bundle + "-rerun")
    out[name] = {"repr": repr(result), "difference": metrics_difference(result, bundle)}
print(json.dumps(out))
"""


def spec_of(name: str, model: Path) -> dict:
    chosen, task, n, params = CASES[name]
    return {
        "run_name": name,
        "seed": 3,
        "dataset": {"name": task, "n": n},
        "extraction": {
            "model_name": str(model) if chosen == TINY else chosen,
            "cache": False,
            "batch_size": 256,
        },
        "action": {"name": name, "params": params},
    }


@pytest.fixture(scope="session")
def runs(tiny_dir, tmp_path_factory):  # noqa: F811
    """Every action run once here, each writing its bundle."""
    root = tmp_path_factory.mktemp("contract")
    return {
        name: (run_spec(spec_of(name, tiny_dir), output_dir=root / name), root / name)
        for name in CASES
    }


@pytest.fixture(scope="session")
def reruns(runs) -> dict:
    """Every bundle re-run in one other Python process: its repr and its numbers' difference."""
    bundles = json.dumps({name: str(path) for name, (_, path) in runs.items()})
    out = subprocess.run(
        [sys.executable, "-c", RERUN, bundles],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_registered_action_has_a_case() -> None:
    assert set(CASES) == set(list_actions())


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_public_function_and_its_params_agree_on_names_and_defaults(name) -> None:
    """Every Params field is a keyword of the public function with the same default (the
    probing actions pass the protocol's on through ``**params``), so the function's
    signature and the one table of parameters cannot drift apart."""
    signature = inspect.signature(action_function(name))
    fields = action_params(name).model_fields
    spread = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    for key, field in fields.items():
        param = signature.parameters.get(key)
        if param is None:
            assert spread, f"{name} takes no '{key}'"
            continue
        default = param.default
        if param.default is inspect.Parameter.empty:
            assert field.is_required() or field.default is None, (name, key)
        else:
            if isinstance(default, tuple) and isinstance(field.default, tuple | list):
                default = tuple(default)
            assert field.default == default, (name, key, field.default, default)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_result_is_the_registered_result_class(name, runs) -> None:
    result, _ = runs[name]
    assert type(result) is load(registration(name).result)


@pytest.mark.parametrize("name", sorted(CASES))
def test_plain_repr_is_equal_in_another_process(name, runs, reruns) -> None:
    result, _ = runs[name]
    assert repr(result) == reruns[name]["repr"]
    assert repr(result).startswith(f"{type(result).__name__}({name}): ")


@pytest.mark.parametrize("name", sorted(CASES))
def test_bundle_round_trips_and_reruns_to_the_same_numbers(name, runs, reruns) -> None:
    result, bundle = runs[name]
    artifacts = read_artifacts(bundle)
    assert artifacts["action"] == result.action == name
    assert RunSpec.from_dict(artifacts["spec"]) == RunSpec.from_dict(result.spec)
    assert reruns[name]["difference"] == 0.0


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_chart_serialises(name, runs) -> None:
    result, _ = runs[name]
    charts = result.charts()
    assert charts
    for key, chart in charts.items():
        spec = chart.to_dict()
        assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/"), key
        json.dumps(spec)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_notebook_display_and_widgets_take_the_result(name, runs) -> None:
    from mechwidgets.viz.chart_widget import ChartView
    from mechwidgets.viz.findings import display_parts
    from mechwidgets.viz.widgets import LayerExplorer, WidgetError

    result, _ = runs[name]
    parts = display_parts(result)
    assert isinstance(parts[1], ChartView), "the chart did not display"
    texts = [p.data["text/plain"] for p in parts if hasattr(p, "data")]
    assert texts[0] == result.verdict()
    try:
        explorer = LayerExplorer(result)
    except WidgetError as exc:  # a result without layers: refused in one line, by name
        assert name == "recovery" and "lacks column" in str(exc)
    else:
        assert explorer is not None


def _ranged_parameter(name: str) -> str:
    """A count parameter of the action: a whole number whose values start at 1."""
    fields = action_params(name).model_fields
    return next(
        k
        for k, f in fields.items()
        if f.annotation is int and any(getattr(m, "ge", None) == 1 for m in f.metadata)
    )


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("bad", ["unknown", "out_of_range"])
def test_a_bad_parameter_fails_before_any_work(name, bad, tiny_dir, monkeypatch) -> None:  # noqa: F811
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the parameters were checked")

    monkeypatch.setattr(loading, "load_model", no_model)
    spec = spec_of(name, tiny_dir)
    params = dict(spec["action"]["params"])
    if bad == "unknown":
        params["resmaples"] = 10
        expected = "unknown parameter 'resmaples'"
    else:
        key = _ranged_parameter(name)
        params[key] = 0
        expected = f"parameter '{key}'"
    spec["action"] = {"name": name, "params": params}
    start = time.perf_counter()
    with pytest.raises(SpecError, match=expected) as info:
        run_spec(spec)
    assert time.perf_counter() - start < 1.0
    assert isinstance(info.value, MechError) and "\n" not in str(info.value)


#: modules whose docstring examples run as written (no model weights, no files)
DOCTESTED = (
    "mechwidgets.core.components",
    "mechwidgets.data.splits",
    "mechwidgets.probes.synthetic",
    "mechwidgets.core.params",
    "mechwidgets.core.registry",
)


@pytest.mark.parametrize("module", DOCTESTED)
def test_docstring_examples_run(module: str) -> None:
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    found = doctest.testmod(importlib.import_module(module), optionflags=flags)
    assert found.attempted > 0 and found.failed == 0
