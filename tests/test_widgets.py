"""LayerExplorer and Launcher at the traitlet level, the JS bundle, and the wheel's asset."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import types
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import altair as alt
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from ipywidgets.widgets.widget import _remove_buffers

import mechwidgets as mw
from mechwidgets.actions.base import ActionResult
from mechwidgets.core import registry
from mechwidgets.core.errors import MechError, SpecError
from mechwidgets.core.params import Params
from mechwidgets.core.specs import RunSpec
from mechwidgets.viz.widgets import STATIC, Launcher, LayerExplorer, RunCancelled, WidgetError

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [0, 1, 2, 3]
COMPONENTS = ["resid", "attn", "mlp", "head.10", "head.2"]


def score_of(label: str, layer: int, comp: str, control: str) -> float:
    """A distinct known score per probe, so a misplaced cell cannot go unnoticed."""
    if control != "none":
        return 0.5 + 0.001 * layer
    base = 0.6 if label == "subject_number" else 0.3
    return base + 0.05 * layer + 0.01 * COMPONENTS.index(comp)


def make_table(labels: tuple[str, ...] = ("subject_number", "tense")) -> pd.DataFrame:
    rows = [
        {
            "label": label,
            "layer": layer,
            "component": comp,
            "control": control,
            "score": score_of(label, layer, comp, control),
            "ci_low": score_of(label, layer, comp, control) - 0.04,
            "ci_high": score_of(label, layer, comp, control) + 0.03,
            "metric": "accuracy",
        }
        for label in labels
        for layer in LAYERS
        for comp in COMPONENTS
        for control in ("none", "label_shuffle")
    ]
    return pd.DataFrame(rows)


def make_predictions(n: int = 200) -> pd.DataFrame:
    """A perfectly separable probe: class 0 scores in [0, 0.5), class 1 in [0.5, 1)."""
    rng = np.random.default_rng(0)
    y_true = np.arange(n) % 2
    y_score = np.where(y_true == 1, 0.5 + 0.5 * rng.random(n), 0.5 * rng.random(n))
    frames = [
        pd.DataFrame(
            {
                "label": "subject_number",
                "layer": layer,
                "component": comp,
                "control": "none",
                "sample_id": np.arange(n),
                "y_true": y_true,
                "y_pred": (y_score >= 0.5).astype(int),
                "y_score": y_score,
            }
        )
        for layer in LAYERS
        for comp in COMPONENTS
    ]
    return pd.concat(frames, ignore_index=True)


class Result(ActionResult):
    """A stand-in action result, as the real ones will be: table, predictions, chart."""

    def summary(self) -> dict:
        return {"best": float(self.table["score"].max())}

    def verdict(self) -> str:
        return f"best score {self.summary()['best']:.2f}"

    def chart(self) -> alt.Chart:
        return alt.Chart(self.table).mark_rect().encode(x="layer:O", y="component:N")


def result() -> Result:
    return Result("detect", xr.Dataset(), make_table(), predictions=make_predictions())


def decode(buffer: bytes, shape: list[int]) -> np.ndarray:
    return np.frombuffer(buffer, dtype="<f4").reshape(shape)


def test_grid_holds_every_real_probe_score_in_its_cell():
    ex = LayerExplorer(make_table())
    assert ex.label == "subject_number" and ex.labels == ["subject_number", "tense"]
    assert ex.layers == LAYERS
    assert ex.components == ["resid", "attn", "mlp", "head.2", "head.10"]  # numeric order
    assert ex.shape == [4, 5] and ex.metric == "accuracy"
    scores, low, high = (decode(b, ex.shape) for b in (ex.scores, ex.ci_low, ex.ci_high))
    for i, layer in enumerate(ex.layers):
        for j, comp in enumerate(ex.components):
            want = score_of("subject_number", layer, comp, "none")
            assert scores[i, j] == pytest.approx(want, abs=1e-6)
            assert low[i, j] == pytest.approx(want - 0.04, abs=1e-6)
            assert high[i, j] == pytest.approx(want + 0.03, abs=1e-6)
    assert ex.controls == ["label_shuffle"]
    ctrl = decode(ex.control_scores, [1, *ex.shape])
    assert ctrl[0, 3, 1] == pytest.approx(0.503, abs=1e-6)


def test_arrays_travel_as_binary_buffers_not_json_lists():
    ex = LayerExplorer(result())
    ex.selected = {"layer": 1, "component": "attn"}
    state, paths, buffers = _remove_buffers(ex.get_state())
    sent = {path[0] for path in paths}
    assert {"scores", "ci_low", "ci_high", "control_scores", "detail_values"} <= sent
    assert "scores" not in state
    sizes = {path[0]: len(bytes(buf)) for path, buf in zip(paths, buffers, strict=True)}
    assert sizes["scores"] == 4 * 4 * 5  # float32, 4 layers x 5 components
    assert sizes["detail_edges"] == 4 * 21


def test_selecting_a_cell_shows_that_probes_class_histograms():
    ex = LayerExplorer(result(), bins=20)
    ex.selected = {"layer": 2, "component": "mlp"}
    assert ex.detail_kind == "histogram"
    assert ex.detail_rows == ["0", "1"] and ex.detail_shape == [2, 20]
    counts = decode(ex.detail_values, [2, 20])
    edges = np.frombuffer(ex.detail_edges, dtype="<f4")
    assert edges[0] == 0 and edges[-1] == 1  # probabilities get the [0, 1] axis
    # ground truth: the separable probe's classes fall on opposite halves, 100 each
    assert counts[0, :10].sum() == 100 and counts[0, 10:].sum() == 0
    assert counts[1, 10:].sum() == 100 and counts[1, :10].sum() == 0
    assert "layer 2 \u00b7 mlp" in ex.detail_title and "200 samples" in ex.detail_title
    ex.selected = {}
    assert ex.detail_kind == "none" and ex.detail_values == b""


def test_histograms_name_the_classes_not_their_codes():
    res = result()
    label = str(res.table["label"].iloc[0])
    named = LayerExplorer(res, classes={label: ["singular", "plural"]})
    named.selected = {"layer": 2, "component": "mlp"}
    assert named.detail_rows == ["singular", "plural"]
    # a run from a spec naming a built-in task finds the names itself
    res = replace(
        res,
        spec={"dataset": {"name": "subject_number"}},
        table=res.table.assign(label="subject_number"),
        predictions=res.predictions.assign(label="subject_number"),
    )
    found = LayerExplorer(res)
    found.selected = {"layer": 2, "component": "mlp"}
    assert found.detail_rows == ["singular", "plural"]


def test_polysemantic_results_show_probe_scores_and_each_layers_top_neurons():
    rng = np.random.default_rng(0)
    features = rng.integers(0, 2, size=(400, 2))
    noise = rng.standard_normal((400, 2, 6))
    neurons = np.maximum(noise + 2 * (features[:, 0] + features[:, 1])[:, None, None], 0)
    cube = xr.Dataset(
        {"neurons": (("sample", "layer", "neuron"), neurons)},
        coords={
            "layer": [0, 1],
            "neuron": np.arange(6),
            "split": ("sample", np.array(["train", "val", "test", "train"] * 100)),
            "a": ("sample", features[:, 0]),
            "b": ("sample", features[:, 1]),
        },
    )
    res = mw.polysemantic(cube, labels=["a", "b"], permutations=20)
    ex = LayerExplorer(res)  # used to raise: the table has neurons, not probe rows
    assert ex.labels == ["a", "b"] and ex.components == ["neurons"] and ex.layers == [0, 1]
    scores = decode(ex.scores, [2, 1])
    assert np.allclose(scores[:, 0], res.data["probe_score"].sel(feature="a").values)
    ex.selected = {"layer": 1, "component": "neurons"}
    assert ex.detail_kind == "grid" and ex.detail_cols == ["a", "b"]
    assert len(ex.detail_rows) == 6 and all(r.startswith("neuron:1.") for r in ex.detail_rows)


def test_explorer_has_a_static_fallback_and_a_readable_repr():
    ex = LayerExplorer(result())
    data, meta = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data
    assert base64.b64decode(data["image/png"]).startswith(b"\x89PNG")  # nbconvert, GitHub
    assert meta["image/png"]["width"] > 0
    assert data["text/plain"] == repr(ex) and "0x" not in repr(ex)
    assert repr(ex).startswith("LayerExplorer(label=")


def test_a_table_without_predictions_says_so_instead_of_drawing():
    ex = LayerExplorer(make_table())
    ex.selected = {"layer": 0, "component": "resid"}
    assert ex.detail_kind == "none"
    assert "no per-sample predictions" in ex.detail_title


def test_localize_results_plot_effects_and_show_each_sites_drops():
    from mechwidgets.actions.localize import LocalizeResult as Localized

    sites = [(layer, comp) for layer in (0, 1) for comp in ("attn", "mlp", "head.0")]
    effect = {site: 0.1 * i for i, site in enumerate(sites)}
    effect[(1, "head.0")] = np.nan  # a candidate that was not intervened on
    ranking = pd.DataFrame(
        {
            "site": [f"{c}@{layer}" for layer, c in sites],
            "layer": [layer for layer, _ in sites],
            "component": [c for _, c in sites],
            "tested": [not np.isnan(effect[s]) for s in sites],
            "effect": [effect[s] for s in sites],
            "ci_low": [effect[s] - 0.05 for s in sites],
            "ci_high": [effect[s] + 0.05 for s in sites],
            "ablation": "mean",
        }
    )
    impact = pd.DataFrame(
        {
            "layer": layer,
            "component": comp,
            "metric": what,
            "intervention": how,
            "drop": effect[(layer, comp)] * (2 if how == "zero" else 1) + (what == "probe"),
        }
        for layer, comp in sites[:-1]
        for what in ("behavior", "probe")
        for how in ("mean", "zero")
    )
    res = Localized("localize", xr.Dataset(), ranking, params={"label": None}, impact=impact)
    ex = LayerExplorer(res)
    assert ex.label == "localize" and ex.metric == "drop under mean"
    assert ex.components == ["attn", "mlp", "head.0"]
    scores = decode(ex.scores, ex.shape)
    assert scores[1, 1] == pytest.approx(0.4) and np.isnan(scores[1, 2])
    ex.selected = {"layer": 1, "component": "mlp"}
    assert ex.detail_kind == "grid"
    assert ex.detail_rows == ["behavior", "probe"] and ex.detail_cols == ["mean", "zero"]
    grid = decode(ex.detail_values, ex.detail_shape)
    np.testing.assert_allclose(grid, [[0.4, 0.8], [1.4, 1.8]], rtol=1e-6)
    ex.selected = {"layer": 1, "component": "head.0"}
    assert ex.detail_kind == "none" and "no patching grid" in ex.detail_title


def test_switching_label_redraws_the_grid_and_clears_the_selection():
    ex = LayerExplorer(result())
    ex.selected = {"layer": 3, "component": "mlp"}
    ex.label = "tense"
    assert ex.selected == {} and ex.detail_kind == "none"
    scores = decode(ex.scores, ex.shape)
    assert scores[3, 2] == pytest.approx(score_of("tense", 3, "mlp", "none"), abs=1e-6)
    assert LayerExplorer(make_table(), label="tense").scores == ex.scores


def test_cells_without_a_probe_are_nan_and_still_in_the_grid():
    table = make_table(("subject_number",))
    table = table[~((table["layer"] == 2) & (table["component"] == "attn"))]
    ex = LayerExplorer(table)
    scores = decode(ex.scores, ex.shape)
    assert ex.shape == [4, 5]
    assert np.isnan(scores[2, ex.components.index("attn")])
    assert np.isfinite(scores).sum() == 19


def test_seeds_of_one_probe_are_averaged():
    table = make_table(("subject_number",))
    again = table.assign(score=table["score"] + 0.1)
    ex = LayerExplorer(pd.concat([table, again]))
    want = score_of("subject_number", 1, "resid", "none") + 0.05
    assert decode(ex.scores, ex.shape)[1, 0] == pytest.approx(want, abs=1e-6)


def test_multiclass_probes_without_a_score_say_so():
    preds = make_predictions().assign(y_score=np.nan, y_true=lambda d: d["y_true"] + 3)
    res = Result("detect", xr.Dataset(), make_table(), predictions=preds)
    ex = LayerExplorer(res)
    ex.selected = {"layer": 0, "component": "attn"}
    assert ex.detail_kind == "none" and "no per-sample score" in ex.detail_title


@pytest.fixture(scope="module")
def planted_detect():
    """The real detect action on a cube with 'number' planted at layer 2 only."""
    from mechwidgets.actions.detect import detect
    from mechwidgets.probes.synthetic import planted_cube

    cube = planted_cube({"number": {2: 3.0}}, n_samples=200, n_layers=3, dim=16)
    return detect(cube, "number", seeds=1, controls=("label_shuffle",))


def test_real_detect_result_peaks_where_the_label_was_planted(planted_detect):
    ex = LayerExplorer(planted_detect)
    scores = decode(ex.scores, ex.shape)
    assert ex.layers == [0, 1, 2] and ex.components == ["resid", "attn", "mlp"]
    assert ex.metric == "accuracy" and ex.controls == ["label_shuffle"]
    assert scores[2].min() > 0.95 > scores[:2].max()

    def class_bins(layer: int) -> tuple[np.ndarray, np.ndarray]:
        ex.selected = {"layer": layer, "component": "resid"}
        counts = decode(ex.detail_values, ex.detail_shape)
        return np.flatnonzero(counts[0]), np.flatnonzero(counts[1])

    planted0, planted1 = class_bins(2)
    assert ex.detail_rows == ["0", "1"]  # float labels shown as classes
    assert planted0.max() <= planted1.min()  # the planted probe separates the classes
    noise0, noise1 = class_bins(0)
    assert noise0.max() > noise1.min()  # a noise layer's classes overlap


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LayerExplorer([1, 2]), "needs an action result or its .table, got list"),
        (lambda: LayerExplorer(make_table().drop(columns="ci_low")), "lacks column(s) ci_low"),
        (lambda: LayerExplorer(make_table().iloc[:0]), "table is empty"),
        (lambda: LayerExplorer(make_table(), label="mood"), "label 'mood' is not in the result"),
        (lambda: LayerExplorer(make_table(), bins=0), "bins must be a positive integer"),
    ],
)
def test_bad_input_is_one_line_widget_error(make, message):
    with pytest.raises(WidgetError) as info:
        make()
    assert message in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, MechError)


def test_selecting_a_cell_that_is_not_there_fails_and_keeps_the_old_one():
    ex = LayerExplorer(make_table())
    ex.selected = {"layer": 1, "component": "mlp"}
    with pytest.raises(WidgetError, match=r"no cell layer=9, component='mlp'; layers are"):
        ex.selected = {"layer": 9, "component": "mlp"}
    assert ex.selected == {"layer": 1, "component": "mlp"}


def test_widget_is_reachable_as_mw_widgets_and_loads_the_shipped_bundle():
    assert mw.widgets.LayerExplorer is LayerExplorer
    ex = LayerExplorer(make_table())
    assert "export {" in ex._esm and "as default" in ex._esm
    assert ex._esm == (STATIC / "layer_explorer.js").read_text()


# ---- Launcher -------------------------------------------------------------------------


class FakeRunner(types.ModuleType):
    """Stands in for mechwidgets.runner: records the spec, reports progress."""

    def __init__(self, fail: Exception | None = None) -> None:
        super().__init__("mechwidgets.runner")
        self.specs: list = []
        self.fail = fail
        self.launcher: Launcher | None = None
        self.button_during_run = None

    def run_spec(self, spec, progress=None):
        self.specs.append(spec)
        self.button_during_run = self.launcher.run_button.disabled if self.launcher else None
        if self.fail:
            raise self.fail
        progress(0.5, "probes")
        return result()


class ProbeParams(Params):
    """A stand-in action's parameters: none, but it runs controls."""

    takes_controls: ClassVar[bool] = True


@pytest.fixture
def launcher(monkeypatch):
    stand_in = type("WidgetProbe", (), {"name": "widget_probe"})
    entry = registry.Registration("widget_probe", ProbeParams, stand_in, None, None)
    monkeypatch.setitem(registry._ACTIONS, "widget_probe", entry)
    ui = Launcher()
    ui.action.value = "widget_probe"
    return ui


def test_launcher_form_values_become_the_flat_runspec(launcher):
    launcher.model.value = "toy-induction"
    launcher.task.value = " subject_number "
    launcher.layers.value = "0 - 3"
    launcher.components["attn"].value = False
    launcher.components["head"].value = True
    spec = launcher.spec()
    assert spec == {
        "action": "widget_probe",
        "model": "toy-induction",
        "task": "subject_number",
        "layers": "0-3",
        "components": ["resid", "mlp", "head"],
        "n": 2000,
        "controls": ["label_shuffle", "random_subspace"],
    }
    nested = RunSpec.from_dict(spec)
    assert nested.extraction.selectors == ["resid:0-3", "mlp:0-3", "head:0-3"]
    assert nested.extraction.model_name == "toy-induction"
    assert nested.action.name == "widget_probe"


def test_launcher_offers_the_registry_and_zoo(launcher):
    from mechwidgets.data.catalog import list_tasks
    from mechwidgets.models.zoo import list_models

    assert "widget_probe" in launcher.action.options
    assert list(launcher.model.options) == list_models()
    assert "subject_number" in launcher.task.options
    assert list(launcher.task.options) == list_tasks()
    assert [name for name, box in launcher.components.items() if box.value] == [
        "resid",
        "attn",
        "mlp",
    ]


def test_run_button_runs_the_spec_and_displays_the_result(launcher, monkeypatch):
    runner = FakeRunner()
    runner.launcher = launcher
    monkeypatch.setitem(sys.modules, "mechwidgets.runner", runner)
    launcher.run_button.click()  # runs in a background thread
    launcher.wait(timeout=60)
    assert [s.action.name for s in runner.specs] == ["widget_probe"]
    assert runner.button_during_run is True and launcher.run_button.disabled is False
    assert launcher.error is None and isinstance(launcher.result, Result)
    assert launcher.progress.value == 1.0 and launcher.progress.bar_style == "success"
    assert launcher.progress.description == "probes"  # the runner's progress reached the bar
    verdict, chart, tables = launcher.output.outputs
    assert verdict["data"]["text/plain"] == launcher.result.verdict()
    assert "application/vnd.jupyter.widget-view+json" in chart["data"]
    assert "image/png" in chart["data"]  # the fallback where widgets do not run
    assert "<details>" in tables["data"]["text/html"]


def test_launcher_sets_labels_seeds_controls_and_output_for_each_action(tmp_path):
    ui = Launcher()
    ui.action.value = "compare"
    ui.labels.value = "subject_number, tense"
    ui.controls["random_subspace"].value = False
    ui.output_dir.value = str(tmp_path)
    spec = ui.spec()
    assert spec["labels"] == ["subject_number", "tense"] and spec["seeds"] == 5
    assert spec["controls"] == ["label_shuffle"] and spec["output_dir"] == str(tmp_path)
    ui.action.value = "polysemantic"
    assert ui.seeds.value == 1  # the action's own default
    ui.action.value = "detect"
    with pytest.raises(SpecError, match="detect takes one label"):
        ui.spec()
    ui.labels.value = "tense"
    assert ui.spec()["label"] == "tense" and "labels" not in ui.spec()
    ui.action.value = "localize"
    assert ui.seeds.disabled and "seeds" not in ui.spec()
    assert set(ui.action.options) >= {"detect", "compare", "localize", "polysemantic", "collapse"}


@pytest.mark.parametrize(
    ("fail", "line"),
    [
        (SpecError("unknown task 'x'; choose one of a, b"), "unknown task 'x'; choose one of a, b"),
        (RuntimeError("boom\nwith detail"), "RuntimeError: boom with detail"),
    ],
)
def test_run_errors_show_as_one_line_in_the_output_area(launcher, monkeypatch, fail, line):
    monkeypatch.setitem(sys.modules, "mechwidgets.runner", FakeRunner(fail))
    assert launcher.run() is None
    (shown,) = launcher.output.outputs
    assert shown == {"output_type": "stream", "name": "stderr", "text": line + "\n"}
    assert launcher.progress.bar_style == "danger" and launcher.error is fail


def test_an_invalid_form_fails_before_the_runner_is_called(launcher, monkeypatch):
    runner = FakeRunner()
    monkeypatch.setitem(sys.modules, "mechwidgets.runner", runner)
    for box in launcher.components.values():
        box.value = False
    launcher.run()
    assert runner.specs == []
    assert launcher.output.outputs[0]["text"].startswith("tick at least one component")
    launcher.components["mlp"].value = True
    launcher.layers.value = "x-y"
    launcher.run()
    assert runner.specs == [] and "\n" not in launcher.output.outputs[0]["text"].rstrip("\n")


# ---- the JavaScript bundle and the wheel -----------------------------------------------


def _npm_ready() -> Path:
    """js/ with its node_modules installed (npm ci on first use); fails if npm is missing."""
    js = ROOT / "js"
    npm = shutil.which("npm")
    assert npm and shutil.which("node"), "node and npm are needed to build the widget JS"
    if not (js / "node_modules" / "esbuild").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=js, check=True, timeout=300)
    return js


def test_committed_bundle_is_up_to_date_with_the_js_sources():
    js = _npm_ready()
    done = subprocess.run(
        ["node", "build.mjs", "--check"], cwd=js, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def _tracked_files() -> list[str]:
    """What a clean checkout of this working tree would hold: tracked + unignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [p for p in listed.split("\0") if p and (ROOT / p).is_file()]


def test_wheel_from_a_clean_checkout_ships_the_widget_js(tmp_path):
    src = tmp_path / "src"
    for rel in _tracked_files():
        if rel.startswith(("mechwidgets/", "pyproject.toml", "README")):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    assert not (src / "js" / "node_modules").exists()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "dist"), str(src)],
        check=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("mechwidgets-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        for name in ("layer_explorer.js", "chart.js"):  # chart.js carries vega: no CDN
            shipped = whl.read(f"mechwidgets/viz/static/{name}").decode()
            assert shipped == (STATIC / name).read_text()


def test_launcher_runs_a_real_action_on_the_embedded_model():
    ui = Launcher()
    ui.model.value, ui.task.value, ui.action.value = "toy-grammar", "subject_number", "detect"
    ui.layers.value = "3"
    for name, box in ui.components.items():
        box.value = name == "resid"
    seen = []
    ui.progress.observe(lambda change: seen.append(change["new"]), names="description")
    ui.run_button.click()
    ui.wait(timeout=300)
    assert ui.error is None, ui.error
    assert ui.result.action == "detect"
    assert set(ui.result.table["layer"]) == {3}
    assert seen[-4:] == ["model", "extract", "action", "done"]  # the runner's stages, in order
    assert ui.progress.bar_style == "success"


def toy_launcher(n: int = 320) -> Launcher:
    """A Launcher set to a quick detect on the embedded toy model: one layer, resid."""
    ui = Launcher()
    ui.model.value, ui.task.value, ui.action.value = "toy-grammar", "subject_number", "detect"
    ui.layers.value, ui.n.value, ui.seeds.value = "2", n, 1
    for name, box in ui.components.items():
        box.value = name == "resid"
    return ui


def test_launcher_has_one_bar_that_moves_with_each_extraction_batch(cache, capfd):
    ui = toy_launcher()
    n_batches = -(-ui.n.value // RunSpec.from_dict(ui.spec()).extraction.batch_size)
    seen = []  # (fraction, stage, Run disabled, Cancel enabled) at each move of the bar
    ui.progress.observe(
        lambda change: seen.append(
            (
                change["new"],
                ui.progress.description,
                ui.run_button.disabled,
                not ui.cancel_button.disabled,
            )
        ),
        names="value",
    )
    ui.start()
    assert ui.run_button.disabled and ui.running  # off from the click on, not a moment later
    ui.wait(timeout=300)
    assert ui.error is None, ui.error
    fractions = [f for f, *_ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    extract = [f for f, stage, *_ in seen if stage == "extract"]
    # the stage's start, then one move per batch, ending where the action stage starts
    assert len(set(extract)) == n_batches + 1 and extract[-1] == pytest.approx(0.7)
    assert all(run_off and cancel_on for *_, run_off, cancel_on in seen[:-1])
    assert not ui.run_button.disabled and ui.cancel_button.disabled and ui.status.value == "done"
    assert "extract:" not in capfd.readouterr().err  # extract's own tqdm bar stayed off


def test_cancel_stops_the_run_before_the_next_stage(cache):
    ui = toy_launcher()
    stages = []

    def on_stage(change):
        stages.append(change["new"])
        if change["new"] == "model":
            ui.cancel()

    ui.progress.observe(on_stage, names="description")
    ui.start()
    assert ui.wait(timeout=300) is None
    assert stages == ["task", "model"]  # extraction never started
    assert isinstance(ui.error, RunCancelled) and ui.status.value == "cancelled"
    (line,) = ui.output.outputs
    assert line["text"].startswith("cancelled before extract")
    assert not ui.running and ui.cancel_button.disabled and ui.progress.bar_style == "warning"
    assert not list(cache.glob("*.nc"))  # no cube was written


def test_cancel_during_extraction_stops_at_the_next_batch(cache):
    ui = toy_launcher()
    batches = []

    def on_value(change):
        if ui.progress.description == "extract":
            batches.append(change["new"])
            if len(batches) == 2:  # the stage's start, then the first batch
                ui.cancel()

    ui.progress.observe(on_value, names="value")
    ui.start()
    ui.wait(timeout=300)
    assert len(batches) == 2 and isinstance(ui.error, RunCancelled)
    assert ui.output.outputs[0]["text"].startswith("cancelled during extract")
    assert not list(cache.glob("*.nc"))  # the half-written cube was not kept


def test_controls_are_off_for_actions_without_them():
    ui = Launcher()
    ui.action.value = "patch"
    assert all(box.disabled for box in ui.controls.values()) and "controls" not in ui.spec()
    ui.action.value = "detect"
    assert not any(box.disabled for box in ui.controls.values()) and "controls" in ui.spec()
