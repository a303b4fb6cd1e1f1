"""The config-driven runner: RunSpec -> task -> model -> cube -> action -> result -> bundle.

Every entry point (the ``mechinterp`` command, the ``%mechinterp`` magics, Python) runs
through :func:`run_spec`, so one config gives the same numbers wherever it is run. A
bundle's ``artifacts.json`` is itself a config: :func:`run_bundle` re-runs it, and
:func:`metrics_difference` says whether the numbers came out the same.

Nothing expensive runs on bad input: the RunSpec is checked whole when parsed; then, before
the model loads, the output folder (``~`` expanded) and the cache folder must take files,
a re-run's ``metrics.json`` must be readable, and the probes' draws must fit in memory
(:mod:`mechwidgets.core.budget`, again with the model's width before extraction); texts
the model cannot see are refused when extraction starts, before any forward pass.

>>> result = run_spec("configs/feature_detection_toy.yaml")
>>> again = run_bundle("runs/feature_detection_toy", output_dir="runs/again")
>>> metrics_difference(again, "runs/feature_detection_toy")
0.0
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields as dataclass_fields
from dataclasses import replace
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from mechwidgets.actions.base import ActionResult, RunContext, run_action
from mechwidgets.cluster import connect, using
from mechwidgets.core.budget import check_memory, protocol_bytes
from mechwidgets.core.errors import SpecError
from mechwidgets.core.params import ProtocolParams
from mechwidgets.core.registry import Needs, action_needs, check_params
from mechwidgets.core.specs import DatasetSpec, ExtractionSpec, RunSpec
from mechwidgets.data.catalog import PromptPairs
from mechwidgets.data.positions import position_key
from mechwidgets.data.tasks import Task
from mechwidgets.extract.cache import cache_dir
from mechwidgets.extract.cube import activations_index
from mechwidgets.models.card import ModelCard, find_card

if TYPE_CHECKING:
    from mechwidgets.models.loading import Model

#: a progress callback: (fraction done, stage name)
Progress = Callable[[float, str], None]
#: a bundle's record (``report.bundle.ARTIFACTS``, spelled here: that module imports the
#: chart stack, which telling a bundle from a config must not)
_ARTIFACTS = "artifacts.json"
#: fraction of a typical run done when each stage starts (extraction dominates)
STAGE_START = {"task": 0.0, "model": 0.05, "extract": 0.15, "action": 0.7}
#: file types a dataset name may point to (anything else is a built-in task name)
DATA_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
#: the demo: detect on the embedded toy model, embedding + every layer x stream, two
#: controls. Subject animacy read at the verb, tokens after the subject: attention must
#: carry it there, so the residual curve rises with depth (measured, n=800, 5 seeds:
#: embedding 0.49, layer 0 0.66, layers 1-3 1.00; both controls 0.46-0.58 everywhere).
DEMO_SPEC: dict[str, Any] = {
    "run_name": "demo",
    "seed": 0,
    "dataset": {"name": "animacy", "n": 800},
    "extraction": {
        "model_name": "toy-grammar",
        "selectors": ["resid:embed,all", "attn:all", "mlp:all"],
    },
    "action": {"name": "detect", "params": {"label": "animacy"}},
    "controls": ["label_shuffle", "control_task"],
    "output_dir": "runs/demo",
}


def load_spec(source: RunSpec | dict[str, Any] | str | Path) -> RunSpec:
    """A RunSpec from a RunSpec, a dict, a YAML/JSON config path, or a bundle.

    Parameters
    ----------
    source : a spec; a config dict (nested or flat); a ``.yaml``/``.yml`` path; a ``.json``
        config; a bundle folder or its ``artifacts.json``.

    Returns
    -------
    The validated spec (bad fields raise a one-line ``SpecError``).
    """
    if isinstance(source, RunSpec):
        return source
    if isinstance(source, dict):
        return RunSpec.from_dict(source)
    path = Path(source)
    if not is_bundle_source(path):
        return RunSpec.from_file(path)
    from mechwidgets.report.bundle import read_artifacts

    spec = read_artifacts(path).get("spec")
    if spec is None:
        raise SpecError(
            f"bundle {path} was written from Python, not from a RunSpec, so it cannot be re-run"
        )
    return RunSpec.from_dict(spec)


def resolve_task(dataset: DatasetSpec) -> Task:
    """The task a DatasetSpec names: a file of the user's, or a built-in task."""
    from mechwidgets.data.catalog import get_task

    path = Path(dataset.name).expanduser()
    if path.suffix in DATA_SUFFIXES or path.is_file():
        return Task.from_file(
            path,
            text=dataset.text,
            labels=dataset.labels or None,
            split=dataset.split,
            position=dataset.position,
            word_types=dataset.word_types,
            groups=dataset.groups,
            seed=dataset.seed,
        )
    return get_task(dataset.name, n=dataset.n, seed=dataset.seed)


def resolve_pairs(dataset: DatasetSpec) -> PromptPairs:
    """The clean/corrupt prompt pairs a DatasetSpec names (a built-in task with pairs)."""
    from mechwidgets.data.catalog import get_task_pairs

    if Path(dataset.name).suffix in DATA_SUFFIXES:
        raise SpecError(
            f"this action patches prompt pairs, which a data file does not give; use the "
            f"built-in pairs (dataset name subject_number) or call it from Python with "
            f"clean= and corrupt= ({dataset.name})"
        )
    return get_task_pairs(dataset.name, n=dataset.n, seed=dataset.seed)


def extraction_for(ex: ExtractionSpec, needs: Needs) -> ExtractionSpec:
    """The config's extraction widened to what the action reads (heads, neurons), so the
    runner's one cube serves the action and it extracts nothing itself."""
    have = {str(s).partition(":")[0] for s in ex.selectors}
    extra = [f"{c}:all" for c in needs.components if c not in have]
    return ex.model_copy(
        update={"selectors": [*ex.selectors, *extra], "neurons": ex.neurons or needs.neurons}
    )


def run_spec(
    source: RunSpec | dict[str, Any] | str | Path,
    output_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> ActionResult:
    """Run one config end to end and return the action's result.

    Parameters
    ----------
    source : anything :func:`load_spec` takes.
    output_dir : write the bundle here (overrides the spec's ``output_dir``); with neither,
        no bundle is written.
    progress : called as ``progress(fraction_done, stage)`` when each stage starts and once
        with ``(1.0, "done")`` at the end (the Launcher's progress bar).

    Returns
    -------
    The result, with ``spec``, ``timings`` (seconds per stage) and ``activations`` filled.
    """
    spec = load_spec(source)
    needs = action_needs(spec.action.name, spec.action.params)  # refuses bad params first
    out = output_dir if output_dir is not None else spec.output_dir
    if out is not None:  # checked before the work, not after it
        out = output_folder(out, spec.action.name)
        spec = spec.model_copy(update={"output_dir": str(out)})
    ex = extraction_for(spec.extraction, needs)
    if ex.cache and needs.cube:
        check_writable(cache_dir(), "the activation cache", "set MECHWIDGETS_CACHE")
    client = connect(spec.compute.scheduler) if spec.compute else None  # before the work
    timings: dict[str, float] = {}
    if "torch" in sys.modules:  # actions seed their own draws; this covers any torch RNG use
        sys.modules["torch"].manual_seed(spec.seed)  # (a model loaded here seeds it again)
    with _timed(timings, "task", progress):
        pairs = resolve_pairs(spec.dataset) if needs.pairs else None
        task = resolve_task(spec.dataset) if pairs is None else pairs.to_task()
        others = [resolve_task(d) for d in spec.tasks]  # compare across tasks
    check_budget(spec, task)
    tasks = [task, *others] if needs.cube else []
    build = partial(_load, ex, spec.seed)
    with _timed(timings, "model", progress):
        # With every cube cached, the model's card finds them and the model is built only
        # if the action reads it (models/card.py): no torch, no transformers.
        card = (
            find_card(ex.model_name, ex.revision, ex.dtype or "float32")
            if tasks and cacheable(ex)
            else None
        )
        found = [] if card is None else [_cached(card, t, ex) for t in tasks]
        hit = bool(found) and all(c is not None for c in found)
        model = None if hit else build()
    check_budget(spec, task, card if model is None else model)
    with _timed(timings, "extract", progress):
        cubes = found if model is None else _extract_all(model, tasks, ex, progress)
    cube = cubes[0] if cubes else None
    context = ModelOnDemand(
        build=build if model is None else None,
        cube=cubes if others else cube,
        model=model,
        task=task if pairs is None else pairs,
        params=dict(spec.action.params),
        controls=None if spec.controls is None else [c.name for c in spec.controls],
        seed=spec.seed,
        spec=spec.to_dict(),
    )
    with _timed(timings, "action", progress), using(client):
        result = run_action(spec.action.name, context)
    if client is not None:
        client.close()
    activations = {
        **(activations_index(cube) if cube is not None else {}),
        **result.activations,  # the action's own record of the cube it read wins
        "task": {"name": task.name, "n": len(task), "data_hash": task_hash(task)},
    }
    if others:
        activations["tasks"] = [
            {"name": t.name, "n": len(t), "data_hash": task_hash(t)} for t in [task, *others]
        ]
    # a new result: the action's is a frozen value
    result = replace(result, timings={**result.timings, **timings}, activations=activations)
    if out is not None:
        from mechwidgets.report.bundle import write_bundle

        write_bundle(result, out)
    if progress is not None:
        progress(1.0, "done")
    return result


def _extract_all(
    model: Model, tasks: list[Task], ex: ExtractionSpec, progress: Progress | None
) -> list[xr.Dataset]:
    """One cube per task, as the config's extraction asks."""
    from mechwidgets.extract.extractor import extract

    return [
        extract(
            model,
            t,
            selectors=ex.selectors,
            token=ex.token,
            batch_size=ex.batch_size,
            cache=ex.cache,
            neurons=ex.neurons,
            unseen=ex.unseen,
            progress=_batch_progress(progress, k, len(tasks)),
        )
        for k, t in enumerate(tasks)
    ]


def cacheable(ex: ExtractionSpec) -> bool:
    """Whether the extraction's cube may be found from the model's card: it is cached and
    the model is loaded here (a remote model's identity is its hub id and revision)."""
    return ex.cache and not ex.remote


def _cached(card: ModelCard, task: Task, ex: ExtractionSpec) -> xr.Dataset | None:
    """The cached cube of ``task`` for the model of ``card``, as ``extract`` would give it."""
    from mechwidgets.extract.request import cached_cube

    return cached_cube(card, task, selectors=ex.selectors, token=ex.token, neurons=ex.neurons)


def _load(ex: ExtractionSpec, seed: int) -> Model:
    """The config's model, with torch's generator seeded first."""
    import torch

    from mechwidgets.models.loading import load_model

    torch.manual_seed(seed)
    return load_model(
        ex.model_name, revision=ex.revision, device=ex.device, dtype=ex.dtype, remote=ex.remote
    )


class ModelOnDemand(RunContext):
    """A RunContext whose ``model`` is built the first time an action reads it.

    The runner's context. When every cube was found in the cache without the model, an
    action that reads only its cube (``detect``) never imports torch, and one that reads
    the model (``collapse`` with recovery, ``localize``) gets the same model, seeded the
    same, as if it had been loaded first; otherwise it holds the model already loaded.
    Copies made by :meth:`evolve` share the one build (``dataclasses.replace`` would read
    ``model`` and so build it).
    """

    def __init__(self, build: Callable[[], Model] | None = None, **fields: Any) -> None:
        self._build: Callable[[], Model] | None = None if build is None else cache(build)
        self._model: Model | None = None
        super().__init__(**fields)

    def evolve(self, **changes: Any) -> RunContext:
        """A copy with ``changes`` whose model is still built on first read, once for both."""
        if self._build is None or "model" in changes:
            return super().evolve(**changes)
        kept = {f.name: getattr(self, f.name) for f in dataclass_fields(self) if f.name != "model"}
        return ModelOnDemand(self._build, **(kept | changes))

    @property  # a field of RunContext, computed here
    def model(self) -> Model | None:
        if self._model is None and self._build is not None:
            self._model, self._build = self._build(), None
        return self._model

    @model.setter
    def model(self, value: Model | None) -> None:
        if value is not None:
            self._model, self._build = value, None


def output_folder(path: str | Path, action: str | None = None) -> Path | str:
    """``path`` with ``~`` expanded, checked to take a bundle of ``action``: a one-line error
    otherwise (a folder holding the user's files or another action's bundle is never replaced).
    An fsspec URL (``s3://bucket/runs/x``) is checked there and returned as it is."""
    from mechwidgets.report.bundle import check_target, is_url

    if is_url(path):
        return check_target(str(path), action)
    folder = Path(path).expanduser()
    check_target(folder, action)
    check_writable(folder.parent, "the bundle", "choose another folder with -o/output_dir")
    return folder


def check_writable(folder: Path, what: str, fix: str) -> None:
    """Raise a one-line SpecError unless a file can be created in ``folder``.

    ``folder`` may not exist yet: then its nearest existing parent must take new files.
    A file is created and removed, because permission bits do not tell (root ignores them;
    read-only mounts and ACLs are not in them).
    """
    folder = Path(folder).expanduser()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise SpecError(f"cannot write {what} in {folder}: {existing} is a file; {fix}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise SpecError(
            f"cannot write {what} in {folder}: {existing} is not writable ({exc.strerror}); {fix}"
        ) from None


def check_budget(spec: RunSpec, task: Task, model: Model | ModelCard | None = None) -> None:
    """Refuse protocol counts whose draws cannot fit in memory, before the model loads.

    ``model`` is the loaded model or its card (the sizes recorded at its first load).
    Without it the activation width and slice count are taken as 1 (a lower bound,
    known as soon as the task is); with it, as the extraction will give them.
    """
    from mechwidgets.probes.sweep import DEFAULT_CONTROLS

    params = check_params(spec.action.name, spec.action.params)
    if not isinstance(params, ProtocolParams):  # no probing protocol, no draws to hold
        return
    counts = {key: getattr(params, key) for key in ("seeds", "permutations", "resamples")}
    n_slices, dim = 1, 1
    if model is not None:
        from mechwidgets.extract.request import plan_extraction

        plan = plan_extraction(model, selectors=spec.extraction.selectors)
        n_slices, dim = len(plan.layers) * max(1, len(plan.components)), model.d_model
    controls = DEFAULT_CONTROLS if spec.controls is None else [c.name for c in spec.controls]
    needed = protocol_bytes(
        n_samples=len(task),
        n_test=int((np.asarray(task.split) == "test").sum()),
        dim=dim,
        n_slices=n_slices,
        controls=controls,
        **counts,
    )
    check_memory(needed, counts)


def run_bundle(path: str | Path, output_dir: str | Path | None = None) -> ActionResult:
    """Re-run the RunSpec recorded in a bundle.

    Parameters
    ----------
    path : the bundle folder or its ``artifacts.json``.
    output_dir : where the new bundle goes; default ``<bundle>-rerun`` beside the original,
        which is never overwritten by a re-run.

    Returns
    -------
    The new result; compare it with :func:`metrics_difference`.
    """
    folder = bundle_folder(path)
    spec = load_spec(folder)
    return run_spec(spec, output_dir or folder.with_name(f"{folder.name}-rerun"))


def is_bundle_source(path: str | Path) -> bool:
    """Whether ``path`` names a bundle (its folder or ``artifacts.json``) rather than a config."""
    path = Path(path)
    return path.name == _ARTIFACTS or path.is_dir()


def bundle_folder(path: str | Path) -> Path:
    """The bundle folder of ``path`` (the folder itself, or its ``artifacts.json``'s parent)."""
    path = Path(path)
    return path.parent if path.name == _ARTIFACTS else path


def metrics_difference(result: ActionResult, bundle: str | Path) -> float:
    """Largest absolute difference between ``result``'s table and a bundle's ``metrics.json``.

    Parameters
    ----------
    result : a fresh result.
    bundle : the bundle folder (or its ``artifacts.json``) to compare against.

    Returns
    -------
    0.0 when every number is the same; ``inf`` when the tables differ in shape, columns
    or non-numeric cells (labels, layers, components).
    """
    old = pd.DataFrame(read_metrics(bundle)["table"])
    from mechwidgets.report.bundle import to_jsonable

    new = pd.DataFrame(to_jsonable(result.table.to_dict(orient="records")))
    if old.shape != new.shape or list(old.columns) != list(new.columns):
        return float("inf")
    numeric = [c for c in new if pd.api.types.is_numeric_dtype(new[c])]
    rest = [c for c in new if c not in numeric]
    if not old[rest].astype(str).equals(new[rest].astype(str)):
        return float("inf")
    a = old[numeric].to_numpy(dtype=float)
    b = new[numeric].to_numpy(dtype=float)
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf")
    return float(np.nanmax(np.abs(a - b), initial=0.0))


def read_metrics(bundle: str | Path) -> dict[str, Any]:
    """A bundle's ``metrics.json``; a missing or unreadable one is a one-line SpecError.

    Read before a re-run, so a bundle that cannot be compared fails before the work.
    """
    file = bundle_folder(bundle) / "metrics.json"
    fix = "re-run the config without comparing: mechinterp run CONFIG.yaml"
    try:
        metrics = json.loads(file.read_text())
    except FileNotFoundError:
        raise SpecError(f"{file} is missing, so the re-run has nothing to compare; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecError(f"{file} cannot be read ({exc}); {fix}") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("table"), list):
        raise SpecError(f"{file} has no 'table' of records, so it cannot be compared; {fix}")
    return metrics


def task_hash(task: Task) -> str:
    """A sha256 over a task's texts, labels, splits and positions: the data's fingerprint."""
    digest = hashlib.sha256()
    for text in task.texts:
        digest.update(text.encode() + b"\0")
    for name in sorted(task.labels):
        digest.update(name.encode() + np.asarray(task.labels[name]).astype(str).tobytes())
    digest.update(np.asarray(task.split).astype(str).tobytes())
    if task.positions is not None:  # int64, or markers and spans (object): as JSON
        positions = task.positions
        if positions.dtype == object:
            digest.update(json.dumps(position_key(positions)).encode())
        else:
            digest.update(positions.tobytes())
    return digest.hexdigest()


def _batch_progress(
    progress: Progress | None, k: int, n_tasks: int
) -> Callable[[int, int], None] | None:
    """Extraction batches of task ``k`` of ``n_tasks`` as fractions of the extract stage,
    for ``progress`` (which then replaces extract's own bar); None keeps extract's bar."""
    if progress is None:
        return None
    start, end = STAGE_START["extract"], STAGE_START["action"]

    def report(done: int, total: int) -> None:
        progress(start + (end - start) * (k + done / total) / n_tasks, "extract")

    return report


@contextmanager
def _timed(timings: dict[str, float], stage: str, progress: Progress | None) -> Iterator[None]:
    if progress is not None:
        progress(STAGE_START[stage], stage)
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 4)
