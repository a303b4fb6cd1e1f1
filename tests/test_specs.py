"""RunSpec: nested and flat forms, YAML, and one-line errors naming the field."""

import pytest

from mechwidgets.core.errors import SpecError
from mechwidgets.core.specs import RunSpec

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


def test_a_key_given_twice_is_an_error_naming_both_lines():
    with pytest.raises(SpecError) as err:
        RunSpec.from_yaml("action: detect\nmodel: m\ntask: t\naction: collapse\n")
    assert "line 4" in str(err.value) and "'action' is given twice (first at line 1)" in str(
        err.value
    )


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        ({"outptu_dir": "x"}, "unknown field 'outptu_dir' (did you mean 'output_dir'?)"),
        ({"lable": "x"}, "unknown field 'lable' (did you mean 'label'?)"),
        ({"action": {"name": "detect", "params": {"lable": "x"}}}, "did you mean 'label'?"),
        ({"permutations": 2.5}, "'detect' parameter 'permutations': give a whole number"),
        ({"permutations": "100"}, "give a whole number of 1 or more, e.g. 200"),
        ({"level": 2}, "bad value 2 for 'detect' parameter 'level': give a number between 0 and 1"),
        ({"metric": "acuracy"}, "choose one of accuracy, auc, r2 (did you mean 'accuracy'?)"),
        ({"controls": [{"name": "label_shuffle", "params": {"n": 3}}]}, "take no options"),
        ({"dtype": "float23"}, "did you mean 'float32'?"),
        ({"layers": ""}, "layers is empty"),
    ],
)
def test_typos_and_bad_params_fail_on_parse_naming_the_key(data, phrase):
    base = {"action": "detect", "model": "m", "task": "t"}
    with pytest.raises(SpecError) as err:
        RunSpec.from_dict({**base, **data})
    assert phrase in str(err.value) and "\n" not in str(err.value)


def test_a_params_typo_is_not_blamed_on_the_action_params_when_it_is_top_level():
    with pytest.raises(SpecError) as err:
        RunSpec.from_dict({"action": "detect", "model": "m", "task": "t", "modle": "x"})
    assert str(err.value).startswith("unknown field 'modle' (did you mean 'model'?)")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"permutatoins": 100},
            "unknown parameter 'permutatoins' for detect (did you mean 'permutations'?); "
            "it takes: label, seeds, permutations",
        ),
        (
            {"level": 1.5},
            "bad value 1.5 for 'detect' parameter 'level': give a number between 0 and 1, "
            "e.g. 0.95",
        ),
        (
            {"probe": "lasso"},
            "bad value 'lasso' for 'detect' parameter 'probe': choose one of ridge, logistic",
        ),
    ],
)
def test_a_nested_action_parameter_is_checked_against_the_action_params(params, message):
    data = {"action": {"name": "detect", "params": params}, "model": "m", "task": "t"}
    with pytest.raises(SpecError) as err:
        RunSpec.from_dict(data)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_each_action_declares_typed_frozen_params_sharing_the_protocol_fields():
    from pydantic import ValidationError

    from mechwidgets.core.params import Params, ProtocolParams
    from mechwidgets.core.registry import action_params, list_actions
    from mechwidgets.probes.sweep import Protocol

    probing = {"detect", "compare", "collapse", "polysemantic"}
    for name in list_actions():
        params = action_params(name)
        assert issubclass(params, Params) and params.model_config["frozen"], name
        assert issubclass(params, ProtocolParams) == (name in probing), name
    detect = action_params("detect")
    assert set(Protocol.__dataclass_fields__) - {"controls"} <= set(detect.model_fields)
    for key in ("permutations", "resamples", "probe", "level", "correction", "metric"):
        assert detect.model_fields[key].default == getattr(Protocol, key), key
    localize = action_params("localize").model_fields
    assert {"top_k", "behavior", "rank_by"} <= set(localize) and "permutations" not in localize
    checked = detect(label="subject_number", seeds=3)
    with pytest.raises(ValidationError, match="frozen"):
        checked.seeds = 4  # type: ignore[misc]


def test_controls_left_out_are_the_default_and_an_empty_list_is_none():
    base = {"action": "detect", "model": "m", "task": "t"}
    assert RunSpec.from_dict(base).controls is None
    assert RunSpec.from_dict({**base, "controls": []}).controls == []
    again = RunSpec.from_dict(RunSpec.from_dict({**base, "controls": []}).to_dict())
    assert again.controls == []
