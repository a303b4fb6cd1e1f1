"""%mechinterp through a real IPython shell: results come back, bad input is one UsageError."""

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

from mechwidgets.actions.base import ActionResult
from mechwidgets.data.catalog import list_tasks
from mechwidgets.models.zoo import list_models


@pytest.fixture(scope="module")
def ip():
    shell = start_ipython() or get_ipython()  # the second start in a session returns None
    shell.run_line_magic("load_ext", "mechwidgets")
    shell.run_line_magic("load_ext", "mechwidgets")  # twice is harmless
    return shell


FAST = "--layers 0-1 --components resid,mlp --n 300 --seeds 1"


def test_line_magic_returns_and_stores_the_result(ip):
    res = ip.run_line_magic(
        "mechinterp", f"detect --model toy-grammar --task subject_number {FAST} -o res"
    )
    assert isinstance(res, ActionResult)
    assert ip.user_ns["res"] is res
    assert set(res.table["layer"]) == {0, 1}
    assert set(res.table["component"]) == {"resid", "mlp"}
    assert res.spec["extraction"]["model_name"] == "toy-grammar"


def test_protocol_options_reach_the_action(ip):
    res = ip.run_line_magic("mechinterp", f"detect {FAST} --permutations 30 --resamples 100")
    assert res.params["permutations"] == 30
    assert res.params["resamples"] == 100
    assert res.spec["action"]["params"]["permutations"] == 30


def test_seed_design_action_names_work_in_the_magic(ip):
    res = ip.run_line_magic("mechinterp", f"feature_detection {FAST}")
    assert res.action == "detect"


def test_cell_magic_runs_a_yaml_body(ip):
    body = "action: collapse\nmodel: toy-grammar\ntask: subject_number\nn: 300\nseeds: 1\n"
    res = ip.run_cell_magic("mechinterp", "out", body)
    assert res.action == "collapse"
    assert ip.user_ns["out"] is res
    assert "collapse_index" in res.summary()


def test_run_a_config_file(ip, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "action: detect\nmodel: toy-grammar\ntask: subject_number\nn: 300\n"
        "layers: '1'\ncomponents: resid\nseeds: 1\n"
    )
    res = ip.run_line_magic("mechinterp", f"run {config}")
    assert list(res.table["layer"].unique()) == [1]


def test_help_prints_options_and_runs_nothing(ip, capsys):
    assert ip.run_line_magic("mechinterp", "--help") is None
    assert ip.run_line_magic("mechinterp", "detect --help") is None
    out = capsys.readouterr().out
    assert "ACTION" in out and "--layers" in out
    # first contact: the top-level help lists the actions, models, tasks and the cell magic
    ip.run_line_magic("mechinterp", "--help")
    top = capsys.readouterr().out
    for name in [*list_models(), *list_tasks(), "detect", "compare", "%%mechinterp"]:
        assert name in top, name


@pytest.mark.parametrize(
    ("line", "phrase"),
    [
        ("", "needs an action"),
        ("frobnicate", "invalid choice: 'frobnicate'"),
        ("detect --layers 3-x", "bad layer range '3-x'"),
        (
            "detect --layers 0-40 --n 300 --seeds 1",
            "layers 4-40 are out of range; this model has layers 0-3",
        ),
        ("detect --model no-such/model-xyz --n 300", "no-such/model-xyz"),
        ("detect --task no_such_task", "no_such_task"),
        ("detect --seeds many", "invalid int value: 'many'"),
        ("run /nonexistent/config.yaml", "/nonexistent/config.yaml"),
        ("detect --task 'subject_number", "(No closing quotation); close the quote"),
        ("detect --permutatoins 5", "(did you mean --permutations?)"),
        ("detect --layers ''", "layers is empty"),
        ("detect --controls ''", "empty list"),
        ("detect --permutations 2.5", "invalid int value: '2.5'"),
        ("compare --label tense", "unknown field 'label' (did you mean 'labels'?)"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(ip, line, phrase):
    with pytest.raises(UsageError) as err:
        ip.run_line_magic("mechinterp", line)
    assert phrase in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_yaml_in_a_cell_names_line_and_column(ip):
    with pytest.raises(UsageError) as err:
        ip.run_cell_magic("mechinterp", "", "action: detect\nmodel: [toy\ntask: x\n")
    assert "bad YAML at line 3, column" in str(err.value)
    assert "\n" not in str(err.value)


def test_controls_none_runs_no_controls(ip):
    res = ip.run_line_magic("mechinterp", f"detect {FAST} --controls none")
    assert set(res.table["control"]) == {"none"}
    assert res.spec["controls"] == []
