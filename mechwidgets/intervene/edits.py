"""Edit activations inside a traced forward pass: the engine under ablation and patching.

An edit (a :class:`Cell`) replaces one component's activation, at its site
(:mod:`~mechwidgets.intervene.sites`: a residual stream, an attention or MLP write, one
head's columns of the attention output projection's input, one MLP neuron), with the
same slice of a replacement, at one token position, at every position, or at each
prompt's read token. Zero, mean and resample ablation and activation patching differ only
in the :class:`~mechwidgets.intervene.sources.Source`: the source prompts run in the same
forward pass, stacked after the edited copies, and their activation at each site becomes
the replacement inside the pass, so no activation ever leaves it (on a remote model only
metric values come back). Many edits share one forward pass: the prompts are stacked
once per edit and edit ``k`` touches only its own block of rows, so a grid of hundreds
of cells costs a few batched passes instead of hundreds of small ones. Every pass is
scored by one or more bound metrics (:class:`~mechwidgets.intervene.scoring.Scorer`),
each read at its own site: the output head's logits after the last block, or the hidden
state a probe or hidden-state metric reads, after the edits at that site.

>>> _, base = capture(model, prompts, [], [scorer])
>>> values, _ = run_cells(model, prompts, cells, Source(corrupt), [scorer])  # (1, cells, n)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import nnsight
import torch

from mechwidgets.core.components import LayerComponent
from mechwidgets.core.errors import SpecError
from mechwidgets.intervene.prompts import Prompts
from mechwidgets.intervene.scoring import Scorer, output_head
from mechwidgets.intervene.sites import SiteKey, columns, score_site, site_of, site_port
from mechwidgets.intervene.sources import Source

if TYPE_CHECKING:
    from mechwidgets.models.loading import Model

#: ``Cell.position`` value meaning "each prompt's read token"
READ: Literal["read"] = "read"
#: largest logits tensor (elements) one stacked pass may produce
MAX_LOGITS = 1 << 25
#: most stacked prompts in one pass (bounds the activations held by a pass)
MAX_ROWS = 4096


@dataclass(frozen=True)
class Cell:
    """One edit: a component at one padded token position, every position, or the read token."""

    component: LayerComponent
    position: int | Literal["read"] | None = None

    @property
    def site(self) -> SiteKey:
        """Where the edit happens."""
        return site_of(self.component)


def metric_reader(
    model: Model, scorer: Scorer, copies: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``read(x)``, for inside a trace: the metric per row from the activation ``x`` at the
    scorer's site, for ``copies`` stacked copies of the prompts.

    Logits are made only at the positions the scorer reads: the output head's own forward
    would run on every position, and the head is a plain function of each position's
    final hidden state, so running it on the few positions read gives the same logits.
    ``read`` closes over tensors, an envoy and the scorer's own function of tensors only,
    so nnsight can ship it to a remote model by its source.
    """
    positions = scorer.positions.repeat(copies, 1)
    score_at = scorer.score_at
    head = None
    cols = slice(None)
    if scorer.component is None:
        module = output_head(model)
        assert module is not None  # bind() refuses logit metrics on a model without a head
        head = model.nn.interleaver.envoys[id(module)]
    else:
        cols = columns(model, scorer.component)

    def read(x: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        picked = x[rows, positions.to(x.device)]
        return score_at(head(picked) if head is not None else picked[..., cols])

    return read


def _scored_sites(model: Model, scorers: Sequence[Scorer]) -> dict[SiteKey, list[int]]:
    """Site -> indices of the scorers that read there."""
    out: dict[SiteKey, list[int]] = {}
    for index, scorer in enumerate(scorers):
        out.setdefault(score_site(model, scorer), []).append(index)
    return out


def capture(
    model: Model,
    prompts: Prompts,
    sites: Iterable[SiteKey],
    scorers: Sequence[Scorer] = (),
) -> tuple[dict[SiteKey, torch.Tensor], torch.Tensor]:
    """One plain forward pass: the activations at ``sites`` at each prompt's read token,
    (n, width) each, and each scorer's metric, (len(scorers), n).

    The pass stops after the last site it reads, so the output head never runs on
    positions a metric does not read (and not at all without a logit metric); the read
    tokens are picked inside the pass, so a remote model sends back only those rows.
    """
    scored = _scored_sites(model, scorers)
    readers = [metric_reader(model, s, 1) for s in scorers]
    wanted = set(sites)
    ports = [
        (key, *site_port(model, key), key in wanted, scored.get(key, []))
        for key in sorted(wanted | set(scored))
    ]
    n = len(prompts)
    at = (torch.arange(n), prompts.read.cpu())
    with torch.no_grad(), model.trace(**prompts.inputs) as tracer:
        acts = nnsight.save({})
        values = nnsight.save([None] * len(readers))
        for key, envoy, side, kept, metrics in ports:
            x = envoy.input if side == "input" else envoy.output
            x = x[0] if isinstance(x, tuple) else x
            if kept:
                acts[key] = x[at[0].to(x.device), at[1].to(x.device)]
            for index in metrics:
                values[index] = readers[index](x)
        tracer.stop()
    return acts, torch.stack(values) if scorers else torch.zeros(0, n)


def run_cells(
    model: Model,
    prompts: Prompts,
    cells: Sequence[Cell],
    source: Source,
    scorers: Sequence[Scorer],
    readout: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply each cell's edit in its own copy of the prompts and score every copy.

    Parameters
    ----------
    cells : the edits; cell ``k`` replaces its component's slice by the same slice of the
        source's replacement at its position(s), in copy ``k`` only.
    source : where the replacements come from (:class:`Source`); its prompts need the
        same count and padded width as ``prompts``.
    scorers : from :func:`mechwidgets.intervene.metrics.bind`; each reads its site after the edits
        there (none: only ``readout`` is wanted).
    readout : also return the residual stream after block ``readout`` at the read token.

    Returns
    -------
    ``(values, readouts)``: (len(scorers), cells, n) metric values and (cells, n, d_model)
    readouts (or None).
    """
    n = len(prompts)
    if len(source.prompts) != n or source.prompts.width != prompts.width:
        raise SpecError(
            f"the source prompts are {len(source.prompts)} x {source.prompts.width} tokens "
            f"but the edited prompts {n} x {prompts.width}; give one source prompt per "
            "prompt with the same number of tokens"
        )
    width = max(
        [1]
        + [
            s.positions.shape[1] * (model.d_model if s.component else _vocab(model))
            for s in scorers
        ]
    )
    per_pass = max(1, min(MAX_ROWS // n, MAX_LOGITS // (n * width)))
    values, reads = [], []
    for first in range(0, len(cells), per_pass):
        chunk = list(cells[first : first + per_pass])
        v, r = _run_chunk(model, prompts, chunk, source, scorers, readout)
        values.append(v.reshape(len(scorers), len(chunk), n))
        if r is not None:
            reads.append(r.reshape(len(chunk), n, -1))
    return (
        torch.cat(values, 1) if values else torch.zeros(len(scorers), 0, n),
        torch.cat(reads) if readout is not None and reads else None,
    )


def _vocab(model: Model) -> int:
    config: Any = model.hf.config  # a Hugging Face PretrainedConfig
    return int(config.vocab_size)


def _run_chunk(
    model: Model,
    prompts: Prompts,
    chunk: list[Cell],
    source: Source,
    scorers: Sequence[Scorer],
    readout: int | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One traced pass over ``len(chunk)`` stacked copies of the prompts, then the source
    prompts (rows ``k * n`` on, read and never edited)."""
    k, n = len(chunk), len(prompts)
    inputs = {
        name: torch.cat([t.repeat(k, 1), source.prompts.inputs[name].to(t.device)])
        for name, t in prompts.inputs.items()
    }
    by_site: dict[SiteKey, list[tuple[int, Cell]]] = {}
    for index, cell in enumerate(chunk):
        by_site.setdefault(cell.site, []).append((index, cell))
    reads = set() if readout is None else {site_of(LayerComponent("resid", readout))}
    scored = _scored_sites(model, scorers)
    readers = [metric_reader(model, s, k) for s in scorers]
    read_at = (torch.arange(k * n), prompts.read.repeat(k).cpu())
    make, edited = source.maker(), k * n
    sourced = {source.site} if source.site is not None else set(by_site)
    visits = [
        (
            *site_port(model, key),
            key if key in sourced else None,
            source.site or key,
            [_editor(model, index * n, cell, prompts) for index, cell in by_site.get(key, [])],
            key in reads,
            scored.get(key, []),
        )
        for key in sorted(set(by_site) | sourced | set(scored) | reads)
    ]
    with torch.no_grad(), model.trace(**inputs) as tracer:
        out = nnsight.save({"values": [None] * len(readers)})
        made = {}
        for envoy, side, keep, take, edits, is_read, metrics in visits:
            x = envoy.input if side == "input" else envoy.output
            x = x[0] if isinstance(x, tuple) else x
            if keep is not None:
                made[keep] = make(x[edited:])
            for edit in edits:
                edit(x, made[take])
            if is_read:
                out["read"] = x[read_at[0].to(x.device), read_at[1].to(x.device)].float()
            for index in metrics:
                out["values"][index] = readers[index](x[:edited])
        tracer.stop()
    values = torch.stack(out["values"]) if scorers else torch.zeros(0, k * n)
    return values, out.get("read")


def _editor(
    model: Model, row0: int, cell: Cell, prompts: Prompts
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """``edit(x, src)``, for inside a trace: in place, rows ``row0 .. row0 + n`` of ``x``
    take the replacement ``src``'s (n, seq, width) values at the cell (its columns, at its
    position, every position or each prompt's read token). Closes over tensors and plain
    values only (see :func:`metric_reader`)."""
    n = len(prompts)
    cols = columns(model, cell.component)
    rows, own = torch.arange(row0, row0 + n), torch.arange(n)
    at: Any = slice(None) if cell.position is None else cell.position
    if cell.position == READ:
        at = prompts.read.cpu()

    def edit(x: torch.Tensor, src: torch.Tensor) -> None:
        where = at.to(x.device) if isinstance(at, torch.Tensor) else at
        x[rows.to(x.device), where, cols] = src[own.to(x.device), where, cols].to(x.dtype)

    return edit
