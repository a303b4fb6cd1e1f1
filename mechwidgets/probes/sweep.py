"""The probing protocol over every (layer, component) slice of a cube, and its statistics.

``detect``, ``compare`` and ``collapse`` all ask the same first question: how well does a
linear probe decode this label from each slice, next to its controls? This module answers
it once, with one fixed protocol: standardise on train, choose the L2 strength on
validation, score on test; controls drawn ``permutations`` times per seed; bootstrap
resamples of the test items shared by every slice and control (so comparisons are
paired). :func:`sweep` returns every number per seed; :func:`aggregate` turns them into
seed means, intervals, p-values and selectivities; :func:`tidy_table` into one row per
(label, layer, component, control).

The unit of inference is what is independent: a cube variable named by
``Protocol(groups=...)``; by default the cube's ``group`` variable (``Task.from_frame(...,
groups=...)``), else the label's word types (``wordtype_<label>``, as the built-in tasks
record them), else the items. Bootstrap resamples and label permutations work on whole
units, and every row names its ``unit`` and how many the test split holds (``n_units``);
with fewer than :data:`MIN_UNITS` the intervals count each unit as one observation and
the verdict says so.

>>> protocol = Protocol(controls=("label_shuffle", "random_subspace"), seeds=(0, 1, 2))
>>> raw = sweep(cube, ["subject_number"], protocol)    # xarray.Dataset, per seed
>>> table = tidy_table(aggregate(raw, protocol))
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, cast

import numpy as np
import pandas as pd
import xarray as xr
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mechwidgets.analysis.statistics import (
    Metric,
    adjust_pvalues,
    batch_score,
    cluster_bootstrap_weights,
    effective_n,
    percentile_interval,
    permutation_pvalue,
    proportion_interval,
    score,
    simultaneous_interval,
)
from mechwidgets.cluster import map_slices, worker_threads
from mechwidgets.core.budget import check_memory, protocol_bytes
from mechwidgets.core.errors import CubeError, SpecError
from mechwidgets.core.params import ProtocolParams, check
from mechwidgets.extract.cube import ACT, check_cube, check_finite
from mechwidgets.probes.controls import (
    WORDTYPE_PREFIX,
    check_controls,
    control_task_labels,
    random_subspaces,
    shuffled_labels,
)
from mechwidgets.probes.linear import (
    DEFAULT_STRENGTHS,
    LabelEncoding,
    Path,
    PathFit,
    Standardizer,
    blas_threads_for,
    fit_select_predict,
    make_path,
)

SPLITS = ("train", "val", "test")
DEFAULT_CONTROLS = ("label_shuffle", "random_subspace")
MIN_PER_SPLIT = 10
MIN_PER_CLASS = 2
#: per-sample variables that are not labels
_NOT_LABELS = {"sample", "sample_id", "split", "text", "position", "token", "group"}
#: fewer test units than this and their spread cannot be estimated: with 7 units a
#: cluster-robust variance has 6 degrees of freedom (t quantile 2.45 against 1.96) and
#: rests on a handful of unit means, and cluster-robust tests over-reject below ~10
#: clusters even with small-sample corrections (Cameron, Gelbach & Miller 2008). Below it
#: each unit counts as one observation, a bound that holds whatever the clustering.
MIN_UNITS = 8
#: ``groups`` values that make every item its own unit
ITEM_UNITS = ("item", "items")
#: one independent random stream per purpose and seed
_STREAMS = {"label_shuffle": 1, "random_subspace": 2, "control_task": 3, "bootstrap": 4}


@dataclass(frozen=True)
class Protocol:
    """How every slice is probed; the parameters ``detect``/``compare``/``collapse`` share.

    Parameters
    ----------
    controls : names from ``label_shuffle``, ``random_subspace``, ``control_task``.
    seeds : seed values; each seed draws its own shuffles, subspaces, control tasks and
        bootstrap stream. The ridge and logistic fits themselves are deterministic.
    permutations : control draws per seed; p-values use all ``seeds x permutations``.
    resamples : bootstrap resamples of the test items per seed.
    strengths : L2 strengths, as multiples of the number of training samples.
    metric : ``accuracy`` / ``auc`` (classes) or ``r2`` (continuous); default by label.
    probe : ``ridge`` (fast, shared factorisation) or ``logistic`` (scikit-learn per fit).
    level : confidence level of intervals; ``1 - level`` is the significance threshold.
    correction : ``holm`` (family-wise) or ``bh`` (false discovery rate) across slices.
    subspace_rank : rank of the random-subspace control (default: the probe's rank).
    layers, components : restrict the sweep (default: all in the cube).
    groups : the unit of inference, a per-sample cube variable whose values name the
        units that items share (e.g. the noun); default the cube's ``group`` variable,
        else ``wordtype_<label>``, else the items; ``"items"`` treats every item as
        independent.

    ``random_subspace`` brings ``label_shuffle`` along: a rank-r probe on a random
    subspace is not exchangeable with the full probe (on pure noise 30-80% of its draws
    predict one class), so its p-value is an intersection-union test (Berger 1982) that
    needs the label-shuffle p-value too.
    """

    controls: tuple[str, ...] = DEFAULT_CONTROLS
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    permutations: int = 200
    resamples: int = 1000
    strengths: tuple[float, ...] = tuple(DEFAULT_STRENGTHS)
    metric: str | None = None
    probe: str = "ridge"
    level: float = 0.95
    correction: str = "holm"
    subspace_rank: int | None = None
    layers: tuple[int, ...] | None = None
    components: tuple[str, ...] | None = None
    groups: str | None = None

    def __post_init__(self) -> None:
        controls = check_controls(self.controls)
        if "random_subspace" in controls and "label_shuffle" not in controls:
            controls = ("label_shuffle", *controls)
        object.__setattr__(self, "controls", controls)
        if len(self.seeds) < 1:
            raise SpecError(f"bad value {self.seeds!r} for 'seeds': give at least one seed")
        # the constraints are ProtocolParams', the one table a config and mw.detect use too
        values = {k: getattr(self, k) for k in ProtocolParams.model_fields if k != "seeds"}
        check(ProtocolParams, values, "Protocol")

    @classmethod
    def from_context(cls, context: Any, own: Iterable[str] = ()) -> tuple[Protocol, dict]:
        """The protocol from a RunContext, plus the action's own parameters.

        ``context.params`` may hold the protocol fields (``seeds`` as a count, seed values
        start at ``context.seed``) and the names in ``own``; anything else is a SpecError.
        ``context.controls`` None means the default controls; an empty list, none.
        """
        params = dict(context.params)
        fields = set(cls.__dataclass_fields__) - {"controls"}
        allowed = fields | set(own)
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise SpecError(
                f"unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
            )
        kwargs: dict[str, Any] = {k: params[k] for k in fields & set(params)}
        n_seeds = kwargs.pop("seeds", 5)
        if not isinstance(n_seeds, int) or isinstance(n_seeds, bool) or n_seeds < 1:
            raise SpecError(f"bad value {n_seeds!r} for 'seeds': give how many seeds, e.g. 5")
        kwargs["seeds"] = tuple(int(context.seed) + i for i in range(n_seeds))
        for key in ("strengths", "layers", "components"):
            if kwargs.get(key) is not None:
                value = kwargs[key]
                kwargs[key] = tuple([value] if isinstance(value, int | float | str) else value)
        controls = check_controls(
            DEFAULT_CONTROLS if context.controls is None else context.controls
        )
        own_params = {k: params[k] for k in own if k in params}
        return cls(controls=controls, **kwargs), own_params


@dataclass(frozen=True)
class LabelData:
    """One label, checked and encoded, with its unit of inference.

    ``units`` holds a unit id per sample (None when every item is its own unit) and
    ``unit`` names them for the table and the verdict (e.g. ``word type``).
    """

    name: str
    encoding: LabelEncoding
    codes: np.ndarray
    metric: Metric
    majority: float
    word_types: np.ndarray | None
    units: np.ndarray | None
    unit: str


@dataclass(frozen=True)
class CubeView:
    """A validated cube: split masks, labels and the slices to probe.

    ``test_units`` are the bootstrap's units on the test split: one label's units, or for
    several labels the coarsest partition that keeps every label's units whole, so one
    resample serves all labels and comparisons between them stay paired.
    """

    cube: xr.Dataset
    split: np.ndarray
    masks: tuple[np.ndarray, np.ndarray, np.ndarray]
    labels: dict[str, LabelData]
    layers: tuple[int, ...]
    components: tuple[str, ...]
    test_ids: np.ndarray = field(repr=False)
    test_units: np.ndarray = field(repr=False)

    @property
    def n_units(self) -> int:
        """Independent units in the test split."""
        return int(np.unique(self.test_units).size)


def label_names(cube: xr.Dataset) -> list[str]:
    """The cube's per-sample label variables (not split, ids, text or word types)."""
    return [
        str(name)
        for name, var in cube.variables.items()
        if var.dims == ("sample",)
        and name not in _NOT_LABELS
        and not str(name).startswith(WORDTYPE_PREFIX)
    ]


def read_cube(cube: xr.Dataset, labels: Iterable[str], protocol: Protocol) -> CubeView:
    """Check ``cube`` against the cube contract for these labels; one-line errors.

    Raises
    ------
    CubeError
        no ``act`` variable or wrong dims; missing ``split``, unknown split values, or too
        few samples per split; a missing label, a label with one class, too few samples of
        a class in a split; a control task without its ``wordtype_<label>`` variable.
    SpecError
        a metric that does not suit a label; layers or components not in the cube.
    """
    check_cube(cube, need=ACT)
    if "split" not in cube.variables or cube["split"].dims != ("sample",):
        raise CubeError("cube has no 'split' variable along 'sample'; add train/val/test splits")
    split = np.asarray(cube["split"].values).astype(str)
    bad = sorted(set(np.unique(split)) - set(SPLITS))
    if bad:
        raise CubeError(f"cube 'split' has unknown value(s) {bad}; use train, val and test")
    masks = tuple(split == s for s in SPLITS)
    for name, mask in zip(SPLITS, masks, strict=True):
        if mask.sum() < MIN_PER_SPLIT:
            raise CubeError(
                f"split '{name}' has {int(mask.sum())} samples; each split needs at least "
                f"{MIN_PER_SPLIT}: use more samples"
            )
    label_data = {name: _read_label(cube, name, masks, protocol) for name in labels}
    layers = _pick(protocol.layers, [int(v) for v in cube["layer"].values], "layer")
    comps = _pick(protocol.components, [str(v) for v in cube["component"].values], "component")
    ids = cube["sample_id"].values if "sample_id" in cube.variables else np.arange(split.size)
    test_ids = np.asarray(ids)[masks[2]]
    units = _joint_units([lab.units for lab in label_data.values()], split.size)
    return CubeView(
        cube, split, masks, label_data, tuple(layers), tuple(comps), test_ids, units[masks[2]]
    )


def _joint_units(per_label: list[np.ndarray | None], n: int) -> np.ndarray:
    """Unit ids that keep every label's units whole (connected items share an id)."""
    given = [u for u in per_label if u is not None]
    if not given:
        return np.arange(n)
    ids = [np.unique(u, return_inverse=True)[1].ravel() for u in given]
    if len(ids) == 1:
        return ids[0]
    # items linked through any label's unit are one unit: components of an item-unit graph
    offsets = np.cumsum([n] + [int(i.max()) + 1 for i in ids])
    rows = np.concatenate([np.arange(n)] * len(ids))
    cols = np.concatenate([i + off for i, off in zip(ids, offsets[:-1], strict=True)])
    size = int(offsets[-1])
    graph = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(size, size))
    return connected_components(graph, directed=False)[1][:n]


def _units(cube: xr.Dataset, name: str, protocol: Protocol) -> tuple[np.ndarray | None, str]:
    """The unit ids of label ``name`` and what they are called (see ``Protocol.groups``)."""
    wanted = protocol.groups
    if wanted in ITEM_UNITS:
        return None, "item"
    if wanted is None:
        auto = [
            v
            for v in ("group", WORDTYPE_PREFIX + name)
            if v in cube.variables and cube[v].dims == ("sample",)
        ]
        if not auto:
            return None, "item"
        wanted = auto[0]
    if wanted not in cube.variables or cube[wanted].dims != ("sample",):
        raise CubeError(
            f"groups '{wanted}' is not a variable along 'sample' of the cube; name one "
            f"(e.g. {WORDTYPE_PREFIX}{name}) or use groups='items'"
        )
    values = np.asarray(cube[wanted].values)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise CubeError(f"groups '{wanted}' has NaN values; give every sample a unit")
    if np.unique(values).size == values.size:
        return None, "item"
    return values, "word type" if wanted.startswith(WORDTYPE_PREFIX) else f"group '{wanted}'"


def _pick(wanted: tuple | None, present: list, what: str) -> list:
    if wanted is None:
        return present
    missing = [w for w in wanted if w not in present]
    if missing:
        raise SpecError(f"{what}(s) {missing} not in the cube; it has {present}")
    return [p for p in present if p in wanted]


def _read_label(
    cube: xr.Dataset,
    name: str,
    masks: tuple[np.ndarray, ...],
    protocol: Protocol,
) -> LabelData:
    if name not in cube.variables or cube[name].dims != ("sample",):
        raise CubeError(
            f"cube has no label '{name}' along 'sample'; choose one of its labels: "
            f"{', '.join(label_names(cube)) or 'none'}"
        )
    values = np.asarray(cube[name].values)
    encoding = LabelEncoding.infer(values, name, protocol.metric)
    metric = encoding.check_metric(protocol.metric or encoding.default_metric)
    codes = encoding.encode(values)
    if encoding.kind != "continuous":
        for split, mask in zip(SPLITS, masks, strict=True):
            counts = np.bincount(codes[mask], minlength=encoding.classes.size)
            if counts.min() < MIN_PER_CLASS:
                cls = encoding.classes[counts.argmin()]
                raise CubeError(
                    f"label '{name}': class {cls!r} has {counts.min()} sample(s) in the "
                    f"{split} split; each class needs {MIN_PER_CLASS}+ per split"
                )
    word_types = None
    units, unit = _units(cube, name, protocol)
    if "control_task" in protocol.controls:
        var = WORDTYPE_PREFIX + name
        if var not in cube.variables or cube[var].dims != ("sample",):
            raise CubeError(
                f"control_task for '{name}' needs a '{var}' variable along 'sample' "
                "(the word type carrying the label); add it or drop the control"
            )
        word_types = np.asarray(cube[var].values)
    test = codes[masks[2]]
    majority = np.bincount(test).max() / test.size if metric == "accuracy" else np.nan
    return LabelData(name, encoding, codes, metric, float(majority), word_types, units, unit)


@dataclass(frozen=True)
class _Draws:
    """Every seeded draw for one label, made once and shared by all slices.

    ``columns`` holds the label columns the main path fits, split into (train, val,
    test) rows: the real labels, then per seed its ``B`` label-shuffle and its ``B``
    control-task columns, as present (a seed's columns side by side).
    """

    columns: tuple[np.ndarray, np.ndarray, np.ndarray]
    column_controls: tuple[str, ...]
    subspace: np.ndarray | None  # (S*B*rank, d) stacked bases, transposed


@dataclass(frozen=True)
class SeedBlock:
    """One label's numbers on one slice for a block of seeds (:func:`_probe_label`).

    ``score``, ``val_score`` and ``alpha`` are ``(control, seed)``; ``boot`` adds a
    ``resample`` axis and ``null`` a ``draw`` axis; ``first_out`` and ``first_true`` are
    each control's draw 0 (test outputs and their labels), ``(control, test item, seed)``
    without the real probe; ``y_pred`` and ``y_score`` are the real probe's test outputs,
    the same in every block.
    """

    score: np.ndarray
    val_score: np.ndarray
    alpha: np.ndarray
    boot: np.ndarray
    null: np.ndarray
    first_out: np.ndarray
    first_true: np.ndarray
    y_pred: np.ndarray
    y_score: np.ndarray


@dataclass(frozen=True)
class ProbeNumbers:
    """The probes' numbers for the whole sweep (:func:`sweep`), ``(label, layer,
    component, ...)``: ``score``, ``val_score`` and ``alpha`` then ``(control, seed)``;
    ``boot`` adds a ``resample`` axis and ``null`` a ``draw`` axis; ``sel_boot`` is
    ``(control, resample)``; ``y_pred`` and ``y_score`` are the real probe's test outputs.
    """

    score: np.ndarray
    val_score: np.ndarray
    alpha: np.ndarray
    boot: np.ndarray
    sel_boot: np.ndarray
    null: np.ndarray
    y_pred: np.ndarray
    y_score: np.ndarray

    def put(
        self,
        at: tuple[int, int, int],
        blocks: list[SeedBlock],
        metric: Metric,
        weights0: np.ndarray,
    ) -> None:
        """Write one label's numbers on one slice at ``(label, layer, component)`` from
        its seed blocks, in seed order. ``sel_boot`` is the real probe minus the seed mean
        of each control's draw 0, all under seed 0's resamples (``weights0``): its spread
        is that of the reported selectivity (a mean over seeds), not of one draw. It is
        computed here, from every seed, so that it does not depend on the blocks."""
        for name in ("score", "val_score", "alpha", "boot", "null"):
            getattr(self, name)[at] = np.concatenate([getattr(b, name) for b in blocks], axis=1)
        outs, truth = (
            np.concatenate([getattr(b, name) for b in blocks], axis=-1)
            for name in ("first_out", "first_true")
        )
        real = self.boot[at][0, 0]  # the real probe under seed 0's resamples
        for k, (out, true) in enumerate(zip(outs, truth, strict=True), start=1):
            self.sel_boot[at][k] = real - batch_score(metric, true, out, weights0).mean(axis=1)
        self.y_pred[at], self.y_score[at] = blocks[0].y_pred, blocks[0].y_score


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[purpose]])


def _subspace_rank(lab: LabelData, protocol: Protocol, dim: int) -> int:
    """The rank of the random-subspace control's bases for ``lab``; a SpecError past ``dim``."""
    rank = protocol.subspace_rank or max(1, lab.encoding.width - 1)
    if rank > dim:
        raise SpecError(f"subspace_rank {rank} exceeds the activation dim {dim}")
    return rank


def _draws(lab: LabelData, view: CubeView, protocol: Protocol, dim: int) -> _Draws:
    b = protocol.permutations
    seeds = protocol.seeds
    names, subspace = [], None
    per_seed: list[list[np.ndarray]] = [[] for _ in seeds]
    if "label_shuffle" in protocol.controls:
        names.append("label_shuffle")
        for own, s in zip(per_seed, seeds, strict=True):
            own.append(
                shuffled_labels(lab.codes, view.split, b, _rng(s, "label_shuffle"), lab.units)
            )
    if "control_task" in protocol.controls:
        names.append("control_task")
        types = cast(np.ndarray, lab.word_types)  # read_cube checked it exists
        for own, s in zip(per_seed, seeds, strict=True):
            own.append(control_task_labels(lab.codes, types, b, _rng(s, "control_task")))
    y = np.concatenate([lab.codes[:, None], *(c for own in per_seed for c in own)], axis=1)
    if "random_subspace" in protocol.controls:
        rank = _subspace_rank(lab, protocol, dim)
        bases = np.concatenate(
            [random_subspaces(dim, rank, b, _rng(s, "random_subspace")) for s in seeds]
        )  # (S*B, d, rank)
        subspace = bases.transpose(0, 2, 1).reshape(-1, dim).astype(np.float32)
    parts = [y[mask] for mask in view.masks]
    return _Draws((parts[0], parts[1], parts[2]), tuple(names), subspace)


def sweep(cube: xr.Dataset, labels: Iterable[str], protocol: Protocol) -> xr.Dataset:
    """Probe every slice for every label with controls, bootstrap and null draws.

    Each slice is loaded once (lazy cubes stay lazy elsewhere), standardised on train and
    factorised once; all labels, strengths and control draws share that factorisation.
    On a dask client (:mod:`mechwidgets.cluster`) with more worker threads than slices,
    each slice's seeds are split into blocks (:func:`seed_blocks`), each a unit of work
    that loads and factorises the slice itself; the numbers are the same bit for bit.

    Returns
    -------
    An ``xarray.Dataset`` with dims ``label, layer, component, control, seed, resample,
    draw, test_sample``: ``score`` (test score of the real probe and of draw 0 of each
    control), ``val_score``, ``alpha`` (chosen strength), ``boot`` (bootstrap test scores,
    whole units resampled, one stream per seed), ``sel_boot`` (the seed-mean gap between
    the real probe and each control under seed 0's resamples), ``null`` (test scores of all
    control draws), ``y_true``/``y_pred``/``y_score`` (real probe on the test split) and
    ``probed`` (False for slices that are all NaN, e.g. an attention output at the
    embedding layer). Label coordinates: ``metric``, ``kind``, ``chance`` (the mean
    label-shuffle score, the control baseline), ``majority`` (the test split's majority
    rate), ``unit`` and ``n_units``.
    """
    view = read_cube(cube, list(labels), protocol)
    names = list(view.labels)
    controls = ("none", *protocol.controls)
    n_seed, n_res, n_draw = len(protocol.seeds), protocol.resamples, protocol.permutations
    n_test = int(view.masks[2].sum())
    shape = (len(names), len(view.layers), len(view.components), len(controls), n_seed)
    needed = protocol_bytes(
        n_samples=int(cube.sizes["sample"]),
        n_test=n_test,
        dim=int(cube.sizes["dim"]),
        n_slices=shape[1] * shape[2],
        controls=protocol.controls,
        seeds=n_seed,
        permutations=n_draw,
        resamples=n_res,
        n_labels=len(names),
    )
    check_memory(needed, {"permutations": n_draw, "resamples": n_res})  # before allocating
    out = ProbeNumbers(
        score=np.full(shape, np.nan),
        val_score=np.full(shape, np.nan),
        alpha=np.full(shape, np.nan),
        boot=np.full((*shape, n_res), np.nan),
        sel_boot=np.full((*shape[:-1], n_res), np.nan),
        null=np.full((*shape, n_draw), np.nan),
        y_pred=np.full(shape[:3] + (n_test,), np.nan, dtype=object),
        y_score=np.full(shape[:3] + (n_test,), np.nan),
    )
    probed = np.zeros(shape[1:3], bool)
    dim = int(cube.sizes["dim"])
    if "random_subspace" in protocol.controls:
        for lab in view.labels.values():
            _subspace_rank(lab, protocol, dim)  # a bad rank fails here, before any probe
    where = {
        (layer, comp): (li, ci)
        for li, layer in enumerate(view.layers)
        for ci, comp in enumerate(view.components)
    }
    # on a dask client (mechwidgets.cluster.using) each (slice, seed block) is a unit of
    # work for a worker; with fewer slices than worker threads, each slice's seeds are
    # split into blocks, each of which loads, standardises and factorises the slice again
    # (seed_blocks gives the cost); in this process, one block of all seeds per slice
    blocks = seed_blocks(n_seed, len(where), worker_threads())
    keys = [(layer, comp, b.start, b.stop) for layer, comp in where for b in blocks]
    shared = _Shared(replace(view, cube=xr.Dataset()), protocol, dim)
    arrived: dict[tuple[int, str], dict[int, list[SeedBlock]]] = {}
    with blas_threads_for(cube.sizes["sample"] * dim):
        for (layer, comp, start, _), block in map_slices(cube, probe_at, keys, shared):
            if block is None:
                continue
            got = arrived.setdefault((layer, comp), {})
            got[start] = block
            if len(got) < len(blocks):
                continue
            del arrived[layer, comp]
            li, ci = where[layer, comp]
            probed[li, ci] = True
            for ni, lab in enumerate(view.labels.values()):
                parts = [got[b.start][ni] for b in blocks]
                out.put((ni, li, ci), parts, lab.metric, shared.weights0)
    if not probed.any():
        raise CubeError(
            "every slice of the cube is all NaN, so nothing can be probed; extract it again "
            "(a NaN cube comes from a model that overflowed: try dtype='float32')"
        )
    return _assemble(out, probed, view, protocol, controls)


class _Shared:
    """What every slice's probe shares: the view, the protocol, and the seeded draws
    (:func:`_draws`) and bootstrap weights made from them on first use, once in each
    process that probes: here, or on each dask worker from the same seeds, so the same
    numbers. Only this recipe is sent to workers (``__reduce__``): the default detect's
    draws and weights on 2,000 samples are 33 MB, whose broadcast through the scheduler
    held the first tasks back 0.25 s (bench/scale.py --large, on a loaded machine), where
    a worker makes them in 0.03 s of CPU."""

    def __init__(self, view: CubeView, protocol: Protocol, dim: int) -> None:
        self.view, self.protocol, self.dim = view, protocol, dim

    def __reduce__(self) -> tuple[type, tuple[CubeView, Protocol, int]]:
        return type(self), (self.view, self.protocol, self.dim)

    @cached_property
    def draws(self) -> dict[str, _Draws]:
        """Each label's draws (:func:`_draws`)."""
        return {
            name: _draws(lab, self.view, self.protocol, self.dim)
            for name, lab in self.view.labels.items()
        }

    def _weights(self, seed: int) -> np.ndarray:
        return cluster_bootstrap_weights(
            self.view.test_units, self.protocol.resamples, _rng(seed, "bootstrap")
        )

    @cached_property
    def weights(self) -> np.ndarray:
        """``(seed, resample, test item)`` cluster-bootstrap weights, one stream per seed."""
        return np.stack([self.weights0, *map(self._weights, self.protocol.seeds[1:])])

    @cached_property
    def weights0(self) -> np.ndarray:
        """The first seed's weights alone: all that merging seed blocks needs (on a
        client, the process that merges makes only these)."""
        return self._weights(self.protocol.seeds[0])


def seed_blocks(n_seeds: int, n_slices: int, threads: int) -> list[range]:
    """The seeds (indices) of each block a slice's probes are split into.

    One block of all seeds while the ``n_slices`` slices give each of ``threads`` worker
    threads (:func:`mechwidgets.cluster.worker_threads`) one; else even blocks, enough
    for a unit of work per thread, at most one per seed. A block repeats its slice's
    load, standardisation and factorisation, the real probe and the random-subspace
    projections (default protocol, in one process, all but the load: 133 of 300 ms CPU
    on a 4,000 x 512 slice of bench/probes.py, 25 of 81 ms on 2,000 x 256; on a worker,
    with the load and the task, 76 of 98 ms on bench/scale.py's 2,000 x 256 slices), so
    slices are split only to occupy idle threads, not into several tasks per thread.
    """
    n = min(n_seeds, max(1, -(-threads // max(1, n_slices))))
    return [range(int(b[0]), int(b[-1]) + 1) for b in np.array_split(np.arange(n_seeds), n)]


def probe_at(
    cube: xr.Dataset, layer: int, comp: str, start: int, stop: int, shared: _Shared
) -> list[SeedBlock] | None:
    """One slice loaded and probed for seeds ``start:stop`` (:func:`_probe_slice`); None
    when the slice is absent."""
    x = _load(cube, layer, comp)
    if x is None:
        return None
    seeds = range(start, stop)
    return _probe_slice(x, shared.view, shared.draws, shared.weights, shared.protocol, seeds)


def _load(cube: xr.Dataset, layer: int, comp: str) -> np.ndarray | None:
    """One slice as float64 ``(sample, dim)``; None when it is entirely NaN (absent)."""
    x = np.asarray(
        cube["act"].sel(layer=layer, component=comp).transpose("sample", "dim").values,
        np.float64,
    )
    if x.size and np.isnan(x.flat[0]) and np.isnan(x).all():
        return None
    return check_finite(x, f"activations at layer {layer}, component '{comp}'")


def _probe_slice(
    x: np.ndarray,
    view: CubeView,
    draws: dict[str, _Draws],
    weights: np.ndarray,
    protocol: Protocol,
    seeds: range,
) -> list[SeedBlock]:
    """All labels on one slice for ``seeds``, in the view's order. A block of seeds
    standardises and factorises its slice itself: split into blocks, a slice repeats
    that once per block (see :func:`sweep`)."""
    tr, va, te = view.masks
    xs = Standardizer.fit(x[tr]).transform(x)  # on train only
    paths: dict[str, tuple[Path, np.ndarray, np.ndarray]] = {}
    result: list[SeedBlock] = []
    for name, lab in view.labels.items():
        kind = "ridge" if lab.encoding.kind == "continuous" else protocol.probe
        if kind not in paths:
            path = make_path(kind, xs[tr][None], np.float32)
            paths[kind] = (path, path.project(xs[va][None]), path.project(xs[te][None]))
        result.append(
            _probe_label(xs, lab, draws[name], paths[kind], kind, view, weights, protocol, seeds)
        )
    return result


def _probe_label(
    xs: np.ndarray,
    lab: LabelData,
    draw: _Draws,
    main: tuple[Path, np.ndarray, np.ndarray],
    kind: str,
    view: CubeView,
    weights: np.ndarray,
    protocol: Protocol,
    seeds: range,
) -> SeedBlock:
    """Real probe and every control draw of ``seeds`` (indices into ``protocol.seeds``)
    for one label on one standardised slice.

    The real labels are fitted alone and each seed's control columns on their own, so a
    seed's numbers are the same products on the same operands whichever seeds share its
    task: a sweep split into seed blocks (:func:`seed_blocks`) gives bit for bit the
    numbers of one block of all seeds (a fit of more columns at once may round them
    differently: BLAS kernels are not bound to give a column the same last bits).
    """
    tr, va, te = view.masks
    enc, metric = lab.encoding, lab.metric
    alphas = np.asarray(protocol.strengths) * tr.sum()
    n_seed, n_draw = len(protocol.seeds), protocol.permutations
    y_train, y_val, y_test = draw.columns
    path, proj_val, proj_test = main

    def fitted(cols: slice) -> tuple[PathFit, np.ndarray]:
        fit = fit_select_predict(
            path, proj_val, proj_test, y_train[None, :, cols], y_val[None, :, cols],
            enc, metric, alphas,
        )  # fmt: skip
        return fit, enc.output(fit.test_decision, metric)[0]

    real, real_out = fitted(slice(0, 1))
    # per control, per seed of the block: test outputs (n_test, B), their true labels,
    # val scores and strengths; the real probe's are the same for every seed
    groups: dict[str, list[tuple[np.ndarray, ...]]] = {
        "none": [(real_out, y_test[:, :1], real.val_score[0], real.alpha_index[0])] * len(seeds)
    }
    groups.update({c: [] for c in protocol.controls})
    n_col = len(draw.column_controls)
    if draw.subspace is not None:
        rank = draw.subspace.shape[0] // (n_seed * n_draw)
        # every seed's projections, (S * B * rank, n) -> (S * B, n, rank) (for rank 1 a
        # view, not a copy), in one product whatever the block: a block then takes its
        # rows from the very product one process makes, and one process pays nothing for
        # blocks (a product per seed repacks xs each time: +2% of a slice)
        z_all = (draw.subspace @ xs.T.astype(np.float32)).reshape(-1, rank, len(xs))
        z_all = z_all.swapaxes(1, 2)
        real_codes = lab.codes[:, None][None]
    for s in seeds:
        if n_col:
            first = 1 + s * n_col * n_draw  # seed s's columns, after the real labels
            fit, out = fitted(slice(first, first + n_col * n_draw))
            for cc, c in enumerate(draw.column_controls):
                own = slice(cc * n_draw, (cc + 1) * n_draw)
                groups[c].append(
                    (
                        out[:, own],
                        y_test[:, first + own.start : first + own.stop],
                        fit.val_score[0, own],
                        fit.alpha_index[0, own],
                    )
                )
        if draw.subspace is not None:
            z = z_all[s * n_draw : (s + 1) * n_draw]
            sub = make_path(kind, z[:, tr], np.float32)
            sfit = fit_select_predict(
                sub, sub.project(z[:, va]), sub.project(z[:, te]), real_codes[:, tr],
                real_codes[:, va], enc, metric, alphas,
            )  # fmt: skip
            sout = enc.output(sfit.test_decision, metric)[:, :, 0].T
            groups["random_subspace"].append(
                (
                    sout,
                    np.repeat(lab.codes[te][:, None], sout.shape[1], axis=1),
                    sfit.val_score[:, 0],
                    sfit.alpha_index[:, 0],
                )
            )
    controls = ("none", *protocol.controls)
    shape = (len(controls), len(seeds))
    test_score, val_score, alpha = (np.full(shape, np.nan) for _ in range(3))
    null = np.full((*shape, n_draw), np.nan)
    boot = np.full((*shape, protocol.resamples), np.nan)
    for k, c in enumerate(controls):
        for i, (s, (outs, truth, val, idx)) in enumerate(zip(seeds, groups[c], strict=True)):
            # draw 0 of each seed is the reported probe
            test_score[k, i] = score(metric, truth[:, 0], outs[:, 0])
            val_score[k, i] = val[0]
            alpha[k, i] = alphas[idx[0]]
            boot[k, i] = batch_score(metric, truth[:, 0], outs[:, :1], weights[s])[:, 0]
            if c != "none":
                null[k, i] = batch_score(metric, truth, outs)[0]
    # each control's draw 0 per seed: test outputs and their labels, (control, test item,
    # seed), which ProbeNumbers.put pairs with the real probe under seed 0's resamples
    first_out, first_true = (
        np.array([[part[j][:, 0] for part in groups[c]] for c in protocol.controls])
        .reshape(len(protocol.controls), len(seeds), int(te.sum()))
        .transpose(0, 2, 1)
        for j in (0, 1)
    )
    decision = real.test_decision[0, :, : enc.width]
    if enc.kind == "continuous":
        y_pred = decision[:, 0]
    else:
        y_pred = enc.classes[enc.output(decision, "accuracy")[:, 0]]
    y_score = decision[:, 0] if enc.kind == "binary" else np.full(decision.shape[0], np.nan)
    return SeedBlock(
        test_score, val_score, alpha, boot, null, first_out, first_true, y_pred, y_score
    )


def _assemble(
    out: ProbeNumbers,
    probed: np.ndarray,
    view: CubeView,
    protocol: Protocol,
    controls: tuple[str, ...],
) -> xr.Dataset:
    names = list(view.labels)
    base = ("label", "layer", "component", "control", "seed")
    te = view.masks[2]
    y_true = np.empty((len(names), int(te.sum())), dtype=object)
    for ni, lab in enumerate(view.labels.values()):
        y_true[ni] = np.asarray(view.cube[lab.name].values)[te]
    pred_dims = ("label", "layer", "component", "test_sample")
    ds = xr.Dataset(
        {
            "score": (base, out.score),
            "val_score": (base, out.val_score),
            "alpha": (base, out.alpha),
            "boot": ((*base, "resample"), out.boot),
            "sel_boot": ((*base[:-1], "resample"), out.sel_boot),
            "null": ((*base, "draw"), out.null),
            "y_true": (("label", "test_sample"), _plain(y_true)),
            "y_pred": (pred_dims, _plain(out.y_pred)),
            "y_score": (pred_dims, out.y_score),
            "probed": (("layer", "component"), probed),
        },
        coords={
            "label": names,
            "layer": list(view.layers),
            "component": list(view.components),
            "control": list(controls),
            "seed": list(protocol.seeds),
            "test_sample": view.test_ids,
            "metric": ("label", [lab.metric for lab in view.labels.values()]),
            "chance": ("label", _chance(out.null, view, controls)),
            "majority": ("label", [lab.majority for lab in view.labels.values()]),
            "kind": ("label", [lab.encoding.kind for lab in view.labels.values()]),
            "unit": ("label", [lab.unit for lab in view.labels.values()]),
            "n_units": ("label", [view.n_units] * len(names)),
        },
        attrs={"probe": protocol.probe, "level": protocol.level},
    )
    return ds


def _chance(null: np.ndarray, view: CubeView, controls: tuple[str, ...]) -> list[float]:
    """Per label, the control baseline: the mean label-shuffle score over every probed
    slice and draw; without that control, what a probe that knows only the training class
    shares scores (sum over classes of train share x test share), 0.5 AUC or 0 R^2."""
    out = []
    for ni, lab in enumerate(view.labels.values()):
        if "label_shuffle" in controls:
            out.append(float(np.nanmean(null[ni, :, :, controls.index("label_shuffle")])))
        elif lab.metric == "accuracy":
            k = lab.encoding.classes.size
            train, test = (
                np.bincount(lab.codes[m], minlength=k) / m.sum() for m in view.masks[::2]
            )
            out.append(float(train @ test))
        else:
            out.append(0.5 if lab.metric == "auc" else 0.0)
    return out


def _plain(values: np.ndarray) -> np.ndarray:
    """Object arrays of labels -> float when all numeric, else str."""
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError):
        return values.astype(str)


def aggregate(raw: xr.Dataset, protocol: Protocol) -> xr.Dataset:
    """Seed means, intervals, p-values and selectivities per (label, layer, component, control).

    - ``score``: mean over seeds; ``seed_sd``: spread over seeds.
    - ``ci_low``/``ci_high``: for accuracy, a Clopper-Pearson interval on the effective
      number of independent items (:func:`effective_n`: the unit-bootstrap spread pooled
      over seeds, so cluster, test-sampling and seed noise together, over the binomial);
      it holds at the ceiling and the floor, where a bootstrap interval shrinks to a point.
      For AUC and R^2, the percentile interval of the unit bootstrap pooled over seeds.
    - ``ci_adj_low``/``ci_adj_high``: simultaneous intervals over all probed slices of a
      (label, control): for accuracy the exact interval at the Bonferroni level
      ``1 - (1 - level) / slices``; for AUC and R^2 each slice's percentile interval at the
      level that the joint bootstrap draws calibrate (max statistic).
    - ``p_value``: one-sided permutation p-value that the real probe beats the control,
      against all ``seeds x permutations`` control draws, resolved below ``1 / (draws + 1)``
      by a checked normal tail (:func:`permutation_pvalue`); on the real-probe row
      (``none``) the label-shuffle one (else the first control's). The random-subspace
      p-value counts ties as one half (mid-p) and is the larger of it and the label-shuffle
      p-value (an intersection-union test). ``p_adj``: corrected across the probed slices
      of each (label, control) with ``protocol.correction``.
    - ``selectivity`` (control rows): real minus control score; its interval is the
      percentile interval of the seed-mean gap under shared resamples (``sel_boot``).
    """
    ok = raw["probed"].values
    level = protocol.level
    pooled = raw["boot"].stack(bdraw=("seed", "resample")).transpose(..., "bdraw").values
    score = raw["score"].mean("seed").values
    sd = raw["score"].std("seed", ddof=1).values if raw.sizes["seed"] > 1 else np.zeros_like(score)
    n_items = raw.sizes["test_sample"]
    with warnings.catch_warnings():  # slices that were not probed are all NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        boot_var = np.nanvar(pooled, axis=-1)
    lo, hi = percentile_interval(pooled, level)
    adj_lo, adj_hi = np.full_like(lo, np.nan), np.full_like(hi, np.nan)
    for ni in range(raw.sizes["label"]):
        exact = str(raw["metric"].values[ni]) == "accuracy"
        units = int(raw["n_units"].values[ni])
        if exact:
            n_eff = effective_n(score[ni], boot_var[ni], n_items, units, level, MIN_UNITS)
            lo[ni], hi[ni] = proportion_interval(score[ni], n_eff, level)
        for k in range(raw.sizes["control"]):
            fam = pooled[ni, :, :, k][ok]  # (probed slices, draws)
            if exact:
                # the same exact interval at the Bonferroni level: near the ceiling most
                # resamples tie, so the max statistic finds few extremes and calibrates
                # too lenient a level (joint coverage 0.90 over 5 slices at 0.99 / 40 items)
                g = (1 - level) / len(fam)
                est = score[ni, :, :, k][ok]
                n_eff = effective_n(
                    est, boot_var[ni, :, :, k][ok], n_items, units, 1 - g, MIN_UNITS
                )
                a, b = proportion_interval(est, n_eff, 1 - g)
            else:
                a, b, _ = simultaneous_interval(fam, level)
            adj_lo[ni, :, :, k][ok], adj_hi[ni, :, :, k][ok] = a, b
    p = _pvalues(raw, score[..., 0], ok)
    p_adj = np.full_like(p, np.nan)
    for ni in range(raw.sizes["label"]):
        for k in range(raw.sizes["control"]):
            p_adj[ni, :, :, k] = adjust_pvalues(p[ni, :, :, k], protocol.correction)
    sel = score[..., :1] - score
    sel_lo, sel_hi = percentile_interval(raw["sel_boot"].values, level)
    sel[..., 0] = sel_lo[..., 0] = sel_hi[..., 0] = np.nan
    dims = ("label", "layer", "component", "control")
    data = {
        "score": score,
        "ci_low": lo,
        "ci_high": hi,
        "ci_adj_low": adj_lo,
        "ci_adj_high": adj_hi,
        "seed_sd": sd,
        "p_value": p,
        "p_adj": p_adj,
        "selectivity": sel,
        "selectivity_ci_low": sel_lo,
        "selectivity_ci_high": sel_hi,
    }
    coords = {c: raw[c] for c in ("label", "layer", "component", "control")}
    agg = xr.Dataset({k: (dims, v) for k, v in data.items()}, coords=coords)
    agg.attrs = {"correction": protocol.correction, "level": level, "min_units": MIN_UNITS}
    return agg.where(raw["probed"])


def _pvalues(raw: xr.Dataset, real: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``(label, layer, component, control)`` p-values (see :func:`aggregate`)."""
    controls = [str(c) for c in raw["control"].values]
    null = raw["null"].stack(ndraw=("seed", "draw")).transpose(..., "ndraw").values
    p = np.full(null.shape[:-1], np.nan)
    for k, name in enumerate(controls[1:], start=1):
        ties = "mid" if name == "random_subspace" else "count"
        p[..., k] = permutation_pvalue(real, null[..., k, :], ties=ties, tail=True)
    if "random_subspace" in controls and "label_shuffle" in controls:
        rs, ls = controls.index("random_subspace"), controls.index("label_shuffle")
        p[..., rs] = np.maximum(p[..., rs], p[..., ls])
    if len(controls) > 1:
        ref = controls.index("label_shuffle") if "label_shuffle" in controls else 1
        p[..., 0] = p[..., ref]
    p[:, ~ok] = np.nan
    return p


def tidy_table(agg: xr.Dataset) -> pd.DataFrame:
    """One row per probed (label, layer, component, control), ordered as in the cube."""
    meta = [str(c) for c in agg.coords if agg[c].dims == ("label",) and c != "label"]
    df = agg.drop_vars(meta).to_dataframe().reset_index().dropna(subset=["score"])
    df = df.merge(agg[meta].to_dataframe().reset_index(), on="label", how="left")
    df["correction"] = agg.attrs["correction"]
    order = ["label", "layer", "component", "control", "score", "ci_low", "ci_high"]
    rest = [c for c in df.columns if c not in order]
    return df[order + rest].reset_index(drop=True)


def predictions_frame(raw: xr.Dataset) -> pd.DataFrame:
    """Per test sample, the real probe's prediction on every probed slice."""
    df = raw[["y_pred", "y_score", "y_true"]].to_dataframe().reset_index()
    df = df.rename(columns={"test_sample": "sample_id"})
    probed = raw["probed"].to_dataframe().reset_index()
    df = df.merge(probed, on=["layer", "component"])
    df = df[df.pop("probed")]
    cols = ["sample_id", "label", "layer", "component", "y_true", "y_pred", "y_score"]
    return df[cols].reset_index(drop=True)


def pooled_boot(raw: xr.Dataset, control: str = "none") -> xr.DataArray:
    """Bootstrap draws of one control pooled over seeds: dims ``(..., bdraw)``.

    Draw ``j`` is the same resample of test items (and seed) for every label, layer and
    component, so differences between them are paired.
    """
    boot = raw["boot"].sel(control=control).stack(bdraw=("seed", "resample"))
    return boot.drop_vars(["bdraw", "seed", "resample"]).transpose(..., "bdraw")


def resolve_labels(cube: xr.Dataset, labels: str | Iterable[str] | None) -> tuple[str, ...]:
    """The label names asked for; None picks the cube's only label, else a SpecError."""
    if labels is None:
        found = label_names(cube) if isinstance(cube, xr.Dataset) else []
        if len(found) != 1:
            raise SpecError(
                f"name the label to probe with label=...; this cube has "
                f"{', '.join(found) or 'no labels'}"
            )
        return (found[0],)
    return (labels,) if isinstance(labels, str) else tuple(dict.fromkeys(labels))


@dataclass(frozen=True)
class ProtocolRun:
    """Everything one run of the protocol produced, ready for an action's result."""

    raw: xr.Dataset
    agg: xr.Dataset
    table: pd.DataFrame
    predictions: pd.DataFrame
    timings: dict[str, float]

    @property
    def data(self) -> xr.Dataset:
        """Aggregated and per-seed numbers in one Dataset (predictions live elsewhere)."""
        per_seed = self.raw.drop_vars(["y_true", "y_pred", "y_score", "test_sample"])
        per_seed = per_seed.rename(score="seed_score", val_score="seed_val_score")
        return xr.merge([self.agg, per_seed], compat="override", combine_attrs="override")


def run_protocol(cube: xr.Dataset, labels: Iterable[str], protocol: Protocol) -> ProtocolRun:
    """:func:`sweep`, :func:`aggregate`, :func:`tidy_table` and :func:`predictions_frame`, timed."""
    start = time.perf_counter()
    raw = sweep(cube, labels, protocol)
    probed = time.perf_counter()
    agg = aggregate(raw, protocol)
    run = ProtocolRun(raw, agg, tidy_table(agg), predictions_frame(raw), {})
    done = time.perf_counter()
    run.timings.update(probes=round(probed - start, 4), statistics=round(done - probed, 4))
    return run
