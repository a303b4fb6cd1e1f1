"""The runner end to end on a tiny random-weight model, and re-running a bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

from mechwidgets.core.errors import MechError, SpecError
from mechwidgets.core.specs import RunSpec
from mechwidgets.data import grammar
from mechwidgets.data.catalog import get_task, list_tasks
from mechwidgets.report.bundle import read_artifacts, to_jsonable
from mechwidgets.runner import (
    DEMO_SPEC,
    ModelOnDemand,
    load_spec,
    metrics_difference,
    run_bundle,
    run_spec,
    task_hash,
)

CONFIGS = Path(__file__).parents[1] / "configs"
#: few draws: the runner's plumbing is under test here, not the statistics
FAST = {"label": "subject_number", "seeds": 1, "permutations": 20, "resamples": 100}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-block GPT-NeoX with random weights over the grammar's words, saved as HF files."""
    folder = tmp_path_factory.mktemp("tiny_grammar")
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", *grammar.vocabulary()])}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>"
    )
    config = transformers.GPTNeoXConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.GPTNeoXForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def spec_for(model: Path, out: Path | None = None) -> dict:
    return {
        "run_name": "tiny",
        "seed": 7,
        "dataset": {"name": "subject_number", "n": 240},
        "extraction": {"model_name": str(model), "selectors": ["resid:all", "mlp:all"]},
        "action": {"name": "detect", "params": FAST},
        "controls": ["label_shuffle"],
        "output_dir": None if out is None else str(out),
    }


@pytest.fixture(scope="session")
def first_run(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return run_spec(spec_for(tiny_dir, out)), out


def test_run_spec_writes_a_bundle_with_spec_hashes_and_timings(first_run, tiny_dir):
    result, out = first_run
    assert set(result.table["layer"]) == {0, 1} and set(result.table["component"]) == {
        "resid", "mlp"}  # fmt: skip
    assert set(result.table["control"]) == {"none", "label_shuffle"}
    art = read_artifacts(out)
    assert art["spec"] == RunSpec.from_dict(spec_for(tiny_dir, out)).to_dict()
    assert art["seed"] == 7
    assert set(art["timings"]) >= {"task", "model", "extract", "action"}
    assert art["hashes"]["data"] == result.activations["task"]["data_hash"]
    assert art["hashes"]["model"] == result.activations["attrs"]["model_identity"]
    assert art["hashes"]["tokenizer"] and art["hashes"]["cache_key"]
    index = json.loads((out / "activations_index.json").read_text())
    assert index["variables"]["act"]["shape"][:3] == [240, 2, 2]
    assert Path(index["file"]).is_file()  # the cached cube the numbers came from


def test_rerun_from_artifacts_gives_the_same_numbers(first_run, tmp_path):
    result, out = first_run
    again = run_bundle(out / "artifacts.json", output_dir=tmp_path / "again")
    assert metrics_difference(again, out) == 0.0
    assert again.verdict() == result.verdict()
    assert again.timings["extract"] < result.timings["extract"]  # the cube came from cache
    moved = replace(again, table=again.table.assign(score=again.table["score"] + 0.01))
    assert metrics_difference(moved, out) == pytest.approx(0.01)


def test_rerun_default_output_never_overwrites_the_original(first_run):
    result, out = first_run
    before = (out / "metrics.json").read_text()
    again = run_bundle(out)
    assert again.spec["output_dir"] == str(out.with_name("tiny-rerun"))
    assert (out.with_name("tiny-rerun") / "report.html").is_file()
    assert (out / "metrics.json").read_text() == before


def test_task_hash_tracks_the_data():
    a, b = get_task("subject_number", n=50, seed=0), get_task("subject_number", n=50, seed=1)
    assert task_hash(a) == task_hash(get_task("subject_number", n=50, seed=0))
    assert task_hash(a) != task_hash(b)


def test_load_spec_sources(tmp_path, first_run):
    _, out = first_run
    assert load_spec(out).run_name == "tiny"
    assert load_spec(out / "artifacts.json").seed == 7
    as_json = tmp_path / "spec.json"
    as_json.write_text(json.dumps(DEMO_SPEC))
    assert load_spec(as_json) == load_spec(DEMO_SPEC)
    with pytest.raises(SpecError, match="no such config"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="bad JSON"):
        load_spec(bad)


def test_unknown_action_param_is_one_line_error(tiny_dir):
    spec = spec_for(tiny_dir)
    spec["action"]["params"] = {**FAST, "probe_flavour": "spicy"}
    with pytest.raises(MechError) as err:
        run_spec(spec)
    assert "probe_flavour" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name", ["feature_detection_toy", "feature_comparison_toy", "repr_collapse_toy"]
)
def test_toy_configs_parse_and_name_real_tasks(name):
    spec = RunSpec.from_yaml(CONFIGS / f"{name}.yaml")
    assert spec.extraction.model_name == "toy-grammar"
    assert spec.dataset.name in list_tasks()
    assert spec.output_dir == f"runs/{name}"


def test_toy_detection_config_is_the_demo():
    config = RunSpec.from_yaml(CONFIGS / "feature_detection_toy.yaml").to_dict()
    demo = RunSpec.from_dict(DEMO_SPEC).to_dict()
    keep = ("dataset", "action", "controls", "seed")
    assert {k: config[k] for k in keep} == {k: demo[k] for k in keep}


def test_pythia_config_keeps_the_seed_design_shape():
    raw = yaml.safe_load((CONFIGS / "feature_detection_pythia70m.yaml").read_text())
    assert raw["extraction"]["token_index"] == -1
    assert raw["extraction"]["selectors"] == ["layers_output:0-5"]
    assert raw["action"]["name"] == "feature_detection"
    spec = RunSpec.from_dict(raw)
    assert spec.extraction.token == -1 and spec.extraction.selectors == ["resid:0-5"]
    assert spec.action.name == "detect" and spec.action.params == raw["action"]["params"]
    assert [c.name for c in spec.controls] == ["label_shuffle", "random_subspace"]
    assert get_task(spec.dataset.name, n=20).name == "subject_number"  # the seed's name loads


def test_a_file_with_its_own_split_column_keeps_that_split(tmp_path):
    task = get_task("subject_number", n=300, seed=3)
    rows = [
        {"text": t, "number": int(y), "fold": ["train", "val", "test"][i % 3]}
        for i, (t, y) in enumerate(zip(task.texts, task.labels["subject_number"], strict=True))
    ]
    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    spec = {
        "action": {"name": "detect", "params": {"label": "number", "seeds": 1}},
        "dataset": {"name": str(data), "labels": ["number"], "split": "fold"},
        "extraction": {"model_name": "toy-grammar", "selectors": ["resid:3"]},
    }
    result = run_spec(spec)
    tested = set(result.predictions["sample_id"].astype(int))
    assert tested == {i for i, r in enumerate(rows) if r["fold"] == "test"}


def test_output_dir_with_a_tilde_lands_in_the_home_folder(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    result = run_spec(spec_for(tiny_dir, Path("~/runs/tiny")))
    bundle = tmp_path / "home" / "runs" / "tiny"
    assert (bundle / "artifacts.json").is_file()
    assert result.spec["output_dir"] == str(bundle)
    assert not (tmp_path / "~").exists()  # no literal "~" folder beside the config


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs (read-only)")
def test_unwritable_folders_are_refused_before_the_model_loads(tiny_dir, monkeypatch):
    import mechwidgets.models.loading as loading

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the folders were checked")

    monkeypatch.setattr(loading, "load_model", no_model)
    with pytest.raises(SpecError, match="not writable"):
        run_spec(spec_for(tiny_dir, Path("/sys/kernel/mechwidgets-out")))
    monkeypatch.setenv("MECHWIDGETS_CACHE", "/sys/kernel/mechwidgets-cache")
    with pytest.raises(SpecError, match="activation cache .* not writable"):
        run_spec(spec_for(tiny_dir))


def test_too_many_permutations_are_refused_before_the_model_loads(tiny_dir, monkeypatch):
    import mechwidgets.models.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    spec = spec_for(tiny_dir)
    spec["action"]["params"] = {**FAST, "permutations": 10**9}
    with pytest.raises(SpecError, match=r"permutations=1000000000 needs ~[\d,]+ GiB"):
        run_spec(spec)


def test_no_controls_runs_none(tiny_dir):
    spec = {**spec_for(tiny_dir), "controls": []}
    result = run_spec(spec)
    assert set(result.table["control"]) == {"none"}
    assert "no controls ran" in result.verdict()


#: a toy config whose cube the test caches first
TOY_SPEC = {
    "seed": 3,
    "dataset": {"name": "subject_number", "n": 120},
    "extraction": {"model_name": "toy-grammar", "selectors": ["resid:all"]},
    "action": {"name": "detect", "params": FAST},
    "controls": ["label_shuffle"],
}
#: run a config in a fresh interpreter: which heavy modules it imported, and its table
FRESH_RUN = """
import json, sys
from mechwidgets.report.bundle import to_jsonable
from mechwidgets.runner import run_spec
result = run_spec(json.loads(sys.argv[1]))
print(json.dumps({
    "imported": [m for m in ("torch", "transformers", "nnsight") if m in sys.modules],
    "table": to_jsonable(result.table.to_dict(orient="records")),
}))
"""


def test_a_cached_cube_is_found_without_building_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHWIDGETS_CACHE", str(tmp_path))
    loaded = run_spec(TOY_SPEC)  # extracts with the model, and records the model's card
    done = subprocess.run(
        [sys.executable, "-c", FRESH_RUN, json.dumps(TOY_SPEC)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MECHWIDGETS_CACHE": str(tmp_path)},
    )
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    assert fresh["imported"] == []  # neither torch nor transformers: the cube came by the card
    assert fresh["table"] == to_jsonable(loaded.table.to_dict(orient="records"))


@pytest.fixture
def counted_build() -> tuple[list[str], Callable[[], str]]:
    """A model builder that logs each build, and its log."""
    built: list[str] = []

    def build() -> str:
        built.append("model")
        return "model"

    return built, build


def test_a_model_on_demand_is_built_once_when_an_action_reads_it(counted_build):
    built, build = counted_build
    context = ModelOnDemand(build=build, task="task", seed=2)
    assert built == [] and context.task == "task"  # reading other fields builds nothing
    assert context.model == "model" and context.model == "model" and built == ["model"]
    copy = replace(ModelOnDemand(build=build), seed=5)  # replace() reads the model: built
    assert copy.model == "model" and copy.seed == 5 and len(built) == 2
    assert ModelOnDemand(model="given").model == "given"  # a loaded model is kept as given


def test_an_evolved_model_on_demand_stays_unbuilt_and_shares_one_build(counted_build):
    built, build = counted_build
    context = ModelOnDemand(build=build, task="task", seed=2)
    copy = context.evolve(seed=5, controls=["label_shuffle"])  # as compare/polysemantic do
    assert built == [] and copy.seed == 5 and copy.task == "task" and context.seed == 2
    assert copy.model == "model" and context.model == "model" and built == ["model"]
