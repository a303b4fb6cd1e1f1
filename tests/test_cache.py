"""The activation cache: keys, atomic writes, corrupt files rebuilt, and `mechinterp cache`."""

from __future__ import annotations

import logging

import netCDF4
import numpy as np
import pytest
import torch

import mechwidgets as mw
from mechwidgets.cli import main
from mechwidgets.extract import cache as cache_store
from mechwidgets.models.loading import load_model

TEXTS = ["the cat sat on the mat", "a dog runs", "cats", "the red bird sits near the tree"]


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache folder for one test, through MECHWIDGETS_CACHE."""
    folder = tmp_path / "cubes"
    monkeypatch.setenv("MECHWIDGETS_CACHE", str(folder))
    return folder


def extract(model):
    return mw.extract(model, TEXTS, components=["resid", "mlp"], batch_size=2)


def test_env_var_sets_the_folder_and_files_are_renamed_into_place(tiny_models, fresh_cache):
    cube = extract(tiny_models["gpt_neox"])
    files = sorted(p.name for p in fresh_cache.iterdir())
    assert files == [f"{cube.attrs['cache_key']}.nc"]  # no temporary file left behind
    assert cube.encoding["source"] == str(fresh_cache / files[0])


def test_interrupted_write_leaves_no_file(fresh_cache):
    target = cache_store.cache_path("abc")
    with pytest.raises(KeyboardInterrupt), cache_store.writing(target) as tmp:
        tmp.write_bytes(b"half a cube")
        raise KeyboardInterrupt
    assert list(fresh_cache.iterdir()) == []


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def unmark(path):
    with netCDF4.Dataset(path, "a") as f:
        f.setncattr("complete", 0)


@pytest.mark.parametrize(("damage", "phrase"), [(truncate, "unreadable"), (unmark, "not finished")])
def test_corrupt_cache_file_is_reported_and_rebuilt(
    tiny_models, fresh_cache, count_calls, caplog, damage, phrase
):
    model = tiny_models["gpt2"]
    first = extract(model)
    want = first["act"].values
    path = cache_store.cache_path(first.attrs["cache_key"])
    first.close()
    damage(path)
    calls = count_calls(model.module("block", 0))
    with caplog.at_level(logging.WARNING, logger="mechwidgets"):
        again = extract(model)
    assert len(calls) == 2  # rebuilt: two batches ran again
    [record] = caplog.records
    assert phrase in record.getMessage() and "\n" not in record.getMessage()
    np.testing.assert_array_equal(again["act"].values, want)
    calls.clear()
    extract(model)
    assert calls == []  # the rebuilt file is trusted again


def test_key_covers_what_changes_the_activations(tiny_models, fresh_cache):
    model = tiny_models["llama"]
    base = {"components": ["resid"], "cache": True}
    keys = {
        mw.extract(model, TEXTS, **base).attrs["cache_key"],
        mw.extract(model, TEXTS, token="mean", **base).attrs["cache_key"],
        mw.extract(model, TEXTS, layers=[0], **base).attrs["cache_key"],
        mw.extract(model, TEXTS[:3], **base).attrs["cache_key"],
        mw.extract(model, TEXTS, positions=[0, 1, 0, 2], **base).attrs["cache_key"],
        mw.extract(tiny_models["qwen2"], TEXTS, **base).attrs["cache_key"],
    }
    assert len(keys) == 6
    assert len(list(fresh_cache.glob("*.nc"))) == 6


def test_uncached_cube_stays_out_of_the_cache(tiny_models, fresh_cache):
    cube = mw.extract(tiny_models["bert"], TEXTS, components=["attn"], cache=False)
    assert not fresh_cache.exists()
    assert cube["act"].shape == (4, 2, 1, 32)


def test_cli_lists_and_clears(tiny_models, fresh_cache, capsys):
    cube = extract(tiny_models["gpt_neox"])
    assert main(["cache", "list"]) == 0
    listing = capsys.readouterr().out
    assert cube.attrs["cache_key"] in listing and "GPTNeoXForCausalLM" in listing
    assert "4x2x2x32" in listing and str(fresh_cache) in listing
    assert main(["cache", "clear"]) == 0
    assert "removed 1 file(s)" in capsys.readouterr().out
    assert list(fresh_cache.iterdir()) == []
    main(["cache", "list"])
    assert "no cached cubes" in capsys.readouterr().out


def test_cli_reports_errors_in_one_line(tmp_path, monkeypatch, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    monkeypatch.setenv("MECHWIDGETS_CACHE", str(not_a_folder))
    assert main(["cache", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mechinterp: error: cache folder") and err.count("\n") == 1
    assert "Traceback" not in err


def test_editing_weights_after_loading_never_reuses_a_stale_cube(fresh_cache, count_calls):
    model = load_model("toy-grammar")
    first = mw.extract(model, ["the dog near the cars"], layers=[1], components=["mlp"])
    before = first["act"].values.copy()
    calls = count_calls(model.module("block", 0))
    with torch.no_grad():  # an in-place edit, as when planting a neuron
        model.module("mlp_out_proj", 1).weight.mul_(2.0)
    second = mw.extract(model, ["the dog near the cars"], layers=[1], components=["mlp"])
    assert len(calls) == 1  # the edit changed the key, so the model ran again
    assert not np.allclose(second["act"].values, before)
    assert model.identity.startswith("zoo:toy-grammar@") and "+weights:" in model.identity
