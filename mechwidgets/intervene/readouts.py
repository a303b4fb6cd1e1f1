"""Residual streams with an earlier layer's stream patched into a later one: recovery's engine.

In one forward pass per batch, the residual stream after each target block is replaced
(at every position) by the same prompt's stream after the source block, and the stream
after the readout block is read at each prompt's read token; the unpatched source and
readout streams come from a plain pass. :func:`mechwidgets.actions.recovery.recovery_test`
probes these.

>>> reads = patched_readouts(model, task, source=1, targets=(2,), readout=3, batch_size=64)
>>> reads.before.shape, reads.after[0].shape          # (n, d_model) each
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from mechwidgets.core.components import LayerComponent
from mechwidgets.data.tasks import Task
from mechwidgets.intervene.edits import Cell, capture, run_cells
from mechwidgets.intervene.prompts import Prompts
from mechwidgets.intervene.sites import site_of
from mechwidgets.intervene.sources import Source

if TYPE_CHECKING:
    from mechwidgets.models.loading import Model


@dataclass(frozen=True)
class Readouts:
    """Residual streams at each prompt's read token, ``(n, d_model)`` each: the readout
    layer unpatched (``before``), the source layer (``source``), and the readout layer with
    the source's stream patched into each target layer (``after``, in the targets' order)."""

    before: np.ndarray
    source: np.ndarray
    after: tuple[np.ndarray, ...]

    @property
    def streams(self) -> tuple[np.ndarray, ...]:
        """``before``, ``source``, then each of ``after``."""
        return (self.before, self.source, *self.after)


def patched_readouts(
    model: Model,
    task: Task,
    source: int,
    targets: tuple[int, ...],
    readout: int,
    batch_size: int,
) -> Readouts:
    """Residual streams at the read token: source and readout layers unpatched, and the
    readout layer with each target's residual stream replaced by the source's."""
    src_key = site_of(LayerComponent("resid", source))
    read_key = site_of(LayerComponent("resid", readout))
    cells = [Cell(LayerComponent("resid", t)) for t in targets]  # every position
    parts: list[list[np.ndarray]] = [[] for _ in range(2 + len(targets))]
    positions = None if task.positions is None else np.asarray(task.positions)
    for start in range(0, len(task), batch_size):
        index = np.arange(start, min(len(task), start + batch_size))
        texts = [task.texts[i] for i in index]
        prompts = Prompts.build(
            model, texts, None if positions is None else positions[index], index, len(task)
        )
        acts, _ = capture(model, prompts, [src_key, read_key])
        own = Source(prompts, site=src_key)  # each prompt's own stream at the source layer
        _, reads = run_cells(model, prompts, cells, own, [], readout=readout)
        assert reads is not None
        found: list[torch.Tensor] = [acts[read_key], acts[src_key], *reads]
        for part, value in zip(parts, found, strict=True):
            part.append(value.float().cpu().numpy())
    before, src, *after = (np.concatenate(part) for part in parts)
    return Readouts(before, src, tuple(after))
