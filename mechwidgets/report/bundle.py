"""Artifact bundles: one folder that says what was run, on what, and what came out.

``write_bundle(result, path)`` (what ``ActionResult.to_bundle`` calls) writes

- ``artifacts.json``: the RunSpec (or the action's params), package versions, git commit,
  model and data hashes, seed and timings: enough for ``mechinterp run`` to re-run it;
- ``metrics.json``: the verdict, ``result.summary()`` and the tidy table as records;
- ``predictions.parquet``: per-sample predictions;
- ``activations_index.json``: which cube files, keys and shapes the numbers came from;
- ``charts/NAME.vl.json``, ``.png`` and ``.svg`` for every chart in ``result.charts()``;
- ``report.html``: one self-contained page (Vega inlined) that renders offline.

The folder is built beside the target and renamed into place, so a failure never leaves a
half bundle. ``path`` may also be any fsspec URL (``s3://bucket/runs/demo``; credentials
from the environment, never written into the bundle): the bundle is built in a local
temporary folder and uploaded with ``artifacts.json`` last (and, on replacement, removed
first), so a reader never takes a half-uploaded bundle for a whole one.

Nothing a user wrote is deleted: an existing folder is replaced only when it
holds exactly a bundle of the same action (anything else is a one-line error offering a
free name). Writers of one folder take turns (a lock beside it), and what a killed writer
left (a half-built ``.NAME.tmp-*`` folder, or the previous bundle in ``.NAME.old-*`` when
the kill fell between the two renames of a replacement) is cleaned up or restored by the
next write or read of that folder.

>>> write_bundle(result, "runs/demo")
PosixPath('runs/demo')
>>> read_artifacts("runs/demo")["spec"]["action"]["name"]
'detect'
>>> write_bundle(result, "s3://bucket/runs/demo")  # AWS_* variables give the credentials
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import vl_convert

from mechwidgets.core import locks
from mechwidgets.core.errors import MechError
from mechwidgets.extract.store import redact

log = logging.getLogger("mechwidgets")

BUNDLE_FORMAT = "mechwidgets-bundle"
BUNDLE_VERSION = 1
ARTIFACTS = "artifacts.json"
#: what a bundle folder holds (charts/ holds only chart files); anything else is the user's
BUNDLE_FILES = frozenset(
    {ARTIFACTS, "metrics.json", "predictions.parquet", "activations_index.json", "report.html"}
)
CHARTS = "charts"
CHART_SUFFIXES = (".vl.json", ".png", ".svg")
#: report key -> distribution name, for the versions recorded in artifacts.json
PACKAGES = {
    "mechwidgets": "mechwidgets",
    "torch": "torch",
    "transformers": "transformers",
    "nnsight": "nnsight",
    "xarray": "xarray",
    "numpy": "numpy",
    "sklearn": "scikit-learn",
    "pandas": "pandas",
    "altair": "altair",
}


class BundleError(MechError, ValueError):
    """A bundle cannot be written to, or read from, the given path."""


def write_bundle(result: Any, path: str | Path) -> Path | str:
    """Write ``result`` (an ``ActionResult``) as a bundle folder at ``path``, atomically.

    Parameters
    ----------
    result : the action result to save.
    path : the bundle folder (``~`` is expanded) or an fsspec URL; it must not exist, be
        empty, or hold exactly a bundle of the same action, which is then replaced.

    Returns
    -------
    The bundle folder.

    Raises
    ------
    BundleError
        When the folder holds anything else, or cannot be written: one line, before any
        file is touched.
    """
    if is_url(path):
        return _write_remote(result, str(path))
    path = Path(check_target(path, result.action))  # a local folder: URLs went above
    with _writer_lock(path):
        _recover(path)
        _check(path, result.action)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
        except OSError as exc:
            raise _unwritable(path, exc) from None
        try:
            _fill(tmp, result)
            _swap(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path


def read_artifacts(path: str | Path) -> dict[str, Any]:
    """The ``artifacts.json`` of a bundle, given the folder or the file itself (a path or
    an fsspec URL).

    A bundle left aside by an interrupted replacement is restored first.
    """
    if is_url(path):
        url = str(path).rstrip("/")
        remote = url if url.endswith(ARTIFACTS) else f"{url}/{ARTIFACTS}"
        try:
            with fsspec.open(remote, "rt") as f:
                return _artifacts(f.read(), remote)
        except FileNotFoundError:
            raise BundleError(f"no {ARTIFACTS} at {redact(url)}; pass a bundle's URL") from None
        except OSError as exc:
            raise BundleError(f"cannot read {redact(remote)} ({exc})") from None
    path = Path(path).expanduser()
    file = path / ARTIFACTS if path.is_dir() else path
    folder = path.parent if path.name == ARTIFACTS else path
    if not file.is_file() and _leftovers(folder, "old"):
        recover(folder)
        file = folder / ARTIFACTS
    if not file.is_file():
        raise BundleError(f"no {ARTIFACTS} at {path}; pass a bundle folder or its {ARTIFACTS}")
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read {file} ({exc}); pass a bundle's {ARTIFACTS}") from None
    return _artifacts(text, file)


def _artifacts(text: str, file: str | Path) -> dict[str, Any]:
    """Parsed ``artifacts.json`` text, checked to be a bundle's."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(
            f"{redact(file)} is not valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{redact(file)} is not a mechwidgets bundle's {ARTIFACTS}")
    return data


def is_url(path: str | Path) -> bool:
    """Whether ``path`` is a URL (``scheme://...``) rather than a local path."""
    return "://" in str(path)


def _write_remote(result: Any, url: str) -> str:
    """:func:`write_bundle` to an fsspec URL: built locally, uploaded, artifacts last."""
    fs, root = fsspec.core.url_to_fs(url)
    _check_remote(url, result.action)
    with tempfile.TemporaryDirectory(prefix="mechwidgets-bundle-") as tmp:
        _fill(Path(tmp), result)
        files = sorted(str(p.relative_to(tmp)) for p in Path(tmp).rglob("*") if p.is_file())
        try:
            if fs.exists(root):
                if fs.exists(f"{root}/{ARTIFACTS}"):  # first: no longer read as a bundle
                    fs.rm_file(f"{root}/{ARTIFACTS}")
                fs.rm(root, recursive=True)
            for name in sorted(files, key=lambda n: n == ARTIFACTS):  # artifacts.json last
                fs.put_file(str(Path(tmp) / name), f"{root}/{name}")
        except OSError as exc:
            raise BundleError(f"cannot write the bundle {redact(url)} ({exc})") from None
    return url


def _check_remote(url: str, action: str | None) -> None:
    """:func:`check_target` for a URL: absent, or holding only a bundle of ``action``."""
    fs, root = fsspec.core.url_to_fs(url)
    try:
        if not fs.exists(root):
            return
        if fs.isfile(root):
            raise BundleError(f"{redact(url)} is a file; give a folder URL for the bundle")
        names = sorted(str(p)[len(root) :].lstrip("/") for p in fs.find(root))
    except OSError as exc:
        raise BundleError(f"cannot reach {redact(url)} ({exc}); check the URL") from None
    foreign = [
        n
        for n in names
        if n not in BUNDLE_FILES
        and not (n.startswith(f"{CHARTS}/") and n.count("/") == 1 and n.endswith(CHART_SUFFIXES))
    ]
    if foreign:
        raise BundleError(
            f"{redact(url)} holds files that are not part of a bundle ({', '.join(foreign[:5])}),"
            " which a new bundle would delete; choose another URL, or move them"
        )
    old = read_artifacts(url).get("action") if ARTIFACTS in names else None
    if action is not None and old is not None and old != action:
        raise BundleError(
            f"{redact(url)} holds a bundle of '{old}', not '{action}'; choose another URL"
        )


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a folder (or URL) holding a mechwidgets bundle's ``artifacts.json``."""
    try:
        read_artifacts(path)
    except BundleError:
        return False
    return is_url(path) or Path(path).is_dir()


def to_jsonable(obj: Any) -> Any:
    """``obj`` with numpy, pandas and path values made JSON-native; NaN and inf become None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, (dt.datetime, dt.date, pd.Timestamp)):
        return obj.isoformat()
    if obj is pd.NA or obj is pd.NaT:
        return None
    # anything else (a Path, an enum, a selector) is recorded by its readable form
    return str(obj)


def dumps(obj: Any) -> str:
    """Strict JSON (no NaN tokens) of :func:`to_jsonable` ``(obj)``, indented."""
    return json.dumps(to_jsonable(obj), indent=2, allow_nan=False)


def check_target(path: str | Path, action: str | None = None) -> Path | str:
    """Raise a one-line BundleError unless a bundle may be written at ``path``; return it
    with ``~`` expanded. Call it before the work, so a bad folder fails fast.

    Parameters
    ----------
    path : the bundle folder to be.
    action : the action of the result to write; a folder holding another action's bundle
        is refused (None: any bundle may be replaced).
    """
    if is_url(path):
        _check_remote(str(path), action)
        return str(path)
    path = Path(path).expanduser()
    if _leftovers(path, "old") or _leftovers(path, "tmp"):
        recover(path)
    _check(path, action)
    return path


def recover(path: str | Path) -> Path | None:
    """Tidy what a killed writer left beside bundle folder ``path``: a half-built
    ``.NAME.tmp-*`` folder is removed; the previous bundle, moved to ``.NAME.old-*`` by a
    replacement killed before it finished, is renamed back (or, when the replacement did
    finish, removed). Returns the restored folder, or None.

    Raises
    ------
    BundleError
        When a leftover cannot be moved (a read-only folder): one line naming it.
    """
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        return None
    with _writer_lock(path):
        return _recover(path)


def _recover(path: Path) -> Path | None:
    """:func:`recover` with the folder's writer lock already held."""
    olds = sorted(_leftovers(path, "old"), key=lambda p: p.stat().st_mtime_ns)
    try:
        for tmp in _leftovers(path, "tmp"):  # every writer holds the lock, so its writer died
            shutil.rmtree(tmp)
        restored = None
        if olds and not path.exists():
            restored = olds.pop()
            restored.rename(path)
            log.warning(
                "mechwidgets: restored bundle %s from %s, left by an interrupted replacement",
                path,
                restored.name,
            )
        for old in olds:  # the replacement finished; this was checked to be only a bundle
            shutil.rmtree(old)
    except OSError as exc:
        raise BundleError(
            f"cannot tidy what an interrupted write left beside {path} ({exc.strerror}); "
            f"a folder named .{path.name}.old-* holds the previous bundle: rename it back"
        ) from None
    return path if restored else None


def _leftovers(path: Path, kind: str) -> list[Path]:
    parent = path.parent
    return list(parent.glob(f".{path.name}.{kind}-*")) if parent.is_dir() else []


#: bundle folders whose writer lock this thread holds (a read inside a write must not wait)
_HELD = threading.local()


@contextmanager
def _writer_lock(path: Path) -> Iterator[None]:
    """Writers of one bundle folder take turns; a killed one's lock is freed by the OS."""
    key = path.absolute()
    held = _HELD.__dict__.setdefault("paths", set())
    if key in held:
        yield
        return
    with ExitStack() as stack:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(locks.hold(path.parent / f".{path.name}.lock"))
        except OSError as exc:
            raise _unwritable(path, exc) from None
        held.add(key)
        stack.callback(held.discard, key)
        yield


def _check(path: Path, action: str | None) -> None:
    """The one-line refusal for ``path``, if any (see :func:`check_target`)."""
    if path.is_file():
        raise BundleError(f"{path} is a file; give a folder path for the bundle")
    if path.is_dir() and any(path.iterdir()):
        free = _free_name(path)
        if not is_bundle(path):
            raise BundleError(
                f"{path} exists and is not a mechwidgets bundle; write to {free} or choose "
                "an empty folder"
            )
        foreign = _foreign(path)
        if foreign:
            raise BundleError(
                f"{path} holds files that are not part of its bundle ({', '.join(foreign)}), "
                f"which a new bundle would delete; write to {free}, or move them out"
            )
        old = read_artifacts(path).get("action")
        if action is not None and old != action:
            raise BundleError(
                f"{path} holds a bundle of '{old}', not '{action}'; write this result to {free}"
            )
    ancestor = next(p for p in (path, *path.parents) if p.exists())
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise BundleError(
            f"cannot write the bundle {path}: {ancestor} is not a writable folder; "
            "choose another output folder"
        )


def _foreign(path: Path) -> list[str]:
    """Names in bundle folder ``path`` that a bundle does not hold (the user's files)."""
    names = []
    for entry in sorted(path.iterdir()):
        if entry.name == CHARTS and entry.is_dir():
            names += [
                f"{CHARTS}/{c.name}"
                for c in sorted(entry.iterdir())
                if not (c.is_file() and c.name.endswith(CHART_SUFFIXES))
            ]
        elif entry.name not in BUNDLE_FILES or not entry.is_file():
            names.append(entry.name + ("/" if entry.is_dir() else ""))
    return names


def _free_name(path: Path) -> Path:
    """``path`` with the first ``-2``, ``-3``, ... suffix that names nothing yet."""
    n = 2
    while path.with_name(f"{path.name}-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}-{n}")


def _unwritable(path: Path, exc: OSError) -> BundleError:
    return BundleError(
        f"cannot write the bundle {path} ({exc.strerror or exc}); choose a writable output folder"
    )


def _swap(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an earlier bundle there is moved aside, then removed.

    A kill between the two renames leaves the earlier bundle in ``.NAME.old-*``, which
    :func:`recover` renames back.
    """
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()  # an empty folder: nothing of the user's to keep
    if not path.exists():
        tmp.rename(path)
        return
    old = path.parent / f".{path.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    path.rename(old)
    try:
        tmp.rename(path)
    except BaseException:
        old.rename(path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fill(folder: Path, result: Any) -> None:
    from mechwidgets.report.html import report_html

    artifacts = artifacts_record(result)
    summary = result.summary()
    verdict = result.verdict()
    (folder / ARTIFACTS).write_text(dumps(artifacts))
    metrics = {
        "action": result.action,
        "verdict": verdict,
        "summary": summary,
        "table": result.table.to_dict(orient="records"),
    }
    (folder / "metrics.json").write_text(dumps(metrics))
    result.predictions.to_parquet(folder / "predictions.parquet", index=False)
    (folder / "activations_index.json").write_text(dumps(result.activations))
    # our own charts, schema-checked by tests/test_charts.py: not validated again per bundle
    specs = {name: chart.to_dict(validate=False) for name, chart in result.charts().items()}
    charts = folder / "charts"
    charts.mkdir()
    for name, spec in specs.items():
        (charts / f"{name}.vl.json").write_text(dumps(spec))
        (charts / f"{name}.svg").write_text(vl_convert.vegalite_to_svg(spec))
        (charts / f"{name}.png").write_bytes(vl_convert.vegalite_to_png(spec, scale=2))
    page = report_html(
        title=f"{result.action}: {artifacts['run_name']}",
        verdict=verdict,
        summary=to_jsonable(summary),
        table=result.table,
        charts=specs,
        artifacts=to_jsonable(artifacts),
    )
    (folder / "report.html").write_text(page)


def artifacts_record(result: Any) -> dict[str, Any]:
    """The ``artifacts.json`` content for ``result``: spec, versions, commit, hashes, seed."""
    spec = result.spec
    seed = (spec or {}).get("seed", result.params.get("seed"))
    return {
        "format": BUNDLE_FORMAT,
        "bundle_version": BUNDLE_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "action": result.action,
        "run_name": (spec or {}).get("run_name", result.action),
        "spec": spec,
        "params": result.params,
        "seed": seed,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "hashes": _hashes(result.activations),
        "timings": result.timings,
    }


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None when absent)."""
    out: dict[str, str | None] = {}
    for key, dist in PACKAGES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def git_commit() -> str | None:
    """The commit of the mechwidgets source tree, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _hashes(activations: dict[str, Any]) -> dict[str, Any]:
    """Fingerprints of the model, tokenizer and data, read from the activations index."""
    attrs = activations.get("attrs") or {}
    task = activations.get("task") or {}
    return {
        "model": attrs.get("model_identity") or attrs.get("model"),
        "tokenizer": attrs.get("tokenizer_hash"),
        "data": task.get("data_hash"),
        "cache_key": attrs.get("cache_key"),
    }
