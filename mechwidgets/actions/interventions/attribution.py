"""Attribution patching: a first-order estimate of every patching effect from one gradient.

Activation patching costs one forward pass per cell. Attribution patching (Nanda 2023;
Kramar et al. 2024) estimates all cells at once: the change of the metric when the base
run's activation ``a`` is replaced by the source run's ``a'`` is approximately
``(a' - a) . dM/da``, the gradient taken in the base run. It costs one forward pass of
the source prompts (to cache ``a'``), one forward and one backward pass of the base
prompts, whatever the grid's size. It is exact for small, local changes and can miss
across saturated attention or layer norms (RECIPES.md, "Patching practice"), so
:func:`~mechwidgets.actions.interventions.patching.patch` reports its agreement with
real patching on the same grid.

>>> res = attribution_patch(model, clean=pairs)          # PatchResult, method "attribution"
>>> res.table.nlargest(5, "effect")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mechwidgets.actions.interventions.edits import READ, Cell, SiteKey, capture, columns
from mechwidgets.actions.interventions.grid import (
    Direction,
    PatchResult,
    patch_result,
    plan_patching,
)
from mechwidgets.data.catalog import PromptPairs
from mechwidgets.data.tasks import Task
from mechwidgets.metrics import Prompts, Scorer, widen


def attribution_moves(
    model: Any,
    base: Prompts,
    source_acts: dict[SiteKey, torch.Tensor],
    cells: Sequence[Cell],
    scorer: Scorer,
) -> np.ndarray:
    """First-order estimate (cells, n) of each cell's change of the metric, per prompt.

    One forward pass of ``base`` keeps the activations at every site in the graph; one
    backward pass of the summed metric gives each prompt's gradient (prompts do not
    interact, so the sum's gradient in row ``i`` is prompt ``i``'s own).
    """
    acts, values = capture(model, base, [c.site for c in cells], [scorer], grad=True)
    keys = sorted(acts)
    grads = torch.autograd.grad(values.sum(), [acts[k] for k in keys], allow_unused=True)
    with torch.no_grad():
        products = {
            k: widen(source_acts[k] - acts[k])
            * widen(torch.zeros_like(acts[k]) if g is None else g)
            for k, g in zip(keys, grads, strict=True)
        }
        n = len(base)
        rows = torch.arange(n, device=base.read.device)
        out = torch.empty(len(cells), n, dtype=torch.float64)
        for index, cell in enumerate(cells):
            prod = products[cell.site][..., columns(model, cell.component)]
            if cell.position is None:
                out[index] = prod.sum((1, 2)).cpu()
            elif cell.position == READ:
                out[index] = prod[rows, base.read].sum(-1).cpu()
            else:
                out[index] = prod[:, cell.position].sum(-1).cpu()
    return out.numpy()


def attribution_patch(
    model: Any,
    clean: Task | PromptPairs | Sequence[str],
    corrupt: Task | Sequence[str] | None = None,
    *,
    behavior: Any = None,
    grid: Sequence[str] = ("layer", "component", "position"),
    components: str | Sequence[str] = ("resid", "attn", "mlp", "head"),
    direction: Direction = "denoise",
    n: int | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> PatchResult:
    """Estimate every patching effect of a grid from one forward and one backward pass.

    Parameters
    ----------
    model : from :func:`mechwidgets.load_model`.
    clean, corrupt, behavior, grid, components, direction, n : as
        :func:`~mechwidgets.actions.interventions.patching.patch`.
    resamples, level, seed : bootstrap over pairs for the intervals.

    Returns
    -------
    PatchResult with ``method="attribution"``: ``effect`` is the estimated share of the
    clean-corrupt gap each cell moves.

    Examples
    --------
    >>> mw.attribution_patch(model, clean=mw.get_task_pairs("subject_number", n=64))
    """
    plan = plan_patching(
        model, clean, corrupt, behavior, grid, components, direction, n, gradient=True
    )
    moves = attribution_moves(model, plan.base, plan.source_acts, plan.cells, plan.pairs.scorer)
    return patch_result(model, plan, {"attribution": moves}, resamples, level, seed)
