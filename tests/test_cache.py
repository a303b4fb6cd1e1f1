"""The activation cache: keys, atomic writes, corrupt files rebuilt, and `mechinterp cache`."""

from __future__ import annotations

import logging
import os
import time

import netCDF4
import numpy as np
import pytest
import torch
from conftest import build_tiny

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


def cached(model, texts=TEXTS):
    """Extract, then close the cube; return its key and values."""
    cube = mw.extract(model, texts, components=["resid", "mlp"], batch_size=2)
    key, values = cube.attrs["cache_key"], cube["act"].values
    cube.close()
    return key, values


def zero_a_block(path):
    """Zero 256 raw bytes inside the act data, found by the second sample's bytes."""
    with netCDF4.Dataset(path) as f:
        first = np.asarray(f["act"][1]).astype(np.float32).tobytes()
    data = bytearray(path.read_bytes())
    at = data.find(first)
    assert at > 0
    data[at : at + 256] = bytes(256)
    path.write_bytes(bytes(data))


def write_nan(path):
    with netCDF4.Dataset(path, "a") as f:
        f["act"][2, 1, 0, 5] = np.nan


@pytest.mark.parametrize("damage", [zero_a_block, write_nan])
def test_changed_data_is_quarantined_and_rebuilt(
    tiny_models, fresh_cache, count_calls, caplog, damage
):
    model = tiny_models["gpt2"]
    key, want = cached(model)
    damage(cache_store.cache_path(key))
    calls = count_calls(model.module("block", 0))
    with caplog.at_level(logging.WARNING, logger="mechwidgets"):
        _, again = cached(model)
    assert len(calls) == 2  # rebuilt
    [record] = caplog.records
    assert "fails its checksum" in record.getMessage() and "quarantine" in record.getMessage()
    assert "\n" not in record.getMessage()
    np.testing.assert_array_equal(again, want)
    assert np.isfinite(again).all()
    [aside] = (fresh_cache / "quarantine").iterdir()
    assert aside.name.startswith(key)
    assert [e.status for e in cache_store.list_cache()] == ["cube", "quarantined"]
    calls.clear()
    cached(model)
    assert calls == []  # the rebuilt cube is trusted


def test_a_foreign_cube_renamed_into_a_key_is_rebuilt(
    tiny_models, fresh_cache, count_calls, caplog
):
    model = tiny_models["gpt_neox"]
    key, want = cached(model)
    other, _ = cached(model, [t + " the cat" for t in TEXTS])
    cache_store.cache_path(other).replace(cache_store.cache_path(key))
    calls = count_calls(model.module("block", 0))
    with caplog.at_level(logging.WARNING, logger="mechwidgets"):
        _, again = cached(model)
    assert len(calls) == 2
    assert "another request" in caplog.text and other in caplog.text
    np.testing.assert_array_equal(again, want)


def test_large_cubes_are_checked_block_by_block_as_read(
    tiny_models, fresh_cache, count_calls, monkeypatch, caplog
):
    from mechwidgets.core.errors import CubeError
    from mechwidgets.extract import cube as cube_mod

    monkeypatch.setattr(cube_mod, "VERIFY_ON_OPEN_BYTES", 0)  # every cube counts as large
    model = tiny_models["llama"]
    key, want = cached(model)
    write_nan(cache_store.cache_path(key))
    calls = count_calls(model.module("block", 0))
    cube = mw.extract(model, TEXTS, components=["resid", "mlp"], batch_size=2)
    assert calls == []  # opened without reading the data
    np.testing.assert_array_equal(cube["act"].sel(layer=0).values, want[:, 0])  # intact blocks
    with (
        caplog.at_level(logging.WARNING, logger="mechwidgets"),
        pytest.raises(CubeError, match="fails its checksum") as err,
    ):
        cube["act"].compute()
    assert "\n" not in str(err.value)
    assert "the next extract rebuilds it" in caplog.text
    cube.close()
    assert not cache_store.cache_path(key).exists()  # moved aside when found
    _, again = cached(model)
    assert len(calls) == 2
    np.testing.assert_array_equal(again, want)


def test_clear_leaves_a_running_extraction_alone(fresh_cache):
    key = "k" * 24
    path = cache_store.cache_path(key)
    with cache_store.claim(key), cache_store.writing(path) as tmp:
        tmp.write_bytes(b"half a cube")
        [entry] = cache_store.list_cache()
        assert (entry.status, entry.path) == ("in progress", tmp)
        assert cache_store.clear_cache() == cache_store.Cleared(removed=0, in_progress=1)
        assert tmp.read_bytes() == b"half a cube"
    assert path.read_bytes() == b"half a cube"  # renamed into place after the clear
    assert cache_store.clear_cache() == cache_store.Cleared(removed=1, in_progress=0)
    assert list(fresh_cache.iterdir()) == []


def test_stale_temp_files_are_listed_with_their_age_and_cleared(fresh_cache, capsys):
    fresh_cache.mkdir()
    stale = fresh_cache / f"{'a' * 24}.nc.tmp-99999-deadbeef"
    stale.write_bytes(b"left by a killed writer")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    [entry] = cache_store.list_cache()
    assert entry.status == "stale" and entry.age >= 7200
    assert main(["cache", "list"]) == 0
    listing = capsys.readouterr().out
    assert "stale" in listing and "2 h" in listing and stale.name in listing
    assert main(["cache", "clear"]) == 0
    assert "removed 1 file(s)" in capsys.readouterr().out
    assert list(fresh_cache.iterdir()) == []


def test_next_writer_of_a_key_removes_its_stale_temp_files(tiny_models, fresh_cache):
    model = tiny_models["gpt_neox"]
    key, _ = cached(model)
    cache_store.cache_path(key).unlink()
    stale = fresh_cache / f"{key}.nc.tmp-99999-deadbeef"
    stale.write_bytes(b"x")
    cached(model)
    assert sorted(p.name for p in fresh_cache.iterdir()) == [f"{key}.nc"]


def test_a_local_checkpoint_saved_again_in_place_gets_a_new_key(tmp_path, monkeypatch):
    from mechwidgets.models import loading

    monkeypatch.setattr(loading, "HASH_LIMIT", 0)  # keyed like a >100M-parameter model
    hf, tok = build_tiny("gpt_neox")
    folder = tmp_path / "ckpt"
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    first = load_model(str(folder)).identity
    assert "weights:" not in first  # not the weights hash: the folder's identity
    with torch.no_grad():
        hf.gpt_neox.layers[0].mlp.dense_4h_to_h.weight.mul_(2.0)
    hf.save_pretrained(folder)
    assert load_model(str(folder)).identity != first
