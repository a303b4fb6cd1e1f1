"""Attribution patching: a first-order estimate of every patching effect from one gradient.

Activation patching costs one forward pass per cell. Attribution patching (Nanda 2023;
Kramar et al. 2024) estimates all cells at once: the change of the metric when the base
run's activation ``a`` is replaced by the source run's ``a'`` is approximately
``(a' - a) . dM/da``, the gradient taken in the base run. It costs one forward pass of
the source prompts (to cache ``a'``), one forward and one backward pass of the base
prompts, whatever the grid's size. It is exact for small, local changes and can miss
across saturated attention or layer norms (Kramar et al. 2024), so
:func:`~mechwidgets.actions.patching.patch` reports its agreement with
real patching on the same grid.

>>> moves = attribution_moves(model, plan.base, Source(plan.source), plan.cells, scorer)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import nnsight
import numpy as np
import torch

from mechwidgets.intervene.edits import Cell, metric_reader
from mechwidgets.intervene.prompts import Prompts
from mechwidgets.intervene.scoring import Scorer
from mechwidgets.intervene.sites import SiteKey, columns, score_site, site_port
from mechwidgets.intervene.sources import Source

if TYPE_CHECKING:
    from mechwidgets.models.loading import Model


def attribution_moves(
    model: Model,
    base: Prompts,
    source: Source,
    cells: Sequence[Cell],
    scorer: Scorer,
) -> np.ndarray:
    """First-order estimate (cells, n) of each cell's change of the metric, per prompt.

    One forward pass of ``base`` with the source prompts stacked after it and, inside the
    same trace, one backward pass of the base rows' summed metric (nnsight's ``with
    value.backward():``) give each prompt's gradient at every site (prompts do not
    interact, so the sum's gradient in row ``i`` is prompt ``i``'s own); the products with
    ``source - base`` are reduced to one number per cell and prompt inside the trace too,
    so on a remote model only those come back. A site after the one the metric reads has
    no gradient: its estimates are zero.
    """
    by_site: dict[SiteKey, list[tuple[int, Cell]]] = {}
    for index, cell in enumerate(cells):
        by_site.setdefault(cell.site, []).append((index, cell))
    scored = score_site(model, scorer)
    read = metric_reader(model, scorer, 1)
    sites = sorted(k for k in by_site if k <= scored)
    ports = [(key, *site_port(model, key)) for key in sorted(set(sites) | {scored})]
    movers = {key: _mover(model, by_site[key], source, base) for key in sites}
    n = len(base)
    inputs = {
        name: torch.cat([t, source.prompts.inputs[name].to(t.device)])
        for name, t in base.inputs.items()
    }
    with torch.enable_grad(), model.trace(**inputs) as tracer:
        moved = nnsight.save({})
        acts = {}
        for key, envoy, side in ports:
            x = envoy.input if side == "input" else envoy.output
            acts[key] = x[0] if isinstance(x, tuple) else x
        value = read(acts[scored][:n])
        with value.sum().backward():
            for key in reversed(sites):  # gradients arrive in reverse forward order
                moved[key] = movers[key](acts[key], acts[key].grad)
        tracer.stop()
    out = np.zeros((len(cells), len(base)))
    for key in sites:
        rows = [index for index, _ in by_site[key]]
        out[rows] = moved[key].double().cpu().numpy()
    return out


def _mover(
    model: Model, here: list[tuple[int, Cell]], source: Source, base: Prompts
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``move(x, grad)``, for inside a trace: (len(here), n) estimates ``(source - base) .
    grad`` of the cells at one site from the stacked activation ``x`` (base rows, then
    source rows) and its gradient, summed over each cell's columns and position(s).
    Closes over tensors and plain values only, so it runs on a remote model too."""
    parts = [(columns(model, cell.component), cell.position) for _, cell in here]
    read, n, make = base.read.cpu(), len(base), source.maker()

    def move(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        wide = torch.promote_types(x.dtype, torch.float32)
        x = x.detach()
        prod = (make(x[n:]) - x[:n]).to(wide) * grad[:n].to(wide)
        rows = torch.arange(prod.shape[0], device=prod.device)
        out = []
        for cols, position in parts:
            part = prod[..., cols]
            if position is None:
                out.append(part.sum((1, 2)))
            elif position == "read":
                out.append(part[rows, read.to(prod.device)].sum(-1))
            else:
                out.append(part[:, position].sum(-1))
        return torch.stack(out)

    return move
