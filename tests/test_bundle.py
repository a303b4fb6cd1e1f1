"""Bundles: every file present and readable, self-contained HTML, atomic writes."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from mechwidgets.actions.base import ActionResult
from mechwidgets.core.errors import MechError
from mechwidgets.extract.cube import activations_index
from mechwidgets.report import bundle as bundle_mod
from mechwidgets.report.bundle import (
    ARTIFACTS,
    BundleError,
    check_target,
    is_bundle,
    read_artifacts,
    to_jsonable,
    write_bundle,
)
from mechwidgets.viz.charts import heatmap, layer_curve_chart


@dataclass(repr=False, frozen=True)
class FakeResult(ActionResult):
    """A detect-shaped result over a synthetic table (no model, no probes)."""

    def summary(self):
        best = self.table.loc[self.table["score"].idxmax()]
        return {
            "best_layer": np.int64(best["layer"]),
            "best_score": np.float32(best["score"]),
            "undefined": float("nan"),
        }

    def verdict(self):
        return "feature decodable from layer 1 (synthetic)"

    def chart(self):
        return layer_curve_chart(self.table, chance=0.5)

    def charts(self):
        grid = self.table[self.table["control"] == "none"]
        return {"main": self.chart(), "grid": heatmap(grid, "layer", "component", "score")}


def cube() -> xr.Dataset:
    acts = np.zeros((6, 3, 2, 4), dtype=np.float32)
    ds = xr.Dataset(
        {"activations": (("sample", "layer", "component", "dim"), acts)},
        coords={"layer": [0, 1, 2], "component": ["resid", "mlp"]},
        attrs={
            "model": "tiny",
            "model_identity": "zoo:tiny@abc123",
            "tokenizer_hash": "t0",
            "cache_key": "k1",
            "token_policy": json.dumps({"k": -1}),
        },
    )
    return ds


@pytest.fixture
def result() -> FakeResult:
    rows = []
    for comp in ("resid", "mlp"):
        for layer in range(3):
            for control in ("none", "label_shuffle"):
                score = 0.5 + 0.2 * layer if control == "none" else 0.5
                rows.append(
                    dict(
                        label="y",
                        layer=layer,
                        component=comp,
                        control=control,
                        score=score,
                        ci_low=score - 0.05,
                        ci_high=score + 0.05,
                        p_value=np.nan if control != "none" else 0.01,
                    )
                )
    table = pd.DataFrame(rows)
    preds = pd.DataFrame({"sample_id": np.arange(4), "layer": 1, "pred": [0, 1, 1, 0]})
    return FakeResult(
        action="detect",
        data=xr.Dataset(),
        table=table,
        params={"label": "y", "seed": 3},
        spec={"run_name": "unit", "seed": 3, "action": {"name": "detect", "params": {}}},
        predictions=preds,
        timings={"extract": 0.5, "action": np.float64(1.25)},
        activations={**activations_index(cube()), "task": {"name": "t", "data_hash": "d0"}},
    )


def test_bundle_has_every_file_and_valid_json(result, tmp_path):
    out = result.to_bundle(tmp_path / "run")
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert names == {
        "artifacts.json",
        "metrics.json",
        "predictions.parquet",
        "activations_index.json",
        "report.html",
        *(f"charts/{n}.{ext}" for n in ("main", "grid") for ext in ("vl.json", "png", "svg")),
    }
    art = read_artifacts(out / "artifacts.json")
    assert art["spec"] == result.spec and art["seed"] == 3
    assert art["versions"]["numpy"] == np.__version__ and "sklearn" in art["versions"]
    assert art["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", art["git_commit"])
    assert art["hashes"] == {
        "model": "zoo:tiny@abc123",
        "tokenizer": "t0",
        "data": "d0",
        "cache_key": "k1",
    }
    assert art["timings"] == {"extract": 0.5, "action": 1.25}
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert metrics["summary"] == {
        "best_layer": 2,
        "best_score": pytest.approx(0.9),
        "undefined": None,
    }
    assert len(metrics["table"]) == len(result.table)
    assert metrics["table"][1]["p_value"] is None  # NaN -> null
    index = json.loads((out / "activations_index.json").read_text())
    assert index["variables"]["activations"]["shape"] == [6, 3, 2, 4]
    assert index["attrs"]["token_policy"] == {"k": -1}  # JSON attrs decoded
    pd.testing.assert_frame_equal(pd.read_parquet(out / "predictions.parquet"), result.predictions)
    assert (out / "charts/main.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "charts/main.svg").read_text().startswith("<svg")
    assert json.loads((out / "charts/main.vl.json").read_text()) == json.loads(
        json.dumps(to_jsonable(result.chart().to_dict()))
    )


def test_report_is_self_contained(result, tmp_path):
    page = (result.to_bundle(tmp_path / "run") / "report.html").read_text()
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"<link[^>]+href=[\"']https?:", page)
    assert "window.vegaEmbed" in page  # vega-embed inlined
    assert page.count('vegaEmbed("#chart-') == 2
    assert result.verdict() in page and "best_layer" in page
    assert "<table" in page and "label_shuffle" in page


def test_empty_predictions_still_write_a_parquet(result, tmp_path):
    result = replace(result, predictions=pd.DataFrame())
    out = result.to_bundle(tmp_path / "run")
    assert pd.read_parquet(out / "predictions.parquet").empty


def test_failure_mid_write_leaves_nothing(result, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bundle_mod.vl_convert, "vegalite_to_png", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_bundle(result, tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_previous_bundle(result, tmp_path, monkeypatch):
    out = write_bundle(result, tmp_path / "run")
    before = (out / "metrics.json").read_text()
    result = replace(result, table=result.table.assign(score=0.0))
    monkeypatch.setattr(
        "mechwidgets.report.html.report_html",
        lambda **kw: (_ for _ in ()).throw(OSError("interrupted")),
    )
    with pytest.raises(OSError, match="interrupted"):
        write_bundle(result, out)
    assert (out / "metrics.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_overwrites_a_bundle_but_refuses_other_folders(result, tmp_path):
    out = write_bundle(result, tmp_path / "run")
    result = replace(result, table=result.table.assign(score=0.25, ci_low=0.2, ci_high=0.3))
    write_bundle(result, out)
    assert {r["score"] for r in json.loads((out / "metrics.json").read_text())["table"]} == {0.25}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]

    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "draft.tex").write_text("do not delete")
    with pytest.raises(BundleError, match="not a mechwidgets bundle") as err:
        write_bundle(result, precious)
    assert isinstance(err.value, MechError) and "\n" not in str(err.value)
    assert (precious / "draft.tex").read_text() == "do not delete"
    assert not is_bundle(precious) and is_bundle(out)

    (tmp_path / "empty").mkdir()
    assert is_bundle(write_bundle(result, tmp_path / "empty"))


def test_read_artifacts_rejects_non_bundles(tmp_path):
    other = tmp_path / "artifacts.json"
    other.write_text(json.dumps({"hello": 1}))
    with pytest.raises(BundleError, match="not a mechwidgets bundle"):
        read_artifacts(other)
    with pytest.raises(BundleError, match="no artifacts.json"):
        read_artifacts(tmp_path / "nowhere")


def test_to_jsonable_handles_numpy_and_nan():
    value = {
        1: np.float32(np.nan),
        "a": np.arange(3),
        "b": (np.bool_(True), np.inf),
        "p": Path("x/y"),
    }
    assert to_jsonable(value) == {"1": None, "a": [0, 1, 2], "b": [True, None], "p": "x/y"}


def test_user_files_beside_a_bundle_are_never_deleted(result, tmp_path):
    out = write_bundle(result, tmp_path / "run")
    (out / "notes.txt").write_text("my notes")
    (out / "analysis").mkdir()
    (out / "analysis" / "fit.csv").write_text("a,b")
    before = (out / "metrics.json").read_text()
    with pytest.raises(BundleError) as err:
        write_bundle(result, out)
    message = str(err.value)
    assert "analysis/" in message and "notes.txt" in message and str(tmp_path / "run-2") in message
    assert "\n" not in message
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "analysis" / "fit.csv").read_text() == "a,b"
    assert (out / "metrics.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lock or temp left


def test_a_bundle_of_another_action_is_not_replaced(result, tmp_path):
    out = write_bundle(result, tmp_path / "run")
    (tmp_path / "run-2").mkdir()
    (tmp_path / "run-2" / "x").write_text("taken")
    result = replace(result, action="collapse")
    with pytest.raises(BundleError, match=r"bundle of 'detect', not 'collapse'.*run-3"):
        write_bundle(result, out)
    assert read_artifacts(out)["action"] == "detect"
    assert is_bundle(write_bundle(result, tmp_path / "run-3"))


def test_tilde_is_expanded_and_no_literal_folder_appears(result, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    out = write_bundle(result, "~/runs/x")
    assert out == tmp_path / "home" / "runs" / "x" and is_bundle(out)
    assert not (tmp_path / "~").exists()
    assert read_artifacts("~/runs/x")["action"] == "detect"


def test_a_replacement_killed_between_its_renames_is_restored(result, tmp_path, caplog):
    out = write_bundle(result, tmp_path / "run")
    before = (out / "metrics.json").read_text()
    # what a kill between the two renames of a replacement leaves: the old bundle aside,
    # the new one half built, nothing at the bundle's own name
    out.rename(tmp_path / ".run.old-99999-abcd1234")
    (tmp_path / ".run.tmp-99999-abcd1234").mkdir()
    (tmp_path / ".run.tmp-99999-abcd1234" / ARTIFACTS).write_text("{")
    with caplog.at_level("WARNING", logger="mechwidgets"):
        art = read_artifacts(out)
    assert art["action"] == "detect" and (out / "metrics.json").read_text() == before
    assert "restored bundle" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the half-built one is gone

    (out).rename(tmp_path / ".run.old-99999-ffff0000")
    result = replace(result, table=result.table.assign(score=0.25))
    write_bundle(result, out)  # restores, then replaces the restored bundle
    assert {r["score"] for r in json.loads((out / "metrics.json").read_text())["table"]} == {0.25}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_finished_replacement_with_its_old_copy_left_is_tidied(result, tmp_path):
    out = write_bundle(result, tmp_path / "run")
    shutil.copytree(out, tmp_path / ".run.old-99999-abcd1234")  # kill during the final rmtree
    assert check_target(out, "detect") == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
