"""Remote models: every action through nnsight's ``remote="local"`` backend, which
serialises each trace exactly as for NDIF and runs it with this package's modules hidden,
gives the numbers of a local run; only pooled rows and metric values come back; a cached
cube is reused with no remote call; a remote model that cannot run fails before any work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import nnsight
import numpy as np
import pandas as pd
import pytest
import torch

import mechwidgets as mw
from mechwidgets.actions.localize import localize
from mechwidgets.actions.recovery import recovery_test
from mechwidgets.core.errors import ModelError
from mechwidgets.models.remote import recorded_traces, returned_bytes

TOL = 1e-5


@pytest.fixture(scope="module")
def grammar() -> tuple[mw.Model, mw.Model]:
    torch.set_num_threads(1)
    return mw.load_model("toy-grammar"), mw.load_model("toy-grammar", remote="local")


@pytest.fixture(scope="module")
def induction() -> tuple[mw.Model, mw.Model]:
    return mw.load_model("toy-induction"), mw.load_model("toy-induction", remote="local")


@pytest.fixture
def shipped() -> Iterator[list[list[object]]]:
    """One entry per trace run through the remote backend: the values it saved."""
    with recorded_traces() as traces:
        yield traces


def same_numbers(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    for col in a.columns:
        if a[col].dtype.kind == "f":
            np.testing.assert_allclose(b[col], a[col], rtol=TOL, atol=TOL, err_msg=col)
        else:
            assert a[col].tolist() == b[col].tolist(), col


def test_the_backend_hides_this_package_from_traced_code(grammar):
    """The test backend is faithful: a block that references a mechwidgets object fails as
    it would on NDIF, so the equalities below are not vacuous."""
    _, remote = grammar
    inputs = remote.tokenize(["the dog sleeps"])
    with pytest.raises(ModuleNotFoundError, match="mechwidgets"), remote.trace(**inputs) as tracer:
        remote.block(0).output.save()  # `remote` is a Model: unknown to a server
        tracer.stop()


def test_remote_extract_equals_local_and_returns_only_pooled_rows(grammar, shipped):
    local, remote = grammar
    task = mw.get_task("subject_number", n=24)
    kw = dict(selectors=["resid:embed,all", "attn:all", "mlp:all", "head:1.*", "neuron:2.5"])
    a = mw.extract(local, task, batch_size=8, cache=False, **kw)
    b = mw.extract(remote, task, batch_size=8, cache=False, **kw)
    for var in ("act", "neurons"):
        np.testing.assert_allclose(b[var].values, a[var].values, rtol=TOL, atol=TOL)
    assert len(shipped) == 3  # one remote trace per batch
    shape, d = local.shape, local.d_model
    sites = 1 + 3 * shape.n_layers  # embedding, then resid/attn/mlp per block
    for start, saved in zip(range(0, 24, 8), shipped, strict=True):
        seq = local.tokenize(list(task.texts[start : start + 8]))["input_ids"].shape[1]
        full = (
            8
            * seq
            * 4
            * (sites * d + shape.n_layers * (shape.n_heads * local.d_head + shape.d_mlp))
        )
        pooled = 8 * 4 * (sites * d + shape.n_layers * (shape.n_heads * d + 1))
        assert returned_bytes(saved) == pooled  # one row per text per site, nothing else
        assert returned_bytes(saved) / full < 1.5 / seq


def test_a_cached_remote_cube_is_reused_with_no_remote_call(grammar, shipped):
    _, remote = grammar
    task = mw.get_task("subject_number", n=16)
    first = mw.extract(remote, task, layers="all", components=["resid"])
    assert len(shipped) == 1
    again = mw.extract(remote, task, layers="all", components=["resid"])
    assert len(shipped) == 1  # the cube cache answered: zero remote calls
    np.testing.assert_array_equal(again["act"].values, first["act"].values)


def test_patching_and_attribution_equal_local_runs(grammar, shipped):
    local, remote = grammar
    pairs = mw.get_task_pairs("subject_number", n=40)
    kw = dict(n=12, components=["resid:0-1", "attn:1", "head:1.*", "mlp:0"], resamples=50)
    for action in (mw.patch, mw.attribution_patch):
        table = action(local, clean=pairs, **kw).table
        same_numbers(table, action(remote, clean=pairs, **kw).table)
    # the source prompts run beside the patched copies on the server: no activation comes
    # back, only metric values (at most one float per cell and pair per pass)
    assert len(shipped) >= 4
    assert all(0 < returned_bytes(saved) <= 4 * len(table) * 12 for saved in shipped)


def test_localize_and_recovery_equal_local_runs(grammar):
    local, remote = grammar
    task = mw.get_task("subject_number", n=120)
    kw = dict(
        label="subject_number", behavior=mw.metrics.logit_diff(correct="is", wrong="are"),
        components=["resid", "head:1.*"], top_k=2, n=16, resamples=50,
        interventions=["zero", "mean", "resample", "patch"],
    )  # fmt: skip
    a, b = localize(local, task, **kw), localize(remote, task, **kw)
    same_numbers(a.impact, b.impact)
    same_numbers(a.ranking, b.ranking)
    a = recovery_test(local, task, "subject_number", source_layer=0, resamples=50)
    b = recovery_test(remote, task, "subject_number", source_layer=0, resamples=50)
    same_numbers(a.table, b.table)


def test_induction_heads_localize_equally_on_toy_induction(induction, shipped):
    local, remote = induction
    task = mw.get_task("induction", n=40)
    kw = dict(components=["head:1.*"], interventions=["mean"], n=12, resamples=50)
    same_numbers(localize(local, task, **kw).impact, localize(remote, task, **kw).impact)
    assert shipped  # the remote model's passes went through the remote backend


def test_remote_without_credentials_fails_in_one_line_before_any_work(monkeypatch):
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("a remote model was built before the credentials were checked")

    monkeypatch.setattr(nnsight, "TransformersModel", no_work)
    began = time.perf_counter()
    with pytest.raises(ModelError, match="NDIF_API_KEY") as err:
        mw.load_model("EleutherAI/pythia-70m", remote=True)
    assert time.perf_counter() - began < 1.0
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match="hub models by id"):
        mw.load_model("toy-grammar", remote=True)
    with pytest.raises(ModelError, match="not a remote setting"):
        mw.load_model("toy-grammar", remote="ndif")
    assert os.environ.get("NDIF_API_KEY") is None


def test_a_self_hosted_ndif_without_the_hub_fails_in_one_line():
    """A URL needs no NDIF key, but the architecture and tokenizer still come from the hub:
    offline (as the tests run), that is one line naming the cause."""
    with pytest.raises(ModelError, match="cannot read the config") as err:
        mw.load_model("EleutherAI/pythia-70m", remote="https://ndif.example")
    assert "\n" not in str(err.value)


def test_a_runspec_runs_its_model_remotely(shipped, cache):
    """``extraction.remote`` (or the flat ``remote:`` key) loads the model remotely: the
    run's traces go through the remote backend and its numbers equal a local run's."""
    from mechwidgets.core.specs import RunSpec
    from mechwidgets.runner import run_spec

    spec = {
        "dataset": {"name": "subject_number", "n": 80},
        "extraction": {"model_name": "toy-grammar", "selectors": ["resid:all"], "cache": False},
        "action": {"name": "detect", "params": {"seeds": 1, "permutations": 20, "resamples": 100}},
        "controls": ["label_shuffle"],
    }
    local = run_spec(spec)
    assert not shipped
    remote = run_spec({**spec, "extraction": {**spec["extraction"], "remote": "local"}})
    assert len(shipped) == 3  # the 80 texts in batches of 32, each a remote trace
    same_numbers(local.table, remote.table)
    assert remote.spec["extraction"]["remote"] == "local"
    flat = RunSpec.from_dict({"model": "toy-grammar", "remote": "local", "task": "subject_number",
                      "action": "detect"})  # fmt: skip
    assert flat.extraction.remote == "local"
    with pytest.raises(ModelError, match="not a remote setting"):
        run_spec({**spec, "extraction": {**spec["extraction"], "remote": "ndif"}})
