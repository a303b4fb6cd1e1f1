"""Scoring: a behaviour metric bound to prompts, read inside a traced forward pass.

:func:`bind` turns a metric (:mod:`~mechwidgets.intervene.metrics`) and the tokenized
:class:`~mechwidgets.intervene.prompts.Prompts` into a differentiable :class:`Scorer`,
from the logits (or the hidden state a probe or hidden-state metric reads) to one value
per prompt, checking first that the model can give what the metric reads; patching,
attribution and localize use the same scorer.

>>> prompts = Prompts.build(model, ["the dog near the cars"])
>>> bind(logit_diff(correct="is", wrong="are"), model, prompts)(logits)  # shape (1,)
>>> bind(probe(detect_result, cube=cube, score="margin"), model, prompts)(hidden)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mechwidgets.core.components import EMBED, LayerComponent
from mechwidgets.core.errors import ModelError, SpecError, TaskError
from mechwidgets.intervene.metrics import (
    METRIC_HELP,
    HiddenState,
    LogitDiff,
    LogProb,
    Prob,
    ProbeReadout,
    RepeatLogProb,
    SpanLoss,
    describe,
)
from mechwidgets.intervene.prompts import Prompts
from mechwidgets.models.adapters import walk

if TYPE_CHECKING:
    from mechwidgets.models.loading import Model


def bind(metric: Any, model: Model, prompts: Prompts) -> Scorer:
    """A :class:`Scorer`: what ``k`` stacked copies of the prompts give -> one value per row,
    differentiable (attribution patching backpropagates through it).

    Checks, before any forward pass, that the model can give what the metric reads (an
    output head for logit metrics, a causal one for span metrics, the probe's layer and
    width) and that its words or labels fit the prompts; a one-line error otherwise.

    Parameters
    ----------
    metric : a behaviour metric of this module (or a task's ``behavior``).
    model : the :class:`~mechwidgets.models.loading.Model` whose tokenizer reads the words.
    prompts : the prompts the logits come from (the clean prompts when patching).
    """
    return _bind(metric, model, prompts)


@functools.singledispatch
def _bind(metric: Any, model: Model, prompts: Prompts) -> Scorer:
    raise SpecError(f"unknown behaviour metric {type(metric).__name__}: {METRIC_HELP}")


def output_head(model: Model) -> torch.nn.Module | None:
    """The module that maps final hidden states to vocabulary logits, or None.

    A decoder's language-model head (after its final norm), or for the BERT family the
    masked-LM prediction head (``BertForMaskedLM.cls.predictions``: dense, activation,
    LayerNorm and decoder), which reads the last block's output. None for a model loaded
    without its head (``AutoModel``).
    """
    if model.adapter.unembed is None:
        return None
    try:
        return walk(model.hf, model.adapter.unembed)
    except AttributeError:
        return None


def _check_head(model: Model, metric: Any) -> None:
    if output_head(model) is None:
        kind = "masked-LM" if model.adapter.family == "bert" else "language-model"
        raise ModelError(
            f"{model.name} has no output head, so {describe(metric)} cannot be read; load "
            f"it with its {kind} head, or score a probe or hidden state (mw.metrics.probe, "
            "mw.metrics.hidden)"
        )


def _per_prompt(words: tuple[Any, ...], prompts: Prompts, name: str) -> list[Any]:
    """One value per prompt from one value for all, or one value per source sample."""
    if len(words) == 1:
        return [words[0]] * len(prompts)
    if len(words) != prompts.n_source:
        raise TaskError(
            f"'{name}' has {len(words)} values for {prompts.n_source} samples; "
            "give one for all or one per sample"
        )
    return [words[i] for i in prompts.samples]


def token_id(tokenizer: Any, word: str) -> int:
    """The id of ``word`` if it is exactly one known token, else a one-line TaskError."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise TaskError(
            f"answer {word!r} is {len(ids)} tokens {pieces} for this tokenizer, not "
            "one; give a single-token answer (e.g. ' is' with its space for BPE)"
        )
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and ids[0] == unk and word.strip() != tokenizer.unk_token:
        raise TaskError(f"answer {word!r} is not in the tokenizer's vocabulary; give a known word")
    return int(ids[0])


def _ids(words: list[str], model: Model, prompts: Prompts) -> torch.Tensor:
    cache = {w: token_id(model.tokenizer, w) for w in set(words)}
    return torch.tensor([cache[w] for w in words], device=prompts.read.device)


def _rows(values: torch.Tensor, n: int) -> int:
    if values.shape[0] % n:
        raise SpecError(f"values have {values.shape[0]} rows, not a multiple of {n} prompts")
    return values.shape[0] // n


@dataclass(frozen=True)
class Scorer:
    """A bound metric: what it reads, at which tokens, and the value it makes of it.

    ``component`` is None for a metric of the output head's logits, else the hidden state
    it reads (a probe or hidden-state metric). ``positions`` (n, m) are the padded token
    positions it reads for each prompt (the read token, or the tokens before a span's
    marked tokens); ``score_at`` maps what is gathered there, (k * n, m, vocab or width)
    for ``k`` stacked copies of the prompts, to one value per row. Reading only those
    positions lets the edit engine skip the output head everywhere else (the largest single
    cost of a small model's forward pass).

    ``score_at`` runs inside traces, remote ones included, so it closes over tensors and
    plain values only and calls nothing but torch (nnsight ships it to NDIF by its source,
    where this package is not installed); that is why it widens to float32 inline.
    """

    positions: torch.Tensor
    score_at: Callable[[torch.Tensor], torch.Tensor]
    component: LayerComponent | None = None

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """Score full logits (k * n, seq, vocab), or the hidden states (k * n, seq, width) at
        the scorer's component: one value per row, differentiable."""
        k = _rows(values, self.positions.shape[0])
        rows = torch.arange(values.shape[0], device=values.device)[:, None]
        return self.score_at(values[rows, self.positions.repeat(k, 1)])


@_bind.register(LogitDiff)
def _(metric: LogitDiff, model: Model, prompts: Prompts) -> Scorer:
    _check_head(model, metric)
    right = _ids(_per_prompt(metric.correct, prompts, "correct"), model, prompts)
    wrong = _ids(_per_prompt(metric.wrong, prompts, "wrong"), model, prompts)
    n = len(prompts)

    def score(at: torch.Tensor) -> torch.Tensor:
        k, rows = at.shape[0] // n, torch.arange(at.shape[0], device=at.device)
        at = at[:, 0].to(torch.promote_types(at.dtype, torch.float32))
        return at[rows, right.to(at.device).repeat(k)] - at[rows, wrong.to(at.device).repeat(k)]

    return Scorer(prompts.read[:, None], score)


def _target_scorer(metric: LogProb | Prob, model: Model, prompts: Prompts) -> Scorer:
    _check_head(model, metric)
    target = _ids(_per_prompt(metric.target, prompts, "target"), model, prompts)
    as_prob = isinstance(metric, Prob)
    n = len(prompts)

    def score(at: torch.Tensor) -> torch.Tensor:
        k, rows = at.shape[0] // n, torch.arange(at.shape[0], device=at.device)
        at = at[:, 0].to(torch.promote_types(at.dtype, torch.float32))
        value = at[rows, target.to(at.device).repeat(k)] - at.logsumexp(-1)
        return value.exp() if as_prob else value

    return Scorer(prompts.read[:, None], score)


_bind.register(LogProb, _target_scorer)
_bind.register(Prob, _target_scorer)


@_bind.register(RepeatLogProb)
def _(metric: RepeatLogProb, model: Model, prompts: Prompts) -> Scorer:
    return _span_scorer(metric, model, prompts, sign=1.0)


@_bind.register(SpanLoss)
def _(metric: SpanLoss, model: Model, prompts: Prompts) -> Scorer:
    return _span_scorer(metric, model, prompts, sign=-1.0)


def _span_scorer(
    metric: RepeatLogProb | SpanLoss, model: Model, prompts: Prompts, sign: float
) -> Scorer:
    """Mean (sign x) log-prob of each prompt's marked tokens, each predicted from the one before."""
    _check_head(model, metric)
    if not model.adapter.causal:
        raise ModelError(
            f"{describe(metric)} scores next-token predictions, but {model.name} is a masked "
            "LM that predicts the token it reads; use logit_diff, logprob or prob at a [MASK]"
        )
    mask = np.asarray(metric.mask, bool)
    if mask.ndim != 2 or mask.shape[0] != prompts.n_source:
        raise TaskError(
            f"the span mask has shape {mask.shape} but there are {prompts.n_source} "
            "samples; give one row per sample"
        )
    start, length = prompts.start.cpu().numpy(), prompts.length.cpu().numpy()
    marks = []
    for i, sample in enumerate(prompts.samples):
        t = np.flatnonzero(mask[sample, : length[i]])
        t = t[start[i] + t >= 1]  # a token is predicted from the token before it
        if t.size == 0:
            raise TaskError(f"prompt {i} has no marked token to score; every prompt needs one")
        marks.append(start[i] + t)
    width = max(len(m) for m in marks)
    where = np.ones((len(marks), width), dtype=np.int64)  # padding: a valid, zero-weight slot
    weight = np.zeros((len(marks), width), dtype=np.float32)
    for i, m in enumerate(marks):
        where[i, : len(m)], weight[i, : len(m)] = m, 1.0 / len(m)
    device = prompts.read.device
    pos = torch.as_tensor(where, device=device)
    wts = torch.as_tensor(weight, device=device)
    target = prompts.inputs["input_ids"].gather(1, pos)
    n = len(prompts)

    def score(at: torch.Tensor) -> torch.Tensor:
        k = at.shape[0] // n
        # (rows, marks, vocab): the logits that predict each marked token
        at = at.to(torch.promote_types(at.dtype, torch.float32))
        picked = at.gather(-1, target.to(at.device).repeat(k, 1)[..., None])[..., 0]
        logp = picked - at.logsumexp(-1)
        return sign * (logp * wts.to(at.device).repeat(k, 1)).sum(-1)

    return Scorer(pos - 1, score)


def _check_stream(model: Model, metric: ProbeReadout | HiddenState, width: int) -> None:
    """A one-line error unless the model has the metric's layer and its stream's width."""
    last = model.shape.n_layers - 1
    if not EMBED <= metric.component.layer <= last:
        raise SpecError(
            f"{describe(metric)} reads layer {metric.component.layer}, but {model.name} has "
            f"layers 0-{last} (and {EMBED}, the embedding output)"
        )
    if width != model.d_model:
        raise SpecError(
            f"{describe(metric)} has {width} weights but {model.name}'s hidden states have "
            f"{model.d_model}; use a probe fitted on this model's activations"
        )


@_bind.register(ProbeReadout)
def _(metric: ProbeReadout, model: Model, prompts: Prompts) -> Scorer:
    _check_stream(model, metric, metric.coef.shape[0])
    device = prompts.read.device
    coef = torch.as_tensor(metric.coef, device=device)
    intercept = torch.as_tensor(metric.intercept, device=device)
    n = len(prompts)
    truth = None
    if metric.labels is not None:
        labels = _per_prompt(metric.labels, prompts, "labels")
        truth = torch.as_tensor([metric.classes.index(v) for v in labels], device=device)
    binary = coef.shape[1] == 1
    kind = metric.score

    def score(at: torch.Tensor) -> torch.Tensor:
        x = at[:, 0].to(torch.promote_types(at.dtype, torch.float32))
        decision = x @ coef.to(x) + intercept.to(x)  # (rows, columns)
        if truth is None:
            return decision[:, 0]
        true = truth.to(x.device).repeat(decision.shape[0] // n)
        if binary:  # one column: its positive side is classes[1]
            signed = torch.where(true == 1, decision[:, 0], -decision[:, 0])
            return (signed > 0).to(x.dtype) if kind == "accuracy" else signed
        rows = torch.arange(decision.shape[0], device=decision.device)
        own = decision[rows, true]
        if kind == "logit":
            return own
        if kind == "accuracy":
            return (decision.argmax(-1) == true).to(x.dtype)
        other = decision.scatter(1, true[:, None], float("-inf")).amax(-1)
        return own - other

    return Scorer(prompts.read[:, None], score, metric.component)


@_bind.register(HiddenState)
def _(metric: HiddenState, model: Model, prompts: Prompts) -> Scorer:
    width = model.d_model if metric.direction is None else metric.direction.shape[0]
    _check_stream(model, metric, width)
    direction = None
    if metric.direction is not None:
        direction = torch.as_tensor(metric.direction, device=prompts.read.device)

    def score(at: torch.Tensor) -> torch.Tensor:
        x = at[:, 0].to(torch.promote_types(at.dtype, torch.float32))
        return x.norm(dim=-1) if direction is None else x @ direction.to(x)

    return Scorer(prompts.read[:, None], score, metric.component)
