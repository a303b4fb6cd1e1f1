"""The cube file: written in batches, read back lazily with every column's type intact."""

from __future__ import annotations

import netCDF4
import numpy as np
import pytest
import xarray as xr

from mechwidgets.core.errors import CubeError
from mechwidgets.extract import cube as cube_mod
from mechwidgets.extract.cube import CubeLayout, CubeWriter, check_cube, open_cube

LAYOUT = CubeLayout(
    n_samples=5, layers=(1, 3), components=("resid", "head.2"), d_model=4, neurons=(7, 9, 11)
)
COLUMNS = {
    "sample_id": np.arange(5),
    "text": np.array(["a", "bb", "ccc", "dé", ""], dtype=object),
    "split": np.array(["train", "train", "val", "test", "test"]),
    "flag": np.array([True, False, True, True, False]),
    "score": np.linspace(0, 1, 5),
}


def test_round_trip_in_batches(tmp_path):
    rng = np.random.default_rng(0)
    act = rng.normal(size=(5, 2, 2, 4)).astype(np.float32)
    neurons = rng.normal(size=(5, 2, 3)).astype(np.float32)
    path = tmp_path / "cube.nc"
    with CubeWriter(path, LAYOUT, COLUMNS, {"model": "m", "meta": {"a": [1, 2]}, "ok": True}) as w:
        w.write(0, act[:3], neurons[:3])
        w.write(3, act[3:], neurons[3:])
    cube = open_cube(path, LAYOUT)
    assert cube.chunks["sample"]  # lazy, chunked along sample
    np.testing.assert_array_equal(cube["act"].values, act)
    np.testing.assert_array_equal(cube["neurons"].sel(neuron=9).values, neurons[:, :, 1])
    assert cube["act"].sel(layer=3, component="head.2").shape == (5, 4)
    for name, values in COLUMNS.items():
        assert cube[name].values.tolist() == values.tolist()
    assert [cube[c].dtype.kind for c in ("sample_id", "flag", "score")] == ["i", "b", "f"]
    assert cube.attrs["meta"] == '{"a": [1, 2]}' and cube.attrs["ok"] == "true"
    check_cube(cube)


def test_unfinished_and_misshapen_files_are_refused(tmp_path):
    path = tmp_path / "cube.nc"
    with pytest.raises(RuntimeError), CubeWriter(path, LAYOUT, COLUMNS, {}) as w:
        w.write(0, np.zeros((5, 2, 2, 4), np.float32), np.zeros((5, 2, 3), np.float32))
        raise RuntimeError("interrupted")
    with pytest.raises(CubeError, match="not finished"):
        open_cube(path)
    with CubeWriter(path, LAYOUT, COLUMNS, {}) as w:
        w.write(0, np.zeros((5, 2, 2, 4), np.float32), np.zeros((5, 2, 3), np.float32))
    other = CubeLayout(5, (1, 3), ("resid",), 4, (7, 9, 11))
    with pytest.raises(CubeError, match="expected"):
        open_cube(path, other)


def test_contract_check_names_the_problem():
    with pytest.raises(CubeError, match="neither 'act' nor 'neurons'"):
        check_cube(xr.Dataset({"x": ("sample", np.zeros(3))}))
    wrong = xr.Dataset({"act": (("sample", "dim"), np.zeros((3, 2)))})
    with pytest.raises(CubeError, match="expected"):
        check_cube(wrong)


def write_cube(path, act):
    layout = CubeLayout(len(act), (1, 3), ("resid", "head.2"), 4)
    with CubeWriter(path, layout, {"sample_id": np.arange(len(act))}, {}) as w:
        for start in range(0, len(act), 2):
            w.write(start, act[start : start + 2])
    return layout


def test_changed_data_fail_their_checksum_on_open(tmp_path):
    act = np.random.default_rng(1).normal(size=(5, 2, 2, 4)).astype(np.float32)
    path = tmp_path / "cube.nc"
    layout = write_cube(path, act)
    np.testing.assert_array_equal(open_cube(path, layout)["act"].values, act)
    with netCDF4.Dataset(path, "a") as f:
        f["act"][4, 1, 1, 3] = np.nan
    with pytest.raises(CubeError, match=r"fails its checksum \('act', samples from 0\)"):
        open_cube(path, layout)


def test_large_cubes_are_checked_per_block_as_read(tmp_path, monkeypatch):
    monkeypatch.setattr(cube_mod, "VERIFY_ON_OPEN_BYTES", 0)
    monkeypatch.setattr(cube_mod, "CHUNK_BYTES", 2 * 2 * 2 * 4 * 4)  # two samples per block
    act = np.random.default_rng(2).normal(size=(5, 2, 2, 4)).astype(np.float32)
    path = tmp_path / "cube.nc"
    layout = write_cube(path, act)
    with netCDF4.Dataset(path, "a") as f:
        f["act"][3, 1, 0, 0] = 0.0  # block 1 (samples 2-3), layer 3, resid
    found = []
    cube = open_cube(path, layout, on_corrupt=lambda p, message: found.append(message))
    assert cube["act"].chunks == ((2, 2, 1), (1, 1), (1, 1), (4,))
    np.testing.assert_array_equal(cube["act"].sel(layer=1).values, act[:, 0])  # intact
    np.testing.assert_array_equal(cube["act"].sel(component="head.2").values, act[:, :, 1])
    with pytest.raises(CubeError, match=r"samples from 2\)"):
        cube["act"].sel(layer=3, component="resid").compute()
    assert len(found) == 1 and "\n" not in found[0]


def test_writer_refuses_rows_out_of_order_or_missing(tmp_path):
    act = np.zeros((5, 2, 2, 4), np.float32)
    layout = CubeLayout(5, (1, 3), ("resid", "head.2"), 4)
    with (
        pytest.raises(ValueError, match="in order"),
        CubeWriter(tmp_path / "a.nc", layout, {}, {}) as w,
    ):
        w.write(2, act[2:])
    with (
        pytest.raises(ValueError, match="3 of 5 rows"),
        CubeWriter(tmp_path / "b.nc", layout, {}, {}) as w,
    ):
        w.write(0, act[:3])
    with pytest.raises(CubeError, match="not finished"):
        open_cube(tmp_path / "b.nc")


def test_a_slice_with_some_nan_activations_fails_in_one_line_naming_it():
    import mechwidgets as mw
    from mechwidgets.probes.synthetic import planted_cube

    assert cube_mod.check_finite(np.ones((2, 3)), "x").shape == (2, 3)
    cube = planted_cube({"number": {(1, "resid"): 3.0}}, n_samples=200, n_layers=2, seed=1)
    act = cube["act"].values.copy()
    act[[3, 7], 1, 0, :2] = [np.nan, np.inf]  # layer 1, resid: 4 bad values
    cube["act"] = (cube["act"].dims, act)
    with pytest.raises(CubeError) as info:
        mw.detect(cube, label="number", seeds=1, permutations=20, resamples=100)
    message = str(info.value)
    assert message.startswith("activations at layer 1, component 'resid' hold 4 NaN/inf")
    assert "\n" not in message
