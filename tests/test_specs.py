"""RunSpec: nested and flat forms, YAML, and one-line errors naming the field."""

import pytest

from mechwidgets.core import registry
from mechwidgets.core.errors import SpecError
from mechwidgets.core.specs import RunSpec


@pytest.fixture(autouse=True)
def _an_action(monkeypatch):
    """A stand-in 'detect' while the real one is absent; the registry is restored after."""
    if "detect" not in registry.list_actions():
        monkeypatch.setitem(registry._ACTIONS, "detect", type("Detect", (), {"name": "detect"}))


NESTED = """
run_name: toy
seed: 7
dataset:
  name: subject_number_agreement
  n: 500
extraction:
  model_name: toy-grammar
  selectors: [layers_output:0-3]
  batch_size: 16
action:
  name: feature_detection
  params: {label: subject_number}
controls: [label_shuffle, random_subspace]
output_dir: runs/toy
"""


def test_nested_yaml_with_seed_design_aliases():
    spec = RunSpec.from_yaml(NESTED)
    assert spec.seed == 7
    assert spec.action.name == "detect"
    assert spec.extraction.selectors == ["resid:0-3"]
    assert [c.name for c in spec.controls] == ["label_shuffle", "random_subspace"]
    assert RunSpec.from_dict(spec.to_dict()) == spec


def test_flat_shorthand_as_the_magics_write_it():
    spec = RunSpec.from_dict(
        {
            "action": "detect",
            "model": "toy-grammar",
            "task": "subject_number",
            "layers": "0-2",
            "components": "resid,mlp",
            "label": "subject_number",
        }
    )
    assert spec.extraction.model_name == "toy-grammar"
    assert spec.dataset.name == "subject_number"
    assert spec.extraction.selectors == ["resid:0-2", "mlp:0-2"]
    assert spec.action.params == {"label": "subject_number"}


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        ({"action": "nope", "model": "m", "task": "t"}, "unknown action; choose one of"),
        (
            {"action": "detect", "model": "m", "task": "t", "extraction": {"bogus": 1}},
            "unknown field 'extraction.bogus'; allowed here: model_name",
        ),
        ({"action": "detect", "task": "t"}, "missing field 'extraction'"),
        ({"action": "detect", "model": "m", "task": "t", "batch_size": 0}, "extraction.batch_size"),
        ({"action": "detect", "model": "m", "task": "t", "controls": ["bogus"]}, "controls.0.name"),
        ([1, 2], "must be a mapping"),
        (
            {"action": "detect", "model": "m", "dataset": {"name": "t", "val_split": "dev"}},
            "'dataset.val_split': Input should be 'val'",
        ),
    ],
)
def test_bad_fields_give_one_line_errors(data, phrase):
    with pytest.raises(SpecError) as err:
        RunSpec.from_dict(data)
    assert phrase in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_selector_in_a_spec_names_the_field_and_the_selector_rule():
    with pytest.raises(SpecError, match="'extraction.selectors': bad layer range 'a-b'"):
        RunSpec.from_dict({"action": "detect", "model": "m", "task": "t", "layers": "a-b"})


def test_bad_yaml_names_line_and_column():
    with pytest.raises(SpecError) as err:
        RunSpec.from_yaml("action: detect\nmodel: [toy\ntask: x\n")
    assert "bad YAML at line 3, column" in str(err.value)
    assert "\n" not in str(err.value)
