"""Sources: what replaces a component's activation when it is patched or knocked out.

A :class:`Source` says where the edit engine (:mod:`~mechwidgets.intervene.edits`) takes
its replacement activations from: another run's (activation patching), or an ablation's
(:func:`ablation_source`): ``zero`` writes zeros (off the
model's distribution, so effects can be exaggerated); ``mean`` writes the mean over the
prompts at the same token position; ``resample`` writes the activation another prompt
produced at the same position (in distribution; Heimersheim & Nanda 2024). Rankings can
flip between them, so every number the toolkit reports names its ablation.

>>> cells = [Cell(LayerComponent("head", 1, head=2))]
>>> source = ablation_source("mean", prompts)
>>> values, _ = run_cells(model, prompts, cells, source, [bind(task.behavior, model, prompts)])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mechwidgets.core.errors import SpecError, TaskError
from mechwidgets.core.params import ABLATIONS
from mechwidgets.intervene.prompts import Prompts
from mechwidgets.intervene.sites import SiteKey

#: how the source prompts' activation becomes the replacement: itself (patching), zeros,
#: its mean over the prompts per token position, or another prompt's row (resample)
SourceKind = Literal["same", "zero", "mean", "rows"]


@dataclass(frozen=True)
class Source:
    """Where the edits' replacement activations come from, made inside the edit pass.

    Parameters
    ----------
    prompts : run in the same forward pass as the edited copies, stacked after them (so
        they must have the edited prompts' count and padded width); never edited.
    how : ``same`` (activation patching), ``zero``, ``mean`` (per token position, over the
        prompts with a real token there) or ``rows`` (prompt ``i`` takes prompt
        ``index[i]``'s activation: resample ablation).
    index : (n,) donor row per prompt, for ``rows``.
    site : read the source at this site for every cell (recovery: an earlier layer's
        residual stream); by default at each cell's own site.
    """

    prompts: Prompts
    how: SourceKind = "same"
    index: torch.Tensor | None = None
    site: SiteKey | None = None

    def maker(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``make(x)``, for inside a trace: the replacement (n, seq, width) from the source
        prompts' activation ``x``. Closes over tensors and plain values only."""
        how, index = self.how, self.index
        real = self.prompts.inputs["attention_mask"].to(torch.float32)[..., None].cpu()

        def make(x: torch.Tensor) -> torch.Tensor:
            if how == "zero":
                return torch.zeros_like(x)
            if how == "mean":
                mask = real.to(x.device)
                mean = (x.float() * mask).sum(0) / mask.sum(0).clamp(min=1)
                return mean.to(x.dtype).expand_as(x)
            if how == "rows":
                assert index is not None  # ablation_source gives resampling its donors
                return x[index.to(x.device)]
            return x

        return make


def ablation_source(
    how: str, prompts: Prompts, seed: int = 0, classes: np.ndarray | None = None
) -> Source:
    """The replacement for ablation ``how``, made from the prompts' own run inside the edit
    pass (:class:`Source`).

    Parameters
    ----------
    how : ``zero``, ``mean`` (per token position, over the prompts that have a real token
        there) or ``resample`` (another prompt's activation at the same position; each
        prompt's donor is drawn once, with ``seed``, and serves every site).
    classes : for ``resample``, draw each donor from another class (an interchange
        intervention: the activation of a prompt whose feature differs).
    """
    if how == "zero":
        return Source(prompts, "zero")
    if how == "mean":
        return Source(prompts, "mean")
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
