"""Behaviour metrics: what an intervention is scored on, as small frozen values.

A metric names what to read from the logits: the logit difference between a correct and
a wrong next word (:func:`logit_diff`), the log-prob or probability of a target word
(:func:`logprob`, :func:`prob`), the mean log-prob of the tokens in a span
(:func:`repeat_logprob`, the induction task's metric) or their loss (:func:`span_loss`).
Logits come from the model's output head: a decoder's language-model head after the
final norm, or for the BERT family the masked-LM head (``BertForMaskedLM``'s ``cls``),
which predicts the read token itself (put ``[MASK]`` there). Two metrics need no output
head, so they score any model, encoders included: a linear probe's readout of a hidden
state (:func:`probe`: logit, margin or accuracy, from a detect result, a fitted probe or
given weights) and the hidden state itself (:func:`hidden`: its norm or its projection
on a direction). A task's own ``behavior`` is one of these values, so ``task.behavior``
and ``mw.metrics.logit_diff(...)`` are used the same way. This module loads no torch
(tasks import it); :func:`mechwidgets.intervene.scoring.bind` turns a metric and
tokenized prompts into the differentiable scorer that patching, attribution and
localize read. Patching practice (Heimersheim & Nanda 2024): prefer these continuous
metrics, and normalise with :func:`normalized_effect`.

>>> metric = logit_diff(correct="is", wrong="are")
>>> describe(metric)
'logit_diff(is-are)'
>>> normalized_effect(patched=1.2, clean=2.0, corrupt=-2.0)
0.8
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mechwidgets.core.components import EMBED, STREAMS, LayerComponent
from mechwidgets.core.errors import SpecError

if TYPE_CHECKING:
    import xarray as xr

    from mechwidgets.probes.linear import LinearProbe

__all__ = [
    "HiddenState",
    "LogitDiff",
    "LogProb",
    "Prob",
    "ProbeReadout",
    "RepeatLogProb",
    "SpanLoss",
    "describe",
    "differentiable",
    "hidden",
    "logit_diff",
    "logprob",
    "normalized_effect",
    "orientation",
    "probe",
    "prob",
    "repeat_logprob",
    "span_loss",
]


@dataclass(frozen=True)
class LogitDiff:
    """Behaviour metric: logit of the correct next word minus that of the wrong one.

    Read at each sample's position (the last token of a prefix): for subject-verb
    agreement ``correct[i]`` is "is" and ``wrong[i]`` "are" for a singular subject.
    Words are single tokens of the task's model.
    """

    correct: tuple[str, ...]
    wrong: tuple[str, ...]


@dataclass(frozen=True)
class RepeatLogProb:
    """Behaviour metric: mean log-probability of the tokens where ``mask`` is True.

    ``mask`` is bool (sample, token): ``mask[i, t]`` marks token ``t`` of text ``i`` as
    predictable from the tokens before it (the repeated half of an induction sequence),
    so the metric is the mean over marked ``(i, t)`` of ``log p(token_t | tokens_<t)``.
    Unlike a read position (:mod:`mechwidgets.data.positions`), the mask's token indices
    count the text's own tokens (no special tokens): it marks a span of the text.
    """

    mask: np.ndarray


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
    if component not in STREAMS:  # each (.., d_model), as the probe's weights
        raise SpecError(
            f"a probe or hidden-state metric reads one of {', '.join(STREAMS)}, got {component!r}"
        )
    if layer == "embed":
        layer = EMBED
    if not isinstance(layer, int | np.integer) or isinstance(layer, bool):
        raise SpecError(f"layer must be a block index (an integer) or 'embed', got {layer!r}")
    if layer == EMBED and component != "resid":
        raise SpecError(f"the embedding layer has no {component} write; read component='resid'")
    return LayerComponent(STREAMS[STREAMS.index(component)], int(layer))  # typed as a Kind


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
    from mechwidgets.probes.linear import LinearProbe  # scikit-learn on first use

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
    from mechwidgets.probes.linear import DEFAULT_STRENGTHS, fit_probe

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
    raise SpecError(f"unknown behaviour metric {type(metric).__name__}: {METRIC_HELP}")


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


METRIC_HELP = (
    "use mw.metrics.logit_diff, logprob, prob, repeat_logprob, span_loss, probe or hidden, "
    "or the task's own behavior"
)
