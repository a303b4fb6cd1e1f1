"""Edit activations inside a traced forward pass: the engine under ablation and patching.

An edit (a :class:`Cell`) replaces one component's activation with the same slice of a
source tensor: a residual stream (block output, or at layer :data:`EMBED` = -1 the
embeddings that enter block 0), an attention or MLP write, one head's
slice of the attention output projection's *input*, or one MLP neuron (a column of the
MLP down projection's input), at one token position, at every position, or at each
prompt's read token. Zero, mean and resample ablation and activation patching differ only
in the source. Many edits share one forward pass: the prompts are stacked once per edit
and edit ``k`` touches only its own block of rows, so a grid of hundreds of cells costs a
few batched passes instead of hundreds of small ones. Components are reached only through
the model's adapter accessors, in forward order, as nnsight requires.

>>> acts, base = capture(model, prompts, [c.site for c in cells], scorer)
>>> values, _ = run_cells(model, prompts, cells, acts, scorer)   # (cells, prompts)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import nnsight
import torch

from mechwidgets.core.components import LayerComponent
from mechwidgets.core.errors import ModelError, SelectorError
from mechwidgets.metrics import Prompts, Scorer
from mechwidgets.models.adapters import walk

#: ``Cell.position`` value meaning "each prompt's read token"
READ: Literal["read"] = "read"
#: component kind -> (model site, order of that site within a block's forward pass)
SITES: dict[str, tuple[str, int]] = {
    "attention_head": ("attn_out_proj", 0),
    "attention": ("attn", 1),
    "mlp_neuron": ("mlp_out_proj", 2),
    "mlp": ("mlp", 3),
    "residual": ("block", 4),
}
#: largest logits tensor (elements) one stacked pass may produce
MAX_LOGITS = 1 << 25
#: most stacked prompts in one pass (bounds the activations held by a pass)
MAX_ROWS = 4096

#: (layer, order within the block, site): sorts in forward order
SiteKey = tuple[int, int, str]


@dataclass(frozen=True)
class Cell:
    """One edit: a component at one padded token position, every position, or the read token."""

    component: LayerComponent
    position: int | Literal["read"] | None = None

    @property
    def site(self) -> SiteKey:
        """Where the edit happens."""
        return site_of(self.component)


#: ``LayerComponent("residual", EMBED)`` is the residual stream before block 0: the embeddings
EMBED = -1


def site_of(component: LayerComponent) -> SiteKey:
    """The site key of a component: its layer, forward order and model site."""
    if component.kind == "residual" and component.layer == EMBED:
        return (EMBED, SITES["residual"][1], "embed")
    site, order = SITES[component.kind]
    return (component.layer, order, site)


def columns(model: Any, component: LayerComponent) -> slice:
    """The slice of the site's last dimension that the component owns."""
    if component.kind == "attention_head":
        assert component.head is not None
        return slice(component.head * model.d_head, (component.head + 1) * model.d_head)
    if component.kind == "mlp_neuron":
        assert component.neuron is not None
        return slice(component.neuron, component.neuron + 1)
    return slice(None)


def check_components(model: Any, components: Iterable[LayerComponent]) -> None:
    """Raise a one-line SelectorError for a layer, head or neuron the model does not have."""
    shape = model.shape
    for comp in components:
        if comp.kind == "residual" and comp.layer == EMBED:
            continue
        limits = [("layer", comp.layer, shape.n_layers)]
        if comp.head is not None:
            limits.append(("head", comp.head, shape.n_heads))
        if comp.neuron is not None:
            limits.append(("neuron", comp.neuron, shape.d_mlp))
        for what, index, size in limits:
            if not 0 <= index < size:
                raise SelectorError(
                    f"{what} {index} of '{comp}' is out of range; {model.name} has "
                    f"{what}s 0-{size - 1}"
                )


def _check_logits(model: Any) -> None:
    if model.adapter.unembed is None or model.adapter.final_norm is None:
        raise ModelError(
            f"{model.name} has no output layer, so behaviour metrics cannot be read; "
            "load it with its language-model head"
        )


def _tensor(model: Any, site: str, layer: int) -> torch.Tensor:
    """The activation at a site inside a trace: a projection's input or a module's output."""
    if site == "embed":
        return walk(_base(model), model.adapter.embed).output
    envoy = model.envoy(site, layer)
    if site.endswith("out_proj"):
        return envoy.input
    out = envoy.output
    return out[0] if isinstance(out, tuple) else out


def _base(model: Any) -> Any:
    """The base model's envoy (Model.envoy reaches block components only; the embedding
    and the final norm sit on the base model)."""
    prefix = model.hf.base_model_prefix if model.hf.base_model is not model.hf else ""
    return walk(model.nn, prefix)


def _score(model: Any, scorer: Scorer, copies: int) -> torch.Tensor:
    """Inside a trace: the metric per row, unembedding only the positions the scorer reads."""
    hidden = walk(_base(model), model.adapter.final_norm).output
    hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
    picked = hidden[rows, scorer.positions.repeat(copies, 1)]
    unembed = model.hf.get_output_embeddings()
    # the output layer's own forward would run on every position; a linear map on the few
    # positions read gives the same logits
    return scorer.score_at(torch.nn.functional.linear(picked, unembed.weight, unembed.bias))


def capture(
    model: Any,
    prompts: Prompts,
    sites: Iterable[SiteKey],
    scorer: Scorer,
    grad: bool = False,
) -> tuple[dict[SiteKey, torch.Tensor], torch.Tensor]:
    """One plain forward pass: the activations (n, seq, width) at ``sites`` and the metric (n,).

    The pass stops after the final norm, so the output layer never runs on positions the
    metric does not read. With ``grad`` the activations stay in the autograd graph, so the
    metric can be differentiated with respect to them (attribution patching).
    """
    _check_logits(model)
    wanted = sorted(set(sites))
    with torch.set_grad_enabled(grad), model.nn.trace(**prompts.inputs) as tracer:
        acts = nnsight.save({})
        for key in wanted:
            acts[key] = _tensor(model, key[2], key[0])
        values = nnsight.save(_score(model, scorer, 1))
        tracer.stop()
    return acts, values


def run_cells(
    model: Any,
    prompts: Prompts,
    cells: Sequence[Cell],
    sources: dict[SiteKey, torch.Tensor],
    scorer: Scorer,
    readout: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply each cell's edit in its own copy of the prompts and score every copy.

    Parameters
    ----------
    cells : the edits; cell ``k`` replaces its component's slice by the same slice of
        ``sources[cell.site]`` at its position(s), in copy ``k`` only.
    sources : site key -> (n, seq, width) source activations for the prompts.
    scorer : from :func:`mechwidgets.metrics.bind`.
    readout : also return the residual stream after block ``readout`` at the read token.

    Returns
    -------
    ``(values, readouts)``: (cells, n) metric values and (cells, n, d_model) readouts (or
    None).
    """
    _check_logits(model)
    n, read = len(prompts), scorer.positions.shape[1]
    vocab = model.hf.get_output_embeddings().weight.shape[0]
    per_pass = max(1, min(MAX_ROWS // n, MAX_LOGITS // (n * read * vocab)))
    values, reads = [], []
    for first in range(0, len(cells), per_pass):
        chunk = list(cells[first : first + per_pass])
        v, r = _run_chunk(model, prompts, chunk, sources, scorer, readout)
        values.append(v.reshape(len(chunk), n))
        if r is not None:
            reads.append(r.reshape(len(chunk), n, -1))
    empty = torch.zeros(0, n)
    return (
        torch.cat(values) if values else empty,
        torch.cat(reads) if readout is not None and reads else None,
    )


def _run_chunk(
    model: Any,
    prompts: Prompts,
    chunk: list[Cell],
    sources: dict[SiteKey, torch.Tensor],
    scorer: Scorer,
    readout: int | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One traced pass over ``len(chunk)`` stacked copies of the prompts."""
    k, n = len(chunk), len(prompts)
    inputs = {name: t.repeat(k, 1) for name, t in prompts.inputs.items()}
    by_site: dict[SiteKey, list[tuple[int, Cell]]] = {}
    for index, cell in enumerate(chunk):
        by_site.setdefault(cell.site, []).append((index, cell))
    read_key = None if readout is None else (readout, SITES["residual"][1], "block")
    visits = sorted(set(by_site) | ({read_key} if read_key else set()))
    with torch.no_grad(), model.nn.trace(**inputs) as tracer:
        out = nnsight.save({})
        for key in visits:
            x = _tensor(model, key[2], key[0])
            for index, cell in by_site.get(key, []):
                _edit(x, index * n, cell, sources[key], prompts, columns(model, cell.component))
            if key == read_key:
                out["read"] = x[torch.arange(k * n), prompts.read.repeat(k)].float()
        out["values"] = _score(model, scorer, k)
        tracer.stop()
    return out["values"], out.get("read")


def _edit(
    x: torch.Tensor, row0: int, cell: Cell, src: torch.Tensor, prompts: Prompts, cols: slice
) -> None:
    """In place: rows ``row0 .. row0 + n`` of ``x`` take ``src``'s values at the cell."""
    n = src.shape[0]
    rows = slice(row0, row0 + n)
    if cell.position is None:
        x[rows, :, cols] = src[:, :, cols].to(x.dtype)
    elif cell.position == READ:
        index = torch.arange(row0, row0 + n, device=x.device)
        x[index, prompts.read, cols] = src[torch.arange(n), prompts.read, cols].to(x.dtype)
    else:
        x[rows, cell.position, cols] = src[:, cell.position, cols].to(x.dtype)
