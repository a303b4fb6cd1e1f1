"""Behaviour metrics: what an intervention is scored on, as one number per prompt.

A metric is a small frozen value naming what to read from the logits: the logit
difference between a correct and a wrong next word (:func:`logit_diff`), the log-prob or
probability of a target word (:func:`logprob`, :func:`prob`), the mean log-prob of the
tokens in a span (:func:`repeat_logprob`, the induction task's metric) or their loss
(:func:`span_loss`). Logits come from the model's output head: a decoder's
language-model head after the final norm, or for the BERT family the masked-LM head
(``BertForMaskedLM``'s ``cls``), which predicts the read token itself (put ``[MASK]``
there). Two metrics need no output head, so they score any model, encoders included: a
linear probe's readout of a hidden state (:func:`probe`: logit, margin or accuracy, from a
detect result, a fitted probe or given weights) and the hidden state itself
(:func:`hidden`: its norm or its projection on a direction). A task's own ``behavior``
(``LogitDiff``, ``RepeatLogProb`` from :mod:`mechwidgets.data.tasks`) is one of these
values, so ``task.behavior`` and ``mw.metrics.logit_diff(...)`` are used the same way.
:func:`bind` turns a metric and the tokenized :class:`Prompts` into a differentiable
:class:`Scorer`, from the logits (or the hidden state a probe or hidden-state metric
reads) to one value per prompt, checking first that the model can give what the metric
reads; patching, attribution and localize use the same scorer. Patching practice
(Heimersheim & Nanda 2024): prefer these continuous metrics, and normalise with
:func:`normalized_effect`.

>>> metric = logit_diff(correct="is", wrong="are")
>>> prompts = Prompts.build(model, ["the dog near the cars"])
>>> bind(metric, model, prompts)(logits)          # tensor of shape (1,)
>>> bind(probe(detect_result, cube=cube, score="margin"), model, prompts)(hidden)
>>> normalized_effect(patched=1.2, clean=2.0, corrupt=-2.0)
0.8
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr

from mechwidgets.core.components import EMBED, PREFIXES, LayerComponent
from mechwidgets.core.errors import ModelError, SpecError, TaskError
from mechwidgets.data.positions import Position, resolve_positions
from mechwidgets.data.tasks import LogitDiff, RepeatLogProb
from mechwidgets.models.adapters import walk
from mechwidgets.probes.linear import DEFAULT_STRENGTHS, LinearProbe, fit_probe

__all__ = [
    "HiddenState",
    "LogitDiff",
    "LogProb",
    "Prob",
    "ProbeReadout",
    "Prompts",
    "RepeatLogProb",
    "Scorer",
    "SpanLoss",
    "bind",
    "describe",
    "differentiable",
    "hidden",
    "logit_diff",
    "logprob",
    "normalized_effect",
    "orientation",
    "output_head",
    "probe",
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


#: how a probe readout is scored
ProbeScore = Literal["logit", "margin", "accuracy"]
PROBE_SCORES = ("logit", "margin", "accuracy")
#: components a probe or hidden-state metric can read: the residual stream and the
#: attention and MLP writes, each (.., d_model)
READABLE = ("resid", "attn", "mlp")


@dataclass(frozen=True)
class ProbeReadout:
    """Behaviour metric: a linear probe's readout of a hidden state at each prompt's read token.

    ``x @ coef + intercept`` gives the decision values, one column for a binary probe (its
    positive side is ``classes[1]``) or a given direction, one per class for a multiclass
    one. ``labels`` holds the true class, one for all prompts or one per source sample
    (None: the raw decision of a one-column probe). Build it with :func:`probe`.
    """

    component: LayerComponent
    coef: np.ndarray
    intercept: np.ndarray
    classes: tuple[Any, ...]
    score: ProbeScore
    labels: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class HiddenState:
    """Behaviour metric: the norm of a hidden state at each prompt's read token, or its
    projection on a unit ``direction``. Build it with :func:`hidden`."""

    component: LayerComponent
    direction: np.ndarray | None = None


def _component(layer: Any, component: str) -> LayerComponent:
    """The stream a probe or hidden-state metric reads: a block's output or write, or the
    embedding output (``"embed"`` or -1, the cube's embedding layer); checked at bind."""
    if component not in READABLE:
        raise SpecError(
            f"a probe or hidden-state metric reads one of {', '.join(READABLE)}, got {component!r}"
        )
    if layer == "embed":
        layer = EMBED
    if not isinstance(layer, int | np.integer) or isinstance(layer, bool):
        raise SpecError(f"layer must be a block index (an integer) or 'embed', got {layer!r}")
    if layer == EMBED and component != "resid":
        raise SpecError(f"the embedding layer has no {component} write; read component='resid'")
    return LayerComponent(PREFIXES[component], int(layer))


def probe(
    source: Any = None,
    *,
    cube: xr.Dataset | None = None,
    layer: int | None = None,
    component: str | None = None,
    direction: Any = None,
    bias: float = 0.0,
    labels: Any = None,
    score: ProbeScore = "logit",
) -> ProbeReadout:
    """A probe's readout of a hidden state, as a behaviour metric for any model.

    Three sources: a detect result and its ``cube`` (the probe of that run is fitted again
    at ``layer``/``component``, by default the result's best slice, with the run's probe
    kind and strengths; the labels default to the cube's label), a fitted
    :class:`~mechwidgets.probes.linear.LinearProbe` read at ``layer``, or a ``direction``
    (d_model,) and ``bias`` read at ``layer``. The probe reads the residual stream after
    block ``layer`` (``"embed"`` or -1: the embedding output; or the attention or MLP
    write, ``component="attn"``/``"mlp"``) at each prompt's read token, the token the
    cube was extracted at.

    Parameters
    ----------
    score : ``"logit"``: the decision value of the true class (without labels, the raw
        decision of a binary probe or a direction: its positive side); ``"margin"``: the
        true class's decision minus the largest other class's (for a binary probe, the
        decision signed towards the true class, so equal to ``"logit"``); ``"accuracy"``:
        1.0 where the probe decodes the true class, else 0 (a step function: attribution
        patching cannot use it).
    labels : the true class (a value of the probe's classes; for a direction, True or 1
        for its positive side), one for all prompts or one per sample of the prompts'
        source (a task's samples).

    Examples
    --------
    >>> res = mw.detect(cube, label="subject_number")
    >>> metric = mw.metrics.probe(res, cube=cube, score="margin")     # best slice
    >>> mw.metrics.probe(fit_probe(x, y, split), layer=3, labels=y, score="accuracy")
    >>> mw.metrics.probe(direction=w, bias=-0.5, layer=2)
    """
    if score not in PROBE_SCORES:
        raise SpecError(f"unknown probe score {score!r}: choose one of {', '.join(PROBE_SCORES)}")
    if source is not None and direction is not None:
        raise SpecError("give a probe source or a direction, not both")
    if getattr(source, "action", None) == "detect":
        fitted, layer, component, default = _refit(source, cube, layer, component)
        labels = default if labels is None else labels
    elif isinstance(source, LinearProbe):
        fitted = source
    elif source is None and direction is not None:
        w = np.asarray(direction, np.float64)
        if w.ndim != 1 or not np.isfinite(w).all():
            raise SpecError(f"direction must be one finite vector (d_model,), got shape {w.shape}")
        return _readout(
            _component(layer, component or "resid"),
            w[:, None],
            np.array([float(bias)]),
            (False, True),
            score,
            labels,
        )
    else:
        raise SpecError(
            "mw.metrics.probe takes a detect result (with cube=), a fitted LinearProbe, or "
            f"direction= and layer=; got {type(source).__name__}"
        )
    if fitted.encoding.kind == "continuous" and score != "logit":
        raise SpecError(
            f"score '{score}' needs classes; a probe of a continuous label scores its "
            "prediction, score='logit'"
        )
    return _readout(
        _component(layer, component or "resid"),
        fitted.coef,
        fitted.intercept,
        tuple(fitted.encoding.classes.tolist()),
        score,
        labels,
    )


def _readout(
    comp: LayerComponent,
    coef: np.ndarray,
    intercept: np.ndarray,
    classes: tuple[Any, ...],
    score: ProbeScore,
    labels: Any,
) -> ProbeReadout:
    """A ProbeReadout with its labels checked against the classes."""
    if labels is not None:
        values = np.atleast_1d(np.asarray(labels))
        if classes == (False, True):
            values = values.astype(bool)
        unknown = [v for v in np.unique(values) if v not in classes]
        if unknown:
            raise SpecError(
                f"label {unknown[0]!r} is not one of the probe's classes {list(classes)}"
            )
        labels = tuple(values.tolist())
    elif score != "logit" or coef.shape[1] > 1:
        raise SpecError(
            f"score '{score}' of a {len(classes)}-class probe needs the true class: pass "
            "labels=... (one for all prompts or one per sample)"
        )
    return ProbeReadout(comp, coef, intercept, classes, score, labels)


def _refit(
    result: Any, cube: xr.Dataset | None, layer: int | None, component: str | None
) -> tuple[LinearProbe, int, str, np.ndarray]:
    """The probe a detect run fitted at one slice, fitted again on its cube, and its labels."""
    if cube is None:
        raise SpecError(
            "a probe from a detect result is fitted again on the cube the result came from: "
            "pass cube=cube"
        )
    best = result.summary()["best"]
    component = component or (best["component"] if layer is None else "resid")
    layer = best["layer"] if layer is None else layer
    label = result.summary()["label"]
    for what, value in (("layer", layer), ("component", component)):
        if value not in cube[what].values:
            raise SpecError(f"{what} {value!r} is not in the cube; it has {cube[what].values}")
    if label not in cube:
        raise SpecError(f"the cube has no label '{label}'; pass the cube detect ran on")
    params = result.params
    fitted = fit_probe(
        cube["act"].sel(layer=layer, component=component).values,
        cube[label].values,
        cube["split"].values,
        probe=params.get("probe", "ridge"),
        metric=params.get("metric"),
        strengths=np.asarray(params.get("strengths", DEFAULT_STRENGTHS)),
    )
    return fitted, int(layer), str(component), cube[label].values


def hidden(layer: int, *, component: str = "resid", direction: Any = None) -> HiddenState:
    """The hidden state at each prompt's read token: its norm, or its projection on
    ``direction`` (scaled to unit length), as a behaviour metric for any model.

    Parameters
    ----------
    layer : the block whose output (``component="resid"``), attention write (``"attn"``)
        or MLP write (``"mlp"``) is read; ``"embed"`` (or -1) for the embedding output.

    Examples
    --------
    >>> mw.metrics.hidden(3)                                  # ||resid after block 3||
    >>> mw.metrics.hidden(3, direction=probe.coef[:, 0])      # its projection on a direction
    """
    if direction is None:
        return HiddenState(_component(layer, component))
    u = np.asarray(direction, np.float64)
    norm = float(np.linalg.norm(u)) if u.ndim == 1 else 0.0
    if u.ndim != 1 or not np.isfinite(norm) or norm == 0:
        raise SpecError(f"direction must be one finite non-zero vector, got shape {u.shape}")
    return HiddenState(_component(layer, component), u / norm)


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
    if isinstance(metric, ProbeReadout):
        return f"probe({metric.component}, {metric.score})"
    if isinstance(metric, HiddenState):
        return f"{'norm' if metric.direction is None else 'projection'}({metric.component})"
    raise SpecError(f"unknown behaviour metric {type(metric).__name__}: {_METRIC_HELP}")


def orientation(metric: Any) -> int:
    """+1 when a larger value means more of the behaviour, -1 for losses."""
    describe(metric)  # raises on an unknown metric
    return -1 if isinstance(metric, SpanLoss) else 1


def differentiable(metric: Any) -> bool:
    """False for a step function (a probe's accuracy), whose gradient attribution cannot use."""
    describe(metric)  # raises on an unknown metric
    return not (isinstance(metric, ProbeReadout) and metric.score == "accuracy")


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
    "use mw.metrics.logit_diff, logprob, prob, repeat_logprob, span_loss, probe or hidden, "
    "or the task's own behavior"
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
    read : (n,) padded index of the read token (whose next-token prediction is scored),
        resolved by :func:`mechwidgets.data.positions.resolve_positions` like extraction.
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
        positions: Sequence[Position] | np.ndarray | None = None,
        samples: Sequence[int] | np.ndarray | None = None,
        n_source: int | None = None,
    ) -> Prompts:
        """Tokenize ``texts`` for ``model`` and locate each text's own tokens and read token.

        Parameters
        ----------
        positions : the read token per text, as extraction reads it
            (:mod:`mechwidgets.data.positions`: an int over the tokens as the tokenizer
            gives them, special tokens included, negative from the end; a marker such as
            ``"[MASK]"``; or a character span); a task's ``positions``. Default the last
            token.
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
        read = resolve_positions(tok, texts, positions).index  # right-padded: same index
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
def _bind(metric: Any, model: Any, prompts: Prompts) -> Scorer:
    raise SpecError(f"unknown behaviour metric {type(metric).__name__}: {_METRIC_HELP}")


def output_head(model: Any) -> torch.nn.Module | None:
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


def _check_head(model: Any, metric: Any) -> None:
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


def _ids(words: list[str], model: Any, prompts: Prompts) -> torch.Tensor:
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


@_bind.register
def _(metric: LogitDiff, model: Any, prompts: Prompts) -> Scorer:
    _check_head(model, metric)
    right = _ids(_per_prompt(metric.correct, prompts, "correct"), model, prompts)
    wrong = _ids(_per_prompt(metric.wrong, prompts, "wrong"), model, prompts)
    n = len(prompts)

    def score(at: torch.Tensor) -> torch.Tensor:
        k, rows = at.shape[0] // n, torch.arange(at.shape[0], device=at.device)
        at = at[:, 0].to(torch.promote_types(at.dtype, torch.float32))
        return at[rows, right.to(at.device).repeat(k)] - at[rows, wrong.to(at.device).repeat(k)]

    return Scorer(prompts.read[:, None], score)


def _target_scorer(metric: LogProb | Prob, model: Any, prompts: Prompts) -> Scorer:
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


@_bind.register
def _(metric: RepeatLogProb, model: Any, prompts: Prompts) -> Scorer:
    return _span_scorer(metric, model, prompts, sign=1.0)


@_bind.register
def _(metric: SpanLoss, model: Any, prompts: Prompts) -> Scorer:
    return _span_scorer(metric, model, prompts, sign=-1.0)


def _span_scorer(
    metric: RepeatLogProb | SpanLoss, model: Any, prompts: Prompts, sign: float
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


def _check_stream(model: Any, metric: ProbeReadout | HiddenState, width: int) -> None:
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


@_bind.register
def _(metric: ProbeReadout, model: Any, prompts: Prompts) -> Scorer:
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


@_bind.register
def _(metric: HiddenState, model: Any, prompts: Prompts) -> Scorer:
    width = model.d_model if metric.direction is None else metric.direction.shape[0]
    _check_stream(model, metric, width)
    direction = None
    if metric.direction is not None:
        direction = torch.as_tensor(metric.direction, device=prompts.read.device)

    def score(at: torch.Tensor) -> torch.Tensor:
        x = at[:, 0].to(torch.promote_types(at.dtype, torch.float32))
        return x.norm(dim=-1) if direction is None else x @ direction.to(x)

    return Scorer(prompts.read[:, None], score, metric.component)
