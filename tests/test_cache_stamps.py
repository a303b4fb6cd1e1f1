"""Verified-cube stamps: a cached cube is read whole once, not at every open, and a change
to its file after that is still caught."""

from __future__ import annotations

import logging
import os
import time

import netCDF4
import numpy as np
import pytest

import mechwidgets as mw
from mechwidgets.extract import cache as cache_store
from mechwidgets.extract import cube as cube_module

TEXTS = ["the cat sat on the mat", "a dog runs", "cats", "the red bird sits near the tree"]


@pytest.fixture
def verifications(monkeypatch, tmp_path):
    """An empty cache and a count of full-file checksum verifications."""
    monkeypatch.setenv("MECHWIDGETS_CACHE", str(tmp_path / "cubes"))
    monkeypatch.setattr(cache_store, "_OPENED", {})
    calls = []
    real = cube_module._verify_file

    def counted(*args):
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(cube_module, "_verify_file", counted)
    return calls


def extract(model):
    cube = mw.extract(model, TEXTS, components=["resid", "mlp"], batch_size=2)
    values = cube["act"].values
    cube.close()
    return cube.attrs["cache_key"], values


def age(path, seconds=60):
    """Set the file's times back, as for a cube written a while ago."""
    old = time.time_ns() - seconds * 10**9
    os.utime(path, ns=(old, old))


def corrupt(path):
    """Zero raw bytes of the second sample's act data, through an ordinary write."""
    with netCDF4.Dataset(path) as f:
        row = np.asarray(f["act"][1]).astype(np.float32).tobytes()
    data = bytearray(path.read_bytes())
    at = data.find(row)
    assert at > 0
    data[at : at + 256] = bytes(256)
    path.write_bytes(bytes(data))


def test_a_cube_is_verified_once_then_trusted_by_its_stamp(tiny_models, verifications):
    model = tiny_models["gpt_neox"]
    key, values = extract(model)  # written: not read back
    assert verifications == []
    path = cache_store.cache_path(key)
    age(path)
    extract(model)  # first open: verified whole, stamped
    assert len(verifications) == 1 and path.with_name(path.name + ".verified").exists()
    cache_store._OPENED.clear()  # as a fresh process would
    _, again = extract(model)
    assert len(verifications) == 1  # the stamp vouched for the file
    np.testing.assert_array_equal(again, values)


def test_corruption_after_a_verified_open_is_caught(tiny_models, verifications, caplog):
    model = tiny_models["gpt_neox"]
    key, values = extract(model)
    path = cache_store.cache_path(key)
    age(path)
    extract(model)  # verified and stamped, and kept open in this process
    corrupt(path)  # a write: the modification time moves on
    with caplog.at_level(logging.WARNING, logger="mechwidgets"):
        _, rebuilt = extract(model)
    assert "fails its checksum" in caplog.text
    assert list((path.parent / "quarantine").iterdir())
    np.testing.assert_allclose(rebuilt, values, rtol=1e-5)


def test_a_stamp_taken_right_after_a_write_is_not_trusted(tiny_models, verifications):
    model = tiny_models["gpt_neox"]
    key, _ = extract(model)
    extract(model)  # within RACY_NS of the write: a later write could keep the same time
    cache_store._OPENED.clear()
    extract(model)
    assert len(verifications) == 2
