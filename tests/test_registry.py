"""Every action runs from a config: patching through the CLI and back from its bundle; the
runner extracts once for localize and polysemantic; localize records the top_k it used."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from test_runner import tiny_dir  # noqa: F401  (session fixture)

from mechwidgets.actions import localize as localize_module
from mechwidgets.cli import main
from mechwidgets.core.errors import SpecError
from mechwidgets.core.params import Params
from mechwidgets.core.registry import (
    Needs,
    action_needs,
    action_params,
    check_params,
    get_action,
    list_actions,
    register_action,
)
from mechwidgets.core.specs import RunSpec
from mechwidgets.extract import extractor
from mechwidgets.runner import run_spec

ROOT = Path(__file__).resolve().parents[1]


def test_patching_actions_are_registered_with_their_parameters() -> None:
    assert {"patch", "attribution_patch", "recovery"} <= set(list_actions())
    assert {"grid", "direction", "components"} <= set(action_params("patch").model_fields)
    assert "attribution" not in action_params("attribution_patch").model_fields
    recovery = action_params("recovery").model_fields
    assert {"label", "source_layer", "target_layers"} <= set(recovery)
    assert recovery["source_layer"].is_required() and recovery["label"].is_required()
    assert action_needs("patch", {}) == Needs(cube=False, pairs=True)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"direction": "sideways"}, "'direction': choose one of denoise, noise"),
        ({"resamples": 0}, "'resamples': give a whole number of 1 or more, e.g. 1000"),
        ({"grid": ["layr"]}, "choose one of layer, component, position (did you mean 'layer'?)"),
        ({"grdi": ["layer"]}, "unknown parameter 'grdi' for patch (did you mean 'grid'?)"),
    ],
)
def test_a_bad_patching_parameter_fails_when_parsed(params, message) -> None:
    spec = {"action": {"name": "patch", "params": params}, "model": "m", "task": "t"}
    with pytest.raises(SpecError, match=re.escape(message)):
        RunSpec.from_dict(spec)


def test_recovery_without_a_source_layer_fails_before_any_model_loads(tmp_path) -> None:
    spec = {"action": "recovery", "label": "subject_number", "model": "no/such-model"}
    with pytest.raises(SpecError, match="recovery needs parameter 'source_layer'"):
        run_spec({**spec, "task": "subject_number"})


def test_an_action_from_outside_registers_with_its_params_and_runs_by_name() -> None:
    class EchoParams(Params):
        word: str = "hi"

    @register_action("echo_test", params=EchoParams)
    class Echo:
        def prepare(self, context):
            return context

        def run(self, prepared):
            return prepared

    try:
        assert "echo_test" in list_actions()
        assert check_params("echo_test", {"word": "yo"}).word == "yo"  # type: ignore[attr-defined]
        with pytest.raises(SpecError, match="unknown parameter 'wrod' for echo_test"):
            RunSpec.from_dict(
                {"action": {"name": "echo_test", "params": {"wrod": 1}}, "model": "m", "task": "t"}
            )
        action = get_action("echo_test")
        assert isinstance(action, Echo) and action.name == "echo_test"
    finally:
        from mechwidgets.core import registry

        registry._ACTIONS.pop("echo_test")


def test_patching_config_runs_from_the_cli_and_reruns_to_the_same_numbers(tmp_path, capsys) -> None:
    config = yaml.safe_load((ROOT / "configs/patching_toy.yaml").read_text())
    config["dataset"]["n"] = 40  # the fewest pairs the task draws; 8 of them are patched
    config["action"]["params"] |= {"components": ["resid", "attn"], "n": 8, "resamples": 50}
    path = tmp_path / "patching.yaml"
    path.write_text(yaml.safe_dump(config))
    bundle = tmp_path / "bundle"
    assert main(["run", str(path), "-o", str(bundle)]) == 0, capsys.readouterr().err
    artifacts = json.loads((bundle / "artifacts.json").read_text())
    assert artifacts["spec"]["action"]["name"] == "patch"
    rows = json.loads((bundle / "metrics.json").read_text())["table"]
    assert {r["component"] for r in rows} == {"resid", "attn"} and len(rows) > 2
    assert main(["run", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"reproduced: same numbers as {bundle}"


@pytest.fixture
def extractions(monkeypatch) -> list[dict]:
    """The keyword arguments of every call to ``extract``, wherever it is called from."""
    calls: list[dict] = []
    real = extractor.extract

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(extractor, "extract", counted)
    monkeypatch.setattr(localize_module, "extract", counted)
    return calls


def _spec(model: Path, action: str, params: dict, task: str = "subject_number") -> dict:
    return {
        "seed": 0,
        "dataset": {"name": task, "n": 160},
        "extraction": {"model_name": str(model), "cache": False},
        "action": {"name": action, "params": params},
    }


def test_localize_from_a_config_extracts_once_and_records_its_top_k(
    tiny_dir,  # noqa: F811
    extractions,
) -> None:
    params = {
        "label": "subject_number",
        "components": ["resid", "head"],
        "top_k": 2,
        "interventions": ["mean"],
        "n": 16,
        "resamples": 50,
    }
    result = run_spec(_spec(tiny_dir, "localize", params))
    assert len(extractions) == 1
    assert any(s.startswith("head:") for s in extractions[0]["selectors"])
    assert result.params["top_k"] == 2
    assert int(result.table["tested"].sum()) == 2


def test_polysemantic_from_a_config_extracts_once(tiny_dir, extractions) -> None:  # noqa: F811
    params = {"labels": ["subject_number", "attractor_number"], "seeds": 1, "permutations": 9}
    result = run_spec(_spec(tiny_dir, "polysemantic", params, task="grammar_all"))
    assert len(extractions) == 1 and extractions[0]["neurons"] is True
    assert result.table["layer"].nunique() == 2
