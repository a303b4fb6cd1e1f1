"""The cube file: written in batches, read back lazily with every column's type intact."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from mechwidgets.core.errors import CubeError
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
