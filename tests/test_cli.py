"""``mechinterp run`` and ``mechinterp demo``: output, bundles, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_runner import spec_for, tiny_dir  # noqa: F401  (session fixture)

from mechwidgets.cli import main
from mechwidgets.report.bundle import read_artifacts


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config(tiny_dir: Path, tmp_path: Path) -> Path:  # noqa: F811
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec_for(tiny_dir, tmp_path / "runs" / "tiny")))
    return path


def test_run_prints_table_verdict_and_bundle(capsys, config, tmp_path):
    code, out, err = run_cli(capsys, "run", str(config))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["label", "layer", "component", "probe", "95%"]
    assert "label_shuffle" in lines[0]
    verdict = next(line for line in lines if line.startswith("verdict: "))
    assert "subject_number" in verdict
    bundle = tmp_path / "runs" / "tiny"
    assert f"bundle: {bundle}" in out and (bundle / "report.html").is_file()


def test_run_artifacts_reproduces(capsys, config, tmp_path):
    assert run_cli(capsys, "run", str(config), "-o", str(tmp_path / "a"))[0] == 0
    code, out, _ = run_cli(capsys, "run", str(tmp_path / "a" / "artifacts.json"))
    assert code == 0
    assert out.splitlines()[-1] == f"reproduced: same numbers as {tmp_path / 'a'}"
    assert f"bundle: {tmp_path / 'a-rerun'}" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "no such config"),
        ("action: [unclosed", "bad YAML at line 1"),
        ("action: detect\nmodel: m\ntask: t", "unknown task 't'"),
        (
            "action: detect\nextraction: {model_name: m}\ndataset: {name: t, colour: red}",
            "unknown field 'dataset.colour'",
        ),
    ],
)
def test_bad_configs_are_one_line_exit_2(capsys, tmp_path, text, message):
    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    code, out, err = run_cli(capsys, "run", str(path))
    assert code == 2 and out == ""
    assert err.startswith("mechinterp: error: ") and message in err
    assert err.count("\n") == 1


def test_refuses_to_overwrite_a_folder_that_is_not_a_bundle(capsys, config, tmp_path):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "run", str(config), "-o", str(precious))
    assert code == 2 and err.startswith("mechinterp: error: ") and err.count("\n") == 1
    assert "not a mechwidgets bundle" in err
    assert [p.name for p in precious.iterdir()] == ["keep.txt"]


def test_console_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mechwidgets.cli", "run", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"mechinterp: error: no such config: {tmp_path / 'nope.yaml'}; "
        "give a YAML config or a bundle's artifacts.json"
    ]


def test_demo_shows_animacy_emerging_with_depth(capsys, tmp_path):
    code, out, err = run_cli(capsys, "demo", "--out", str(tmp_path / "demo"))
    assert code == 0, err
    verdict = next(line for line in out.splitlines() if line.startswith("verdict: "))
    assert "'animacy' is decodable: best resid layer 1" in verdict
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    summary = metrics["summary"]
    # ground truth: toy-grammar picks the adjective class from the subject's animacy, so
    # the verb's residual stream must receive it from the subject through attention: not
    # at the embedding (the verb alone), partly after block 0, fully from block 1
    resid = {
        r["layer"]: r["score"]
        for r in metrics["table"]
        if r["control"] == "none" and r["component"] == "resid"
    }
    assert resid[-1] < 0.6 < resid[0] < 0.9 < min(resid[1], resid[2], resid[3])
    controls = [r["score"] for r in metrics["table"] if r["control"] != "none"]
    assert max(controls) < 0.7  # label shuffle and word-type control stay near chance
    assert abs(summary["controls"]["label_shuffle"]["score"] - summary["chance"]) < 0.1
    rows = [r for r in metrics["table"] if r["control"] == "none"]
    assert {(r["layer"], r["component"]) for r in rows} == {
        (layer, comp) for layer in range(4) for comp in ("resid", "attn", "mlp")
    } | {(-1, "resid")}
    assert read_artifacts(tmp_path / "demo")["spec"]["extraction"]["model_name"] == "toy-grammar"
    assert f"bundle: {tmp_path / 'demo'}" in out


def test_a_bug_is_one_line_with_a_way_to_the_traceback(capsys, monkeypatch):
    from mechwidgets import cli

    def broken(args):
        raise KeyError("boom")

    monkeypatch.setitem(cli.COMMANDS, "run", cli.Command("run", "", cli._configure_run, broken))
    code, _, err = run_cli(capsys, "run", "x.yaml")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("mechinterp: internal error: KeyError: 'boom'")
    assert "MECHWIDGETS_TRACEBACK=1" in err
    monkeypatch.setenv("MECHWIDGETS_TRACEBACK", "1")
    with pytest.raises(KeyError):
        cli.main(["run", "x.yaml"])


def test_a_mistyped_option_is_one_line_with_a_guess(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--otu", "x"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert "unrecognized arguments: --otu x (did you mean --out?)" in err


def test_rerun_without_metrics_fails_before_the_work(capsys, config, tmp_path, monkeypatch):
    import mechwidgets.runner as runner

    assert run_cli(capsys, "run", str(config), "-o", str(tmp_path / "a"))[0] == 0
    (tmp_path / "a" / "metrics.json").unlink()
    monkeypatch.setattr(runner, "run_spec", lambda *a, **k: pytest.fail("the work ran"))
    code, _, err = run_cli(capsys, "run", str(tmp_path / "a" / "artifacts.json"))
    assert code == 2 and err.count("\n") == 1
    assert "metrics.json is missing" in err
