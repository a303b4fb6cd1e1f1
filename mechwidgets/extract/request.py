"""What one extraction asks for, and the cache key it is found under, without the model.

The request of a cube (:func:`request_for`) and its plan (:func:`plan_extraction`) need
only the model's identity, tokenizer hash, dtype and sizes, which a loaded
:class:`~mechwidgets.models.loading.Model` and a recorded
:class:`~mechwidgets.models.card.ModelCard` both give. So :func:`cached_cube` finds a
cached cube from a card, with torch and transformers never imported, under exactly the
key :func:`~mechwidgets.extract.extractor.extract` computes for the loaded model.

>>> cube = cached_cube(find_card("toy-grammar"), task, selectors=["resid:all"])  # or None
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import xarray as xr

from mechwidgets.core.components import EMBED, STREAMS, expand_selectors, without_embed
from mechwidgets.core.errors import SelectorError, SpecError, TaskError
from mechwidgets.data.positions import Position, as_position, as_positions, position_key
from mechwidgets.data.tasks import Task
from mechwidgets.extract import cache as cache_store
from mechwidgets.extract.cube import FORMAT_VERSION, GROUP, RESERVED, CubeLayout
from mechwidgets.probes.controls import WORDTYPE_PREFIX

if TYPE_CHECKING:
    from mechwidgets.models.card import ModelCard
    from mechwidgets.models.loading import Model

#: per-sample coordinates extraction records: the token each sample is read at
READ_COORDS = ("position", "token")


@dataclass(frozen=True)
class Plan:
    """What one extraction reads: a dense grid of layers x components, plus neurons.

    ``layers`` are block indices, led by :data:`EMBED` when the embedding output is read
    (only ``resid`` has a value there). ``streams`` are among ``resid``/``attn``/``mlp``;
    ``heads`` are head indices stored as ``head.H`` components; ``neurons`` are MLP
    neuron indices (None: no ``neurons``).
    """

    layers: tuple[int, ...]
    streams: tuple[str, ...]
    heads: tuple[int, ...]
    neurons: tuple[int, ...] | None

    @property
    def components(self) -> tuple[str, ...]:
        """The cube's ``component`` coordinate."""
        return self.streams + tuple(f"head.{h}" for h in self.heads)

    def layout(self, n_samples: int, d_model: int) -> CubeLayout:
        """The cube this plan fills for ``n_samples`` texts."""
        return CubeLayout(n_samples, self.layers, self.components, d_model, self.neurons)


def plan_extraction(
    model: Model | ModelCard,
    layers: str | int | Sequence[int] = "all",
    components: Sequence[str] = STREAMS,
    selectors: str | Sequence[str] | None = None,
    neurons: bool = False,
) -> Plan:
    """Parse layers x components (or selectors) against the model into a :class:`Plan`.

    The cube holds the dense grid of every layer and every component any selector names;
    ``"embed"`` among a selector's layers (``"resid:embed,0-3"``, ``layers="embed,all"``)
    adds the embedding layer. Out-of-range layers, heads or neurons raise a one-line
    SelectorError.
    """
    if selectors is None:
        span = layers if isinstance(layers, str) else _layer_text(layers)
        selectors = [
            f"{c}:{span}" for c in ([components] if isinstance(components, str) else components)
        ]
    items = selectors.split(";") if isinstance(selectors, str) else list(selectors)
    kept, embed = [], []
    for item in items:
        rest, named = without_embed(item) if isinstance(item, str) else (item, False)
        embed += [item] if named else []
        kept += [rest] if rest else []
    parsed = expand_selectors(kept, model.shape) if kept else []
    streams = {c.name for c in parsed if c.head is None and c.neuron is None}
    if embed:
        if not any(item.strip().startswith(("resid:", "residual:")) for item in embed):
            raise SelectorError(
                f"'{embed[0]}': the embedding layer holds only the residual stream; "
                "ask for 'resid:embed'"
            )
        streams.add("resid")
    neuron_ids = sorted({c.neuron for c in parsed if c.neuron is not None})
    if neurons and not neuron_ids:
        neuron_ids = list(range(model.shape.d_mlp))
    return Plan(
        layers=tuple(sorted({c.layer for c in parsed} | ({EMBED} if embed else set()))),
        streams=tuple(s for s in STREAMS if s in streams),
        heads=tuple(sorted({c.head for c in parsed if c.head is not None})),
        neurons=tuple(neuron_ids) if neuron_ids else None,
    )


def _layer_text(layers: int | str | Sequence[int | str]) -> str:
    if isinstance(layers, int):
        return str(layers)
    if not layers or not all(isinstance(x, int) or x == "embed" for x in layers):
        raise SpecError(
            "layers must be 'all', a range like '0-5', 'embed', an int or a list of ints "
            f"and 'embed', got {layers!r}"
        )
    return ",".join(map(str, layers))


def request_for(
    model: Model | ModelCard, texts: list[str], plan: Plan, policy: str, specs: np.ndarray | None
) -> dict[str, Any]:
    """Everything that shapes the activations (labels and splits do not).

    Positions enter as written (a marker, a span): with the tokenizer and the texts they
    fix the token read, so a cached cube is found without tokenizing.
    """
    return {
        "model": model.identity,
        "tokenizer": model.tokenizer_hash,
        "texts": texts_hash(texts),
        "read_at": position_key(specs) if policy == "positions" and specs is not None else None,
        "token": policy,
        "layers": list(plan.layers),
        "components": list(plan.components),
        "neurons": None if plan.neurons is None else list(plan.neurons),
        "dtype": str(model.dtype).removeprefix("torch."),
        "format": FORMAT_VERSION,
    }


def texts_hash(texts: Sequence[str]) -> str:
    """A hash of the texts in order, computed one text at a time (no joined copy)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode()
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def samples_of(
    data: Task | Sequence[str],
) -> tuple[list[str], dict[str, np.ndarray], np.ndarray | None]:
    """Texts, per-sample coordinates and the Task's positions."""
    if isinstance(data, str) or not isinstance(data, (Task, Sequence)):
        raise TaskError(f"extract takes a Task or a list of texts, got {type(data).__name__}")
    texts = list(data.texts if isinstance(data, Task) else data)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TaskError("extract needs a non-empty list of strings as texts")
    n = len(texts)
    per_sample: dict[str, np.ndarray] = {
        "sample_id": np.arange(n),
        "text": np.asarray(texts, dtype=object),
        "split": np.full(n, "all", dtype=object),
    }
    if not isinstance(data, Task):
        return texts, per_sample, None
    clash = sorted(RESERVED & set(data.labels))
    if clash:
        raise TaskError(f"label names {clash} are taken by the cube; rename those labels")
    types = {f"{WORDTYPE_PREFIX}{k}": v for k, v in data.word_types.items()}  # control_task
    columns = {"split": data.split, **data.labels, **types}
    if data.groups is not None:
        columns[GROUP] = data.groups
    for name, values in columns.items():
        if len(values) != n:
            raise TaskError(f"task '{data.name}': '{name}' has {len(values)} values for {n} texts")
        per_sample[name] = np.asarray(values)
    return texts, per_sample, data.positions


def token_policy(
    token: Any, positions: Sequence[Any] | np.ndarray | None, n: int
) -> tuple[str, np.ndarray | None]:
    """The token policy's name and the position per sample as written (None for ``mean``)."""
    if token is None and positions is not None:
        return "positions", as_positions(positions, n)
    token = "last" if token is None else token
    if token == "mean":
        return "mean", None
    if token == "last":
        return "last", np.full(n, -1, dtype=np.int64)
    if not isinstance(token, (int, np.integer, str, tuple, list)) or isinstance(token, bool):
        raise SpecError(
            f"bad token policy {token!r}: use 'last', 'mean', an int, a marker string or a "
            "(start, end) span"
        )
    spec = as_position(token, "token")
    return f"at:{json.dumps(list(spec) if isinstance(spec, tuple) else spec)}", as_positions(
        [spec] * n, n
    )


def cached_cube(
    card: ModelCard,
    data: Task | Sequence[str],
    *,
    layers: str | int | Sequence[int] = "all",
    components: Sequence[str] = STREAMS,
    selectors: str | Sequence[str] | None = None,
    token: Literal["last", "mean"] | Position | None = None,
    neurons: bool = False,
) -> xr.Dataset | None:
    """The cube :func:`~mechwidgets.extract.extractor.extract` would give for the model
    ``card`` records, read from the cache folder, or None when it is not there (or fails
    its checks): then extract with the loaded model.

    No text is tokenized. The check for texts the model cannot see is not needed: a cube
    is keyed by its texts and tokenizer, and is written only after every one of its texts
    passed that check, so finding the cube of all the texts means none is unseen, under
    ``unseen="error"`` and ``"exclude"`` alike (``unseen_excluded`` is 0).
    """
    texts, per_sample, task_positions = samples_of(data)
    plan = plan_extraction(card, layers, components, selectors, neurons)
    policy, specs = token_policy(token, task_positions, len(texts))
    key = cache_store.cache_key(request_for(card, texts, plan, policy, specs))
    with cache_store.claim(key):
        cube = cache_store.load(key, plan.layout(len(texts), card.d_model))
    return None if cube is None else relabel(cube, data, per_sample, excluded=0)


def relabel(
    cube: xr.Dataset, data: Task | Sequence[str], per_sample: dict[str, np.ndarray], excluded: int
) -> xr.Dataset:
    """A cached cube with this call's labels and splits, its task name and its count of
    texts left out as unseen.

    Labels and splits are not in the cache key: the same texts relabelled reuse the
    activations, and the cube carries the labels of this call, not of the cached file.
    The read tokens are a function of the key, so the file's own are kept.
    """
    stale = [
        c
        for c in cube.coords
        if cube[c].dims == ("sample",) and c not in per_sample and c not in READ_COORDS
    ]
    result = (
        cube.drop_vars(stale)
        .assign_coords({k: ("sample", v) for k, v in per_sample.items()})
        .assign_attrs(task=task_name(data), unseen_excluded=excluded)
    )
    result.set_close(cube.close)
    return result


def task_name(data: Task | Sequence[str]) -> str:
    """The task's name, or "" for a list of texts."""
    return data.name if isinstance(data, Task) else ""
