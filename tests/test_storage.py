"""Object storage: Zarr cubes and bundles on s3:// through a local S3 server.

The server is moto's ``ThreadedMotoServer`` on 127.0.0.1 (loopback only), started by the
test as s3fs's own tests do. Credentials reach s3fs only through the environment; the
test checks that none of them lands in a cube, a bundle, the store index or a log.
"""

from __future__ import annotations

import json
import logging

import fsspec
import numpy as np
import pytest
import xarray as xr

import mechwidgets as mw
from mechwidgets.actions.detect import detect
from mechwidgets.cli import main
from mechwidgets.data.catalog import get_task
from mechwidgets.extract.cache import STORES
from mechwidgets.extract.store import redact
from mechwidgets.models.loading import load_model
from mechwidgets.report.bundle import BundleError, read_artifacts

moto_server = pytest.importorskip("moto.server", reason="tests/test_storage.py needs moto[server]")
s3fs = pytest.importorskip("s3fs", reason="tests/test_storage.py needs s3fs")

KEY_ID, SECRET = "AKIAMECHWIDGETSTEST7", "mw-test-secret-Zq9vK2xL"
BUCKET = "mw-cubes"
BATCH, N = 16, 80
SMALL = {"controls": ["label_shuffle"], "seeds": 1, "permutations": 20, "resamples": 100}


@pytest.fixture(scope="module")
def s3():
    """A fresh S3 server on loopback, with credentials and endpoint in the environment."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server logs every request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = pytest.MonkeyPatch()
    env.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    env.setenv("AWS_ENDPOINT_URL_S3", f"http://{host}:{port}")
    env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()
    fs = fsspec.filesystem("s3")
    fs.mkdir(BUCKET)
    yield fs
    env.undo()
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-grammar"), get_task("subject_number", n=N)


def everything_in(fs, prefix: str) -> bytes:
    return b"".join(fs.cat_file(p) for p in fs.find(prefix))


def test_cube_round_trip_through_s3(s3, toy, cache, tmp_path, count_calls, caplog, capsys):
    model, task = toy
    url = f"s3://{BUCKET}/cubes/toy.zarr"
    caplog.set_level(logging.DEBUG, logger="mechwidgets")
    local = mw.extract(model, task, batch_size=BATCH, cache=False)
    remote = mw.extract(model, task, batch_size=BATCH, store=url)
    xr.testing.assert_identical(remote, local)
    assert remote.encoding["source"] == url
    assert len(s3.ls(f"{BUCKET}/cubes/toy.zarr/act/c")) == N // BATCH  # a shard per batch

    calls = count_calls(model.module("block", 0))
    again = mw.extract(model, task, batch_size=BATCH, store=url)  # read back, no forward pass
    assert calls == [] and np.array_equal(again["act"].values, local["act"].values)

    cached = mw.extract(model, task, batch_size=BATCH)  # the cache index finds the S3 cube
    assert calls == [] and cached.encoding["source"] == url

    back = mw.convert_cube(url, tmp_path / "toy.nc")  # and offline as netCDF
    np.testing.assert_array_equal(mw.open_cube(back)["act"].values, local["act"].values)

    assert main(["cache", "list"]) == 0  # the cache index knows the remote cube
    [line] = [line for line in capsys.readouterr().out.splitlines() if url in line]
    assert " zarr " in line and "toy-grammar" in line

    stored = everything_in(s3, f"{BUCKET}/cubes") + (cache / STORES).read_bytes()
    logged = caplog.text.encode()
    for secret in (KEY_ID, SECRET):
        assert secret.encode() not in stored and secret.encode() not in logged
        assert secret not in json.dumps({k: str(v) for k, v in remote.attrs.items()})


def test_bundle_round_trip_through_s3(s3, toy, cache):
    model, task = toy
    cube = mw.extract(model, task, batch_size=BATCH, cache=False)
    result = detect(cube, label="subject_number", **SMALL)
    url = f"s3://{BUCKET}/runs/detect"
    assert result.to_bundle(url) == url
    artifacts = read_artifacts(url)
    assert artifacts["action"] == "detect"
    names = {p.split("/runs/detect/", 1)[1] for p in s3.find(f"{BUCKET}/runs/detect")}
    assert {"artifacts.json", "metrics.json", "predictions.parquet", "report.html"} <= names
    metrics = json.loads(s3.cat_file(f"{BUCKET}/runs/detect/metrics.json"))
    stored = [(r["layer"], r["component"], r["control"], r["score"]) for r in metrics["table"]]
    table = result.table
    assert stored == list(
        zip(table.layer, table.component, table.control, table.score, strict=True)
    )

    result.to_bundle(url)  # a bundle of the same action is replaced
    assert read_artifacts(url)["action"] == "detect"
    s3.pipe_file(f"{BUCKET}/runs/mine/notes.txt", b"keep me")
    with pytest.raises(BundleError, match="not part of a bundle"):
        result.to_bundle(f"s3://{BUCKET}/runs/mine")
    assert s3.cat_file(f"{BUCKET}/runs/mine/notes.txt") == b"keep me"

    everything = everything_in(s3, f"{BUCKET}/runs")
    for secret in (KEY_ID, SECRET):
        assert secret.encode() not in everything


def test_run_spec_and_the_cli_write_their_bundles_to_s3(s3, cache, tmp_path, capsys):
    import yaml

    from mechwidgets.runner import run_spec

    spec = {
        "dataset": {"name": "subject_number", "n": N},
        "extraction": {"model_name": "toy-grammar", "selectors": ["resid:all"]},
        "action": {"name": "detect", "params": {"label": "subject_number", "seeds": 1,
                                                 "permutations": 20, "resamples": 100}},
        "controls": ["label_shuffle"],
    }  # fmt: skip
    url = f"s3://{BUCKET}/runs/spec"
    result = run_spec(spec, output_dir=url)
    assert result.spec["output_dir"] == url
    assert read_artifacts(url)["spec"]["output_dir"] == url
    assert s3.exists(f"{BUCKET}/runs/spec/report.html")

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**spec, "output_dir": f"s3://{BUCKET}/runs/cli"}))
    assert main(["run", str(config)]) == 0  # the config's output_dir
    assert read_artifacts(f"s3://{BUCKET}/runs/cli")["action"] == "detect"
    assert main(["run", str(config), "--out", f"s3://{BUCKET}/runs/out"]) == 0
    assert f"bundle: s3://{BUCKET}/runs/out (open s3://{BUCKET}/runs/out/report.html)" in (
        capsys.readouterr().out
    )
    assert read_artifacts(f"s3://{BUCKET}/runs/out")["action"] == "detect"
    s3.pipe_file(f"{BUCKET}/runs/mine/notes.txt", b"keep me")
    with pytest.raises(BundleError, match="not part of a bundle"):  # refused before the work
        run_spec(spec, output_dir=f"s3://{BUCKET}/runs/mine")


def test_credentials_in_a_url_are_redacted():
    assert redact(f"s3://{KEY_ID}:{SECRET}@{BUCKET}/x.zarr") == f"s3://{BUCKET}/x.zarr"
    assert redact("/data/cube.zarr") == "/data/cube.zarr"
