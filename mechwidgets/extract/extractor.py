"""Turn texts (or a Task) into an activation cube, batch by batch, through nnsight.

For each batch: tokenize, trace, slice the asked-for token out of each asked-for
component (a copy, so the full activation is freed), save, write to the cube file. The
forward pass stops after the deepest block asked for, so the unembedding never runs. A
second call with the same inputs opens the cached cube and runs no forward pass.

>>> cube = extract(model, task, layers="all", components=["resid", "attn", "mlp"])
>>> cube["act"].sel(layer=3, component="mlp")
>>> extract(model, ["the cat sleeps"], selectors=["resid:0-1", "head:1.*"], token="mean")
>>> extract(model, ["the [MASK] is red"], layers="embed,all", token="[MASK]")["token"]

Layers are block indices, plus ``"embed"`` (layer :data:`~mechwidgets.core.components.EMBED`
= -1 in the cube): the embedding output, the residual stream entering block 0. Only
``resid`` has a value there; ``attn``, ``mlp``, heads and neurons are NaN at -1, which
the probing actions skip. ``"all"`` names the blocks only: ask for ``"embed,all"``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import nnsight
import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from mechwidgets import cluster
from mechwidgets.core.components import EMBED, STREAMS
from mechwidgets.core.errors import ModelError, SpecError
from mechwidgets.data.positions import (
    CHUNK,
    Position,
    ReadTokens,
    encode,
    resolve_positions,
)
from mechwidgets.data.tasks import Task
from mechwidgets.extract import cache as cache_store
from mechwidgets.extract.cube import ACT, NEURONS, is_zarr, memory_cube, open_cube
from mechwidgets.extract.request import (
    Plan,
    plan_extraction,
    relabel,
    request_for,
    samples_of,
    task_name,
    token_policy,
)
from mechwidgets.extract.unseen import Unseen, visible
from mechwidgets.models.loading import Model

#: batches above which a progress bar is shown when ``progress`` is None
PROGRESS_MIN_BATCHES = 4

Pool = Callable[[torch.Tensor], torch.Tensor]


def extract(
    model: Model,
    data: Task | Sequence[str],
    *,
    layers: str | int | Sequence[int] = "all",
    components: Sequence[str] = STREAMS,
    selectors: str | Sequence[str] | None = None,
    token: Literal["last", "mean"] | Position | None = None,
    positions: Sequence[Position] | np.ndarray | None = None,
    neurons: bool = False,
    batch_size: int = 32,
    cache: bool = True,
    padding_side: Literal["left", "right"] | None = None,
    progress: bool | Callable[[int, int], None] | None = None,
    unseen: Unseen = "error",
    store: str | Path | None = None,
    client: Any = None,
) -> xr.Dataset:
    """Run the model over texts and return the activation cube (lazy, on disk).

    Parameters
    ----------
    model : from :func:`mechwidgets.load_model`.
    data : a list of texts, or a Task (its labels, splits and positions ride along).
    layers, components : what to read: ``"all"``/``"0-5"``/an int/a list, with
        ``"embed"`` for the embedding output (layer -1, e.g. ``"embed,all"``), and any of
        ``resid``, ``attn``, ``mlp``, ``head`` (per-head writes), ``neuron``.
    selectors : instead of layers x components, strings like ``["resid:embed,0-5",
        "head:2.*"]``.
    token : ``"last"`` (each text's last token, special tokens included), ``"mean"``
        (over the non-pad tokens), or one position for every text as
        :mod:`mechwidgets.data.positions` defines: an int over the tokens as the
        tokenizer gives them, special tokens included (negative from the end), a marker
        string (``"[MASK]"``, ``"is@last"``) or a ``(start, end)`` character span. By
        default the positions (given, or the Task's) when there are any, else ``"last"``.
    positions : one position per text, written like a single ``token``.
    neurons : also store MLP neuron activations as the ``neurons`` variable.
    batch_size : texts per forward pass.
    cache : reuse and store the cube in the cache folder; False writes it to a private
        temporary folder removed at exit (still lazy, still bounded by a batch), except a
        cube of one batch, which is then held in memory only (no file behind it).
    padding_side : ``"left"`` or ``"right"``; the tokenizer's own by default. Results
        do not depend on it.
    progress : show a progress bar; by default only for more than a few batches. A
        callable is called as ``progress(batches_done, n_batches)`` after each batch
        instead of the bar (the Launcher's progress bar; it may raise to stop the run).
    unseen : texts the model cannot see (only special tokens, e.g. empty or blank, or an
        ``<unk>`` token): ``"error"`` (default) raises before any forward pass;
        ``"exclude"`` leaves them out and records how many in the cube's
        ``unseen_excluded`` attribute (see :mod:`mechwidgets.extract.unseen`).
    store : write the cube as a Zarr v3 store at this ``.zarr`` path or fsspec URL
        (``s3://bucket/cube.zarr``; credentials from the environment) instead of the cache
        folder: one chunk per batch, resumable (the same call after an interruption
        computes only the batches not yet committed), shareable by concurrent writers (see
        :mod:`mechwidgets.extract.store`).
    client : a ``dask.distributed.Client``: with ``store``, each batch is computed by a
        worker, which loads the model once by its name, and written into its region of the
        store (:mod:`mechwidgets.cluster`); the same cube as without.

    Returns
    -------
    xarray.Dataset following the cube contract of :mod:`mechwidgets.extract.cube`; except
    with ``token="mean"`` it records along ``sample`` the ``position`` (token index) and
    the ``token`` (its string) each text was read at. Its values are dask arrays over
    the cube file (``encoding["source"]``); a cube of one batch just computed holds the
    batch's own arrays instead (the same values as its file, if any).
    """
    if not isinstance(model, Model):
        raise ModelError(
            f"extract needs a Model from mechwidgets.load_model, got {type(model).__name__}"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise SpecError(f"batch_size must be a positive integer, got {batch_size!r}")
    if token is not None and positions is not None:
        raise SpecError("pass either token= or positions=, not both")
    if client is not None:
        cluster.check_client(client)
        if store is None or not is_zarr(store):
            raise SpecError("client= writes a Zarr cube: also pass store='cube.zarr' (or a URL)")
        cluster.model_spec(model)  # a model workers can load by name, before any pass
    texts, per_sample, task_positions = samples_of(data)
    plan = plan_extraction(model, layers, components, selectors, neurons)
    policy, specs = token_policy(
        token, task_positions if positions is None else positions, len(texts)
    )
    n_given = len(texts)
    # A call of one batch tokenizes its texts once: the unseen check, the read positions
    # and the batch's inputs share the encoding (three passes cost 1.7 ms of CPU at 16
    # texts x 16 tokens, 1.4% of a Pythia-70m-shaped forward).
    shared = _shared_pass(texts, batch_size, client)
    encoded = encode(model.tokenizer, texts, specs) if shared else None
    ids = None if encoded is None else encoded["input_ids"]
    # texts the model cannot see: found before any pass
    keep = visible(model.tokenizer, texts, unseen, ids)
    if keep is not None:
        texts = [t for t, k in zip(texts, keep, strict=True) if k]
        per_sample = {k: v[keep] for k, v in per_sample.items()}
        specs = None if specs is None else specs[keep]
        encoded = ids = None  # rare: the kept texts are tokenized again
    layout = plan.layout(len(texts), model.d_model)
    request = request_for(model, texts, plan, policy, specs)
    key = cache_store.cache_key(request)
    # The key's lock is held from the lookup until the cube is open: a second process
    # asking for it waits and then reads it, and `cache clear` leaves it alone.
    cached = cache and store is None
    with cache_store.claim(key) if cached else nullcontext():
        cube = cache_store.load(key, layout) if cached else None
        if cube is None:
            attrs = _attrs(model, request, key)
            reads = _read_tokens(model, texts, specs, encoded)
            if specs is not None:
                per_sample = {**per_sample, "position": reads.index, "token": reads.token}
            n_batches = -(-len(texts) // batch_size)
            # A cube of one batch is returned from the batch's arrays, not by opening the
            # file written (xarray's open of a small cube is 6-8 ms of CPU, 5% of a 16 x 16
            # forward at Pythia-70m's shape); uncached, it is written nowhere: held in
            # memory it is no larger than the batch every extraction holds anyway.
            in_memory = store is None and client is None and n_batches == 1
            path: str | Path | None = store
            if store is None and cache:
                path = cache_store.cache_path(key)
            elif store is None:
                path = None if in_memory else cache_store.scratch_dir() / f"{key}.nc"
            writer = (
                nullcontext()
                if path is None
                else cache_store.cube_writer(path, layout, per_sample, attrs, batch_size)
            )
            with writer as out:
                report = progress if callable(progress) else None
                show = n_batches > PROGRESS_MIN_BATCHES if progress is None else progress is True
                batches = [(0, len(texts))] if out is None else out.batches(batch_size)
                index = None if specs is None else reads.index
                if client is not None:  # each batch computed and written by a worker
                    job = (plan, texts, index, padding_side)
                    cluster.write_on_workers(client, model, str(path), list(batches), job, show)
                    # (that consumed `batches`: the loop below has nothing left to do)
                bar = tqdm(
                    batches, desc="extract", unit="batch", disable=not show or client is not None
                )
                for done, (start, stop) in enumerate(bar, start=1):
                    part = None if index is None else index[start:stop]
                    given = None if ids is None else ids[start:stop]
                    values = compute_batch(
                        model, plan, texts[start:stop], part, padding_side, given
                    )
                    if out is not None:
                        out.write(start, *values)
                    if report is not None:
                        report(done, n_batches)
            if in_memory:
                pairs = zip((ACT, NEURONS), values, strict=True)
                rows = {var: v for var, v in pairs if v is not None}
                # dask names the chunks by the key and this call: equal keys may still hold
                # different values after a ``.data`` edit the identity cannot see
                name = f"{key}-{uuid.uuid4().hex[:12]}"
                this_call = {"task": task_name(data), "unseen_excluded": n_given - len(texts)}
                return memory_cube(layout, per_sample, {**attrs, **this_call}, rows, name, path)
            # A file this call wrote is not read back to verify it: its checksums are of
            # the very buffers it wrote (a Zarr store, maybe shared, is checked as it opens).
            assert path is not None  # only a cube held in memory has no file
            cube = open_cube(path, layout, verified=store is None)
    return relabel(cube, data, per_sample, excluded=n_given - len(texts))


def compute_batch(
    model: Model,
    plan: Plan,
    texts: list[str],
    index: np.ndarray | None,
    padding_side: Literal["left", "right"] | None,
    input_ids: list[list[int]] | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """One batch of texts tokenized (or its ``input_ids`` padded), read and pooled (see
    :func:`run_batch`)."""
    inputs = model.tokenize(texts, padding_side=padding_side, input_ids=input_ids)
    return run_batch(model, plan, inputs, _pooler(inputs["attention_mask"], index))


def _shared_pass(texts: Sequence[str], batch_size: int, client: Any) -> bool:
    """Whether a call tokenizes its texts once for every use: when they are one batch
    computed here (not on cluster workers) and few enough to hold their encodings."""
    return client is None and len(texts) <= min(batch_size, CHUNK)


@torch.no_grad()
def run_batch(
    model: Model, plan: Plan, inputs: dict[str, torch.Tensor], pool: Pool
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """One traced forward pass: ``act`` (batch, layer, component, dim) and ``neurons`` rows.

    Components are touched in forward order and the pass stops after the deepest block in
    the plan. Heads are read as the output projection's input, pooled, and projected with
    the projection's own weight (pooling is linear, so projecting the pooled input equals
    pooling the projected heads). The block references only envoys, tensors and functions
    of tensors, so it runs on a remote model too (:mod:`mechwidgets.models.remote`): all
    slicing and pooling happen inside it, and only the pooled rows come back.
    """
    reads = _reads(model, plan)
    project = head_projector(model, plan.heads)
    picked = torch.tensor(plan.neurons or (), dtype=torch.long)  # read when neurons are
    # No KV cache: one pass never reuses it (building and filling it cost 0.5 ms of CPU at
    # 16 texts x 16 tokens, and it holds every layer's keys and values); same activations.
    no_cache = {"use_cache": False} if hasattr(model.hf.config, "use_cache") else {}
    with model.trace(**inputs, **no_cache) as tracer:
        saved = nnsight.save({})
        for key, envoy, port in reads:
            x = envoy.input if port == "input" else envoy.output
            x = pool(x[0] if isinstance(x, tuple) else x)
            if key[0] == "z":
                x = project(x, envoy.weight)
            elif key[0] == "neurons":
                x = x[:, picked.to(x.device)]
            saved[key] = x
        tracer.stop()
    act = None
    if plan.components:
        act = torch.stack([_layer_rows(model, plan, saved, layer) for layer in plan.layers], 1)
    rows = None
    if plan.neurons is not None:
        rows = torch.stack(
            [
                _absent(saved["resid", EMBED], len(plan.neurons))
                if layer == EMBED
                else saved["neurons", layer]
                for layer in plan.layers
            ],
            1,
        )
    return _numpy(act), _numpy(rows)


def _reads(model: Model, plan: Plan) -> list[tuple[tuple[str, int], Any, str]]:
    """What one pass reads, in forward order: (saved key, envoy, ``input``/``output``)."""
    want = set(plan.streams)
    out: list[tuple[tuple[str, int], Any, str]] = []
    for layer in plan.layers:
        if layer == EMBED:  # the embedding output is block 0's input
            out.append((("resid", EMBED), model.block(0), "input"))
            continue
        if plan.heads:
            out.append((("z", layer), model.attn_out_proj(layer), "input"))
        if "attn" in want:
            out.append((("attn", layer), model.attn(layer), "output"))
        if plan.neurons is not None:
            out.append((("neurons", layer), model.mlp_out_proj(layer), "input"))
        if "mlp" in want:
            out.append((("mlp", layer), model.mlp(layer), "output"))
        if "resid" in want:
            out.append((("resid", layer), model.block(layer), "output"))
    return out


def _absent(like: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """NaN rows shaped like ``like`` (or ``width`` wide): a component the layer lacks."""
    shape = like.shape if width is None else (*like.shape[:-1], width)
    return torch.full(shape, torch.nan, dtype=like.dtype, device=like.device)


def _layer_rows(
    model: Model, plan: Plan, saved: dict[Any, torch.Tensor], layer: int
) -> torch.Tensor:
    """One layer's (batch, component, dim) block: the streams, then the heads; at the
    embedding layer only ``resid`` has values, the rest is NaN."""
    if layer == EMBED:
        resid = saved["resid", EMBED]
        parts = [resid if s == "resid" else _absent(resid) for s in plan.components]
        return torch.stack(parts, 1)
    parts = [saved[s, layer] for s in plan.streams]
    if plan.heads:
        parts.extend(saved["z", layer].unbind(1))  # projected in the trace
    return torch.stack(parts, 1)


def head_projector(
    model: Model, heads: Sequence[int]
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``project(z, weight)``: each head's write into the residual stream, its slice of the
    attention output projection, from the projection's input ``z`` (..., n_heads * d_head)
    and its stored ``weight``: (..., len(heads), d_model) float32 (summed over all heads
    plus the projection's bias, the attention output).

    A function of tensors and plain values only, so a remote trace calls it on the
    server's weight (nnsight ships it by its source).
    """
    n_heads, d_head, picked = model.shape.n_heads, model.d_head, list(heads)
    stored_in_out = model.adapter.out_proj_transposed

    def project(z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        weight = weight.float() if stored_in_out else weight.float().T  # (in, out)
        per_head = weight.reshape(n_heads, d_head, -1)[picked]
        z = z.float().reshape(*z.shape[:-1], n_heads, d_head)[..., picked, :]
        return torch.einsum("...hk,hkd->...hd", z, per_head)

    return project


def _numpy(x: torch.Tensor | None) -> np.ndarray | None:
    return None if x is None else x.cpu().numpy()


def _first(output: Any) -> torch.Tensor:
    """A module's main output: attention modules return (output, weights)."""
    return output[0] if isinstance(output, tuple) else output


def _read_tokens(
    model: Model, texts: list[str], specs: np.ndarray | None, encoded: Any = None
) -> ReadTokens:
    """Resolve the positions and check every text fits, before any forward pass."""
    reads = resolve_positions(model.tokenizer, texts, specs, encoded)
    model.check_context(reads.length.tolist())
    return reads


def _pooler(mask: torch.Tensor, index: np.ndarray | None) -> Pool:
    """Reduce (batch, seq, ...) activations to (batch, ...) float32 by the token policy.

    ``index`` holds each text's read token among its own (unpadded) tokens.
    """
    mask = mask.bool()
    if index is None:  # mean over non-pad tokens; where(), not a product, so NaN in pads drops out
        counts = mask.sum(1, keepdim=True)
        keep = mask.unsqueeze(-1)
        return lambda x: torch.where(keep, x, 0).sum(1, dtype=torch.float32) / counts
    first = mask.int().argmax(1)  # index of the first real token: 0 unless left-padded
    at = first + torch.as_tensor(index, device=mask.device)
    # Only the picked rows may outlive the trace, not the full tensor: each read is a copy.
    # One position in every row: a basic slice (18 reads of 16 x 512 rows: 0.09 ms of CPU
    # against 0.14 for the gather).
    if bool((at == at[0]).all()):
        k = int(at[0])
        return lambda x: x[:, k].to(torch.float32, copy=True)
    rows = torch.arange(len(mask), device=mask.device)
    return lambda x: x[rows, at].float()  # advanced indexing copies


def _attrs(model: Model, request: dict[str, Any], key: str) -> dict[str, Any]:
    """The cube's attributes: the ``request`` it is keyed by (under ``key``), its parts
    the key holds taken from it, and the model's name and sizes."""
    from mechwidgets import __version__

    shape, neurons = model.shape, request["neurons"]
    return {
        "model": model.name,
        "model_identity": request["model"],
        "revision": model.revision or "",
        "family": model.adapter.family,
        "tokenizer_hash": request["tokenizer"],
        "token_policy": request["token"],
        "dtype": request["dtype"],
        "storage_dtype": "float32",
        "cache_key": key,
        "mechwidgets_version": __version__,
        "model_shape": {
            "n_layers": shape.n_layers,
            "n_heads": shape.n_heads,
            "d_mlp": shape.d_mlp,
            "d_model": model.d_model,
            "d_head": model.d_head,
        },
        "n_neurons": 0 if neurons is None else len(neurons),
        "request": request,
    }
