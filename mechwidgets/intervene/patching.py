"""Activation patching over a grid of layer x component x position, heads included.

For each cell, the base run takes the source run's activation there and the metric is
re-read: denoising (the default) patches clean activations into the corrupt run and asks
whether the cell suffices to restore the behaviour; noising patches corrupt activations
into the clean run and asks whether the cell is necessary. The two can disagree (a
previous-token head is necessary for induction, not sufficient), so the result names its
direction. The same grid is also estimated by attribution patching and the result reports
how well the two agree (Pearson and Spearman over cells).

>>> pairs = mw.get_task_pairs("subject_number", n=64)
>>> res = mw.patch(model, clean=pairs, grid=("layer", "component", "position"))
>>> res.table.nlargest(5, "effect"), res.agreement
>>> mw.patch(model, clean=task_a, corrupt=task_b, direction="noise")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mechwidgets.data.catalog import PromptPairs
from mechwidgets.data.tasks import Task
from mechwidgets.intervene.attribution import attribution_moves
from mechwidgets.intervene.edits import Source, run_cells
from mechwidgets.intervene.grid import (
    Direction,
    PatchResult,
    patch_result,
    plan_patching,
)


def patch(
    model: Any,
    clean: Task | PromptPairs | Sequence[str],
    corrupt: Task | Sequence[str] | None = None,
    *,
    behavior: Any = None,
    grid: Sequence[str] = ("layer", "component", "position"),
    components: str | Sequence[str] = ("resid", "attn", "mlp", "head"),
    direction: Direction = "denoise",
    attribution: bool = True,
    n: int | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> PatchResult:
    """Patch every cell of a grid from the source run into the base run.

    Parameters
    ----------
    model : from :func:`mechwidgets.load_model`.
    clean : a Task, PromptPairs (its corrupt prompts are used when ``corrupt`` is None)
        or a list of texts.
    corrupt : one prompt per clean prompt with the same number of tokens (a Task or texts).
    behavior : the metric (:mod:`mechwidgets.intervene.metrics`): a logit metric (needs the model's
        output head: a decoder's language-model head, BERT's masked-LM head), or a probe
        or hidden-state metric (any model, encoders without a head included); default
        the clean task's own, or the clean-minus-corrupt answer logit difference for
        PromptPairs.
    grid : ``("layer", "component", "position")`` patches one token position at a time;
        ``("layer", "component")`` patches every position at once.
    components : kinds (``resid``, ``attn``, ``mlp``, ``head``, ``neuron``) or selectors
        such as ``"head:1.*"`` or ``"neuron:0.17"``.
    direction : ``"denoise"`` (clean into corrupt: sufficiency) or ``"noise"`` (corrupt
        into clean: necessity).
    attribution : also estimate the grid by attribution patching and report agreement.
    n : use the first ``n`` pairs.
    resamples, level, seed : bootstrap over pairs for the intervals.

    Returns
    -------
    PatchResult: one row per cell with the normalised effect and its interval.

    Examples
    --------
    >>> res = mw.patch(model, clean=mw.get_task_pairs("subject_number", n=64))
    >>> res.agreement["pearson"]
    """
    plan = plan_patching(
        model, clean, corrupt, behavior, grid, components, direction, n, gradient=attribution
    )
    source = Source(plan.source)
    values, _ = run_cells(model, plan.base, plan.cells, source, [plan.pairs.scorer])
    moves = {"activation": values[0].cpu().numpy() - plan.base_values}
    if attribution:
        moves["attribution"] = attribution_moves(
            model, plan.base, source, plan.cells, plan.pairs.scorer
        )
    return patch_result(model, plan, moves, resamples, level, seed)
