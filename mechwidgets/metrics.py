"""Behaviour metrics: what an intervention is scored on, as one number per prompt.

A metric is a small frozen value naming what to read from the logits: the logit
difference between a correct and a wrong next word (:func:`logit_diff`), the log-prob or
probability of a target word (:func:`logprob`, :func:`prob`), the mean log-prob of the
tokens in a span (:func:`repeat_logprob`, the induction task's metric) or their loss
(:func:`span_loss`). A task's own ``behavior`` (``LogitDiff``, ``RepeatLogProb`` from
:mod:`mechwidgets.data.tasks`) is one of these values, so ``task.behavior`` and
``mw.metrics.logit_diff(...)`` are used the same way. :func:`bind` turns a metric and the
tokenized :class:`Prompts` into a differentiable scorer from logits to one value per
prompt; patching and attribution use the same scorer. Patching practice (RECIPES.md):
prefer these continuous metrics, and normalise with :func:`normalized_effect`.

>>> metric = logit_diff(correct="is", wrong="are")
>>> prompts = Prompts.build(model, ["the dog near the cars"])
>>> bind(metric, model, prompts)(logits)          # tensor of shape (1,)
>>> normalized_effect(patched=1.2, clean=2.0, corrupt=-2.0)
0.8
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mechwidgets.core.errors import SpecError, TaskError
from mechwidgets.data.tasks import LogitDiff, RepeatLogProb

__all__ = [
    "LogitDiff",
    "LogProb",
    "Prob",
    "Prompts",
    "RepeatLogProb",
    "Scorer",
    "SpanLoss",
    "bind",
    "describe",
    "logit_diff",
    "logprob",
    "normalized_effect",
    "orientation",
    "prob",
    "repeat_logprob",
    "span_loss",
]


@dataclass(frozen=True)
class LogProb:
    """Behaviour metric: log-probability of the target word at each prompt's read token."""

    target: tuple[str, ...]


@dataclass(frozen=True)
class Prob:
    """Behaviour metric: probability of the target word at each prompt's read token."""

    target: tuple[str, ...]


@dataclass(frozen=True)
class SpanLoss:
    """Behaviour metric: mean next-token loss over the tokens marked in ``mask``.

    The negative of :class:`RepeatLogProb` over the same mask; lower is better.
    """

    mask: np.ndarray


def _words(value: str | Sequence[str], name: str) -> tuple[str, ...]:
    words = (value,) if isinstance(value, str) else tuple(value)
    if not words or not all(isinstance(w, str) and w for w in words):
        raise SpecError(
            f"'{name}' must be a word or a list of words, one per prompt, got {value!r}"
        )
    return words


def logit_diff(correct: str | Sequence[str], wrong: str | Sequence[str]) -> LogitDiff:
    """Logit of the correct next word minus that of the wrong one, at the read token.

    Parameters
    ----------
    correct, wrong : one word for every prompt, or one word per prompt (per sample of the
        task). Each must be a single token, written as the tokenizer sees it after the
        prompt (``" is"`` with its space for BPE vocabularies).

    Examples
    --------
    >>> logit_diff(correct="is", wrong="are")
    >>> logit_diff(correct=pairs.clean_answer, wrong=pairs.corrupt_answer)
    """
    return LogitDiff(correct=_words(correct, "correct"), wrong=_words(wrong, "wrong"))


def logprob(target: str | Sequence[str]) -> LogProb:
    """Log-probability of ``target`` (one word, or one per prompt) at the read token."""
    return LogProb(target=_words(target, "target"))


def prob(target: str | Sequence[str]) -> Prob:
    """Probability of ``target`` (one word, or one per prompt) at the read token."""
    return Prob(target=_words(target, "target"))


def _mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != bool:
        raise SpecError(
            f"a span mask must be a bool array (sample, token), got {mask.dtype} "
            f"of shape {mask.shape}"
        )
    return mask


def repeat_logprob(mask: np.ndarray) -> RepeatLogProb:
    """Mean log-probability of the tokens marked in the bool (sample, token) ``mask``.

    Token indices count each text's own tokens (no special tokens); the induction task
    marks its repeated half this way.
    """
    return RepeatLogProb(mask=_mask(mask))


def span_loss(mask: np.ndarray) -> SpanLoss:
    """Mean next-token loss of the tokens marked in the bool (sample, token) ``mask``."""
    return SpanLoss(mask=_mask(mask))


def describe(metric: Any) -> str:
    """A short name of a metric for tables and verdicts, e.g. ``logit_diff(is-are)``."""
    if isinstance(metric, LogitDiff):
        if len(metric.correct) == 1 and len(metric.wrong) == 1:
            return f"logit_diff({metric.correct[0].strip()}-{metric.wrong[0].strip()})"
        return "logit_diff"
    if isinstance(metric, (LogProb, Prob)):
        name = "logprob" if isinstance(metric, LogProb) else "prob"
        return f"{name}({metric.target[0].strip()})" if len(metric.target) == 1 else name
    if isinstance(metric, RepeatLogProb):
        return "repeat_logprob"
    if isinstance(metric, SpanLoss):
        return "span_loss"
    raise SpecError(f"unknown behaviour metric {type(metric).__name__}: {_METRIC_HELP}")


def orientation(metric: Any) -> int:
    """+1 when a larger value means more of the behaviour, -1 for losses."""
    describe(metric)  # raises on an unknown metric
    return -1 if isinstance(metric, SpanLoss) else 1


def normalized_effect(patched: Any, clean: Any, corrupt: Any) -> Any:
    """Share of the clean-corrupt gap a patch moves: ``(patched - corrupt) / (clean - corrupt)``.

    1 means the patched run matches the clean run, 0 the corrupt run; floats or arrays
    (broadcast); NaN where clean equals corrupt.
    """
    gap = np.subtract(clean, corrupt)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(gap == 0, np.nan, np.subtract(patched, corrupt) / gap)
    return out if out.ndim else float(out)


_METRIC_HELP = (
    "use mw.metrics.logit_diff, logprob, prob, repeat_logprob or span_loss, or the task's "
    "own behavior"
)


@dataclass(frozen=True)
class Prompts:
    """Texts tokenized for intervening (right-padded), and the token each is read at.

    Parameters
    ----------
    texts : the prompts.
    inputs : ``input_ids``, ``attention_mask``, ``position_ids`` from ``model.tokenize``.
    start : (n,) padded index of each text's first own token (after special tokens).
    length : (n,) own tokens per text.
    read : (n,) padded index of the token whose next-token prediction is scored.
    samples : (n,) index of each prompt in its source (a task's samples), for metrics
        that hold one word or mask row per sample.
    n_source : number of samples in the source.
    """

    texts: tuple[str, ...]
    inputs: dict[str, torch.Tensor]
    start: torch.Tensor
    length: torch.Tensor
    read: torch.Tensor
    samples: np.ndarray
    n_source: int

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def width(self) -> int:
        """Padded sequence length."""
        return int(self.inputs["input_ids"].shape[1])

    @classmethod
    def build(
        cls,
        model: Any,
        texts: Sequence[str],
        positions: Sequence[int] | np.ndarray | None = None,
        samples: Sequence[int] | np.ndarray | None = None,
        n_source: int | None = None,
    ) -> Prompts:
        """Tokenize ``texts`` for ``model`` and locate each text's own tokens and read token.

        Parameters
        ----------
        positions : read token per text over its own tokens, negative from the end
            (a task's ``positions``); default the last own token.
        samples : index of each text in its source; default ``0..n-1``.
        n_source : size of the source; default ``len(texts)``.
        """
        texts = tuple(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TaskError("prompts must be a non-empty list of strings")
        inputs = model.tokenize(list(texts), padding_side="right")
        tok = model.tokenizer
        full = tok(list(texts))["input_ids"]
        own = tok(list(texts), add_special_tokens=False)["input_ids"]
        start = np.array([_offset(f, o, t) for f, o, t in zip(full, own, texts, strict=True)])
        length = np.array([len(o) for o in own])
        if (length == 0).any():
            i = int(np.flatnonzero(length == 0)[0])
            raise TaskError(f"prompt {i} ({texts[i]!r}) has no tokens; drop it")
        rel = np.full(len(texts), -1) if positions is None else np.asarray(positions, int)
        if rel.shape != (len(texts),):
            raise TaskError(
                f"positions must be one integer per prompt ({len(texts)}), got shape {rel.shape}"
            )
        bad = np.flatnonzero((rel >= length) | (rel < -length))
        if bad.size:
            i = int(bad[0])
            raise TaskError(
                f"read position {rel[i]} is outside prompt {i}, which has "
                f"{length[i]} tokens; count its own tokens, negative from the end"
            )
        read = start + np.where(rel < 0, rel + length, rel)
        samples = np.arange(len(texts)) if samples is None else np.asarray(samples, int)
        device = inputs["input_ids"].device
        return cls(
            texts=texts,
            inputs=inputs,
            start=torch.as_tensor(start, device=device),
            length=torch.as_tensor(length, device=device),
            read=torch.as_tensor(read, device=device),
            samples=samples,
            n_source=len(texts) if n_source is None else int(n_source),
        )


def _offset(full: list[int], own: list[int], text: str) -> int:
    """Where a text's own tokens start among its tokens with specials (e.g. after <bos>)."""
    for k in range(len(full) - len(own) + 1):
        if full[k : k + len(own)] == own:
            return k
    raise TaskError(
        f"cannot find the tokens of {text!r} among its tokens with special tokens; "
        "use a tokenizer that only adds special tokens around the text"
    )


def bind(metric: Any, model: Any, prompts: Prompts) -> Scorer:
    """A :class:`Scorer`: logits of ``k`` stacked copies of the prompts -> one value per row,
    differentiable (attribution patching backpropagates through it).

    Parameters
    ----------
    metric : a behaviour metric of this module (or a task's ``behavior``).
    model : the :class:`~mechwidgets.models.loading.Model` whose tokenizer reads the words.
    prompts : the prompts the logits come from (the clean prompts when patching).
    """
    return _bind(metric, model, prompts)


@functools.singledispatch
def _bind(metric: Any, model: Any, prompts: Prompts) -> Scorer:
    raise SpecError(f"unknown behaviour metric {type(metric).__name__}: {_METRIC_HELP}")


def _per_prompt(words: tuple[str, ...], prompts: Prompts, name: str) -> list[str]:
    """One word per prompt from one word for all, or one word per source sample."""
    if len(words) == 1:
        return [words[0]] * len(prompts)
    if len(words) != prompts.n_source:
        raise TaskError(
            f"'{name}' has {len(words)} words for {prompts.n_source} samples; "
            "give one word for all or one per sample"
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


def _ids(words: list[str], model: Any, prompts: Prompts) -> torch.Tensor:
    cache = {w: token_id(model.tokenizer, w) for w in set(words)}
    return torch.tensor([cache[w] for w in words], device=prompts.read.device)


def widen(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32 (half-precision logits are scored in float32, float64 kept)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _rows(logits: torch.Tensor, n: int) -> int:
    if logits.shape[0] % n:
        raise SpecError(f"logits have {logits.shape[0]} rows, not a multiple of {n} prompts")
    return logits.shape[0] // n


@dataclass(frozen=True)
class Scorer:
    """A bound metric: which next-token logits it reads, and the value it makes of them.

    ``positions`` (n, m) are the padded token positions whose next-token logits the metric
    reads for each prompt (the read token, or the tokens before a span's marked tokens);
    ``score_at`` maps logits gathered there, (k * n, m, vocab) for ``k`` stacked copies of
    the prompts, to one value per row. Reading only those positions lets the edit engine
    skip the output layer everywhere else (the largest single cost of a small model's
    forward pass, RECIPES.md "Extraction costs").
    """

    positions: torch.Tensor
    score_at: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Score full logits (k * n, seq, vocab): one value per row, differentiable."""
        k = _rows(logits, self.positions.shape[0])
        rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
        return self.score_at(logits[rows, self.positions.repeat(k, 1)])


def _copies(at: torch.Tensor, n: int) -> tuple[int, torch.Tensor]:
    """Number of stacked copies and a row index for gathered logits (rows, m, vocab)."""
    return at.shape[0] // n, torch.arange(at.shape[0], device=at.device)


@_bind.register
def _(metric: LogitDiff, model: Any, prompts: Prompts) -> Scorer:
    right = _ids(_per_prompt(metric.correct, prompts, "correct"), model, prompts)
    wrong = _ids(_per_prompt(metric.wrong, prompts, "wrong"), model, prompts)

    def score(at: torch.Tensor) -> torch.Tensor:
        k, rows = _copies(at, len(prompts))
        at = widen(at[:, 0])
        return at[rows, right.repeat(k)] - at[rows, wrong.repeat(k)]

    return Scorer(prompts.read[:, None], score)


def _target_scorer(metric: LogProb | Prob, model: Any, prompts: Prompts) -> Scorer:
    target = _ids(_per_prompt(metric.target, prompts, "target"), model, prompts)
    as_prob = isinstance(metric, Prob)

    def score(at: torch.Tensor) -> torch.Tensor:
        k, rows = _copies(at, len(prompts))
        at = widen(at[:, 0])
        value = at[rows, target.repeat(k)] - at.logsumexp(-1)
        return value.exp() if as_prob else value

    return Scorer(prompts.read[:, None], score)


_bind.register(LogProb, _target_scorer)
_bind.register(Prob, _target_scorer)


@_bind.register
def _(metric: RepeatLogProb, model: Any, prompts: Prompts) -> Scorer:
    return _span_scorer(metric.mask, prompts, sign=1.0)


@_bind.register
def _(metric: SpanLoss, model: Any, prompts: Prompts) -> Scorer:
    return _span_scorer(metric.mask, prompts, sign=-1.0)


def _span_scorer(mask: np.ndarray, prompts: Prompts, sign: float) -> Scorer:
    """Mean (sign x) log-prob of each prompt's marked tokens, each predicted from the one before."""
    mask = np.asarray(mask, bool)
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

    def score(at: torch.Tensor) -> torch.Tensor:
        k, _ = _copies(at, len(prompts))
        at = widen(at)  # (rows, marks, vocab): the logits that predict each marked token
        logp = at.gather(-1, target.repeat(k, 1)[..., None])[..., 0] - at.logsumexp(-1)
        return sign * (logp * wts.repeat(k, 1)).sum(-1)

    return Scorer(pos - 1, score)
