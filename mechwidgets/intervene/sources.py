"""Zero, mean and resample ablation: what replaces a component when it is knocked out.

Each ablation is a source of replacement activations for the edit engine
(:mod:`~mechwidgets.intervene.edits`): ``zero`` writes zeros (off the
model's distribution, so effects can be exaggerated); ``mean`` writes the mean over the
prompts at the same token position; ``resample`` writes the activation another prompt
produced at the same position (in distribution; Heimersheim & Nanda 2024). Rankings can
flip between them, so every number the toolkit reports names its ablation.

>>> cells = [Cell(LayerComponent("attention_head", 1, head=2))]
>>> values, _ = ablate(model, prompts, cells, "mean", bind(task.behavior, model, prompts))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mechwidgets.core.errors import SpecError, TaskError
from mechwidgets.intervene.edits import Cell, Source, run_cells
from mechwidgets.intervene.metrics import Prompts, Scorer

ABLATIONS = ("zero", "mean", "resample")


def ablation_source(
    how: str, prompts: Prompts, seed: int = 0, classes: np.ndarray | None = None
) -> Source:
    """The replacement for ablation ``how``, made from the prompts' own run inside the edit
    pass (:class:`~mechwidgets.intervene.edits.Source`).

    Parameters
    ----------
    how : ``zero``, ``mean`` (per token position, over the prompts that have a real token
        there) or ``resample`` (another prompt's activation at the same position; each
        prompt's donor is drawn once, with ``seed``, and serves every site).
    classes : for ``resample``, draw each donor from another class (an interchange
        intervention: the activation of a prompt whose feature differs).
    """
    if how in ("zero", "mean"):
        return Source(prompts, how)
    if how == "resample":
        index = torch.as_tensor(donors(prompts, seed, classes))
        return Source(prompts, "rows", index)
    raise SpecError(f"unknown ablation '{how}': choose one of {', '.join(ABLATIONS)}")


def donors(prompts: Prompts, seed: int = 0, classes: np.ndarray | None = None) -> np.ndarray:
    """For each prompt, another prompt at least as long (so every position it reads is real),
    of another class when ``classes`` are given."""
    ends = (prompts.start + prompts.length).cpu().numpy()
    rng = np.random.default_rng([seed, 7])
    out = np.empty(len(ends), dtype=np.int64)
    other = np.arange(len(ends))[None] != np.arange(len(ends))[:, None]
    if classes is not None:
        other &= np.asarray(classes)[None] != np.asarray(classes)[:, None]
    for i, end in enumerate(ends):
        pool = np.flatnonzero((ends >= end) & other[i])
        if pool.size == 0:
            kind = "of another class " if classes is not None else ""
            raise TaskError(
                f"resampling needs a second prompt {kind}at least as long as prompt {i} "
                f"({ends[i]} tokens); add prompts or use mean ablation"
            )
        out[i] = rng.choice(pool)
    return out


def ablate(
    model: Any,
    prompts: Prompts,
    cells: Sequence[Cell],
    how: str,
    scorer: Scorer,
    readout: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ablate each cell in turn (``how`` = zero, mean or resample) and score every prompt.

    Returns
    -------
    ``(values, readouts)`` as :func:`~mechwidgets.intervene.edits.run_cells`:
    (cells, n) metric values, and the residual stream after block ``readout`` at the read
    token (cells, n, d_model) when asked for.
    """
    source = ablation_source(how, prompts, seed)
    values, reads = run_cells(model, prompts, cells, source, [scorer], readout)
    return values[0], reads
