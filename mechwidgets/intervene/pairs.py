"""Clean/corrupt prompt pairs: the two sides, tokenized and checked, and the metric bound to them.

Patching, attribution patching and localize's noising take their data the same ways: a
:class:`~mechwidgets.data.tasks.Task`, :class:`~mechwidgets.data.catalog.PromptPairs`
(whose corrupt side is used unless corrupt prompts are given) or a list of texts, and
corrupt prompts as a Task or texts. :func:`clean_and_corrupt` is the one place those
become a task and corrupt texts; :func:`prepare_pairs` tokenizes both sides, checks
that every pair has the same token count (:func:`check_lengths`) and binds the metric.

>>> task, corrupt = clean_and_corrupt(mw.get_task_pairs("subject_number", n=64))
>>> pairs = prepare_pairs(model, task, corrupt, None)
>>> pairs.base_and_source("denoise")  # (corrupt, clean): clean activations go in
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mechwidgets.core.errors import SpecError, TaskError
from mechwidgets.core.params import DIRECTIONS, Direction
from mechwidgets.data.catalog import PromptPairs
from mechwidgets.data.tasks import Task
from mechwidgets.intervene.prompts import Prompts
from mechwidgets.intervene.scoring import Scorer, bind

if TYPE_CHECKING:
    from mechwidgets.models.loading import Model


@dataclass(frozen=True)
class PairedPrompts:
    """Clean and corrupt prompts of equal token counts, and the metric bound to the clean ones.

    ``scorer`` scores any run (clean, corrupt or patched) against the clean prompts'
    answers and read tokens, which the pairs share.
    """

    clean: Prompts
    corrupt: Prompts
    metric: Any
    scorer: Scorer

    def base_and_source(self, direction: Direction) -> tuple[Prompts, Prompts]:
        """(prompts that run, prompts whose activations are patched in) for a direction."""
        if direction not in DIRECTIONS:
            raise SpecError(f"unknown direction '{direction}': choose denoise or noise")
        return (self.corrupt, self.clean) if direction == "denoise" else (self.clean, self.corrupt)


def as_task(data: Task | PromptPairs | Sequence[str], what: str = "clean") -> Task:
    """A Task from a Task, PromptPairs (its clean side: :meth:`PromptPairs.to_task`) or a
    list of texts (a Task of those texts with no labels)."""
    if isinstance(data, PromptPairs):
        return data.to_task()
    if isinstance(data, Task):
        return data
    if isinstance(data, str) or not isinstance(data, Sequence):
        raise TaskError(
            f"'{what}' must be a Task, PromptPairs or a list of texts, got {type(data).__name__}"
        )
    return Task(name=what, texts=list(data), labels={}, split=np.full(len(data), "test"))


def clean_and_corrupt(
    clean: Task | PromptPairs | Sequence[str],
    corrupt: Task | Sequence[str] | None = None,
) -> tuple[Task, list[str] | None]:
    """The clean side as a Task and the corrupt texts, one per clean sample: as given, or
    PromptPairs' own corrupt side when ``corrupt`` is None (else None).

    Raises a one-line TaskError for data of another type or a count that differs.
    """
    task = as_task(clean, "clean")
    if corrupt is None and isinstance(clean, PromptPairs):
        corrupt = clean.corrupt
    if corrupt is None:
        return task, None
    texts = list(as_task(corrupt, "corrupt").texts)
    if len(texts) != len(task):
        raise TaskError(
            f"{len(task)} clean prompts but {len(texts)} corrupt ones; "
            "give one corrupt prompt per clean prompt"
        )
    return task, texts


def prepare_pairs(
    model: Model,
    clean: Task | PromptPairs | Sequence[str],
    corrupt: Task | Sequence[str] | None,
    behavior: Any,
    n: int | None = None,
) -> PairedPrompts:
    """Tokenize and check clean/corrupt pairs; choose the metric.

    Parameters
    ----------
    clean : a Task, PromptPairs (whose corrupt side is used when ``corrupt`` is None) or
        a list of texts.
    corrupt : one corrupt prompt per clean one, with the same number of tokens.
    behavior : the metric; default the clean Task's ``behavior``, or for PromptPairs the
        logit difference between the clean and the corrupt answer.
    n : use only the first ``n`` pairs.
    """
    task, bad_texts = clean_and_corrupt(clean, corrupt)
    if bad_texts is None:
        raise TaskError("give corrupt prompts (one per clean prompt), or pass PromptPairs")
    texts, positions, default = task.texts, task.positions, task.behavior
    metric = behavior if behavior is not None else default
    if metric is None:
        raise SpecError("no behaviour metric: pass behavior=mw.metrics.logit_diff(...) or similar")
    total = len(texts)
    keep = total if n is None else min(int(n), total)
    if list(texts[:keep]) == list(bad_texts[:keep]):
        raise TaskError(
            f"the clean and corrupt prompts are the same in all {keep} pairs, so patching "
            "cannot move the metric; give corrupt prompts that differ (e.g. the other number)"
        )
    if keep < 2:
        raise TaskError(f"patching needs at least 2 prompt pairs, got {keep}")
    rows = np.arange(keep)
    pos = None if positions is None else np.asarray(positions)[rows]
    clean_p = Prompts.build(model, texts[:keep], pos, rows, total)
    corrupt_p = Prompts.build(model, bad_texts[:keep], pos, rows, total)
    check_lengths(clean_p, corrupt_p)
    return PairedPrompts(clean_p, corrupt_p, metric, bind(metric, model, clean_p))


def check_lengths(clean: Prompts, corrupt: Prompts) -> None:
    """Raise a one-line TaskError unless every pair has the same token count and layout."""
    same = (clean.length == corrupt.length) & (clean.start == corrupt.start)
    if not bool(same.all()):
        i = int(torch.nonzero(~same)[0, 0])
        raise TaskError(
            f"pair {i} has {int(clean.length[i])} clean and {int(corrupt.length[i])} corrupt "
            f"tokens ({clean.texts[i]!r} vs {corrupt.texts[i]!r}); patching needs equal counts"
        )
