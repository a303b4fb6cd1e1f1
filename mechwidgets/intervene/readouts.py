"""Residual streams with an earlier layer's stream patched into a later one: recovery's engine.

In one forward pass per batch, the residual stream after each target block is replaced
(at every position) by the same prompt's stream after the source block, and the stream
after the readout block is read at each prompt's read token; the unpatched source and
readout streams come from a plain pass. :func:`mechwidgets.actions.recovery.recovery_test`
probes these.

>>> reads = patched_readouts(model, task, source=1, targets=(2,), readout=3, batch_size=64)
>>> reads["before"].shape, reads["after_2"].shape          # (n, d_model) each
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechwidgets.core.components import LayerComponent
from mechwidgets.data.tasks import Task
from mechwidgets.intervene.edits import Cell, capture, run_cells
from mechwidgets.intervene.prompts import Prompts
from mechwidgets.intervene.sites import site_of
from mechwidgets.intervene.sources import Source


def patched_readouts(
    model: Any,
    task: Task,
    source: int,
    targets: tuple[int, ...],
    readout: int,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """Residual streams at the read token: source and readout layers unpatched, and the
    readout layer with each target's residual stream replaced by the source's."""
    src_key = site_of(LayerComponent("resid", source))
    read_key = site_of(LayerComponent("resid", readout))
    cells = [Cell(LayerComponent("resid", t)) for t in targets]  # every position
    parts: dict[str, list[np.ndarray]] = {}
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
        found = {
            "before": acts[read_key],
            "source": acts[src_key],
            **{f"after_{t}": reads[i] for i, t in enumerate(targets)},
        }
        for key, value in found.items():
            parts.setdefault(key, []).append(value.float().cpu().numpy())
    return {key: np.concatenate(value) for key, value in parts.items()}
