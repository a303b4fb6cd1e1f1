"""Every registered action's parameters: one typed, frozen ``Params`` class per action.

A ``Params`` class holds each parameter's type, default and constraint (a count of 1 or
more, a level in (0, 1), the choices of a ``Literal``). The probing protocol's fields
(:class:`ProtocolParams`: seeds, permutations, resamples, strengths, level, correction,
probe, ...) are declared once and shared by detect, compare, collapse and polysemantic;
the bootstrap's (:class:`IntervalParams`: resamples, level) by localize, patching and
recovery. :func:`check` validates a mapping against a class and turns the first problem
into one line that names the parameter and what it takes, with a "did you mean" for a
typo, so a RunSpec, the magic, the Launcher and the public functions (``mw.detect(...)``)
refuse a bad parameter the same way, before any work.

This module imports pydantic only (no torch, scikit-learn or xarray), so a config is
checked in well under a second; :mod:`mechwidgets.core.registry` maps each action's name
to its class here.

>>> check(DetectParams, {"label": "subject_number", "permutations": 100}, "detect").permutations
100
>>> check(DetectParams, {"level": 1.5}, "detect")
Traceback (most recent call last):
mechwidgets.core.errors.SpecError: bad value 1.5 for 'detect' parameter 'level': give a ...
"""

from __future__ import annotations

import difflib
import numbers
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

from annotated_types import Ge, Gt, Lt, MinLen
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError
from pydantic.fields import FieldInfo

from mechwidgets.core.components import INTERVENED
from mechwidgets.core.errors import SpecError

# the choices a parameter takes, declared here once: the engine imports them from here
Probe = Literal["ridge", "logistic"]
Metric = Literal["accuracy", "auc", "r2"]
Correction = Literal["holm", "bh"]
Cka = Literal["debiased", "linear"]
Ablation = Literal["zero", "mean", "resample"]
Intervention = Literal[Ablation, "patch"]
Direction = Literal["denoise", "noise"]
GridAxis = Literal["layer", "component", "position"]
PROBES: tuple[str, ...] = typing.get_args(Probe)
METRICS: tuple[str, ...] = typing.get_args(Metric)
CORRECTIONS: tuple[str, ...] = typing.get_args(Correction)
ABLATIONS: tuple[str, ...] = typing.get_args(Ablation)
INTERVENTIONS: tuple[str, ...] = typing.get_args(Intervention)
DIRECTIONS: tuple[str, ...] = typing.get_args(Direction)
GRID_AXES: tuple[GridAxis, ...] = typing.get_args(GridAxis)


def _whole(value: Any) -> Any:
    """A whole number (numpy's included) as an int; a bool, a float or a string is refused."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise ValueError("not a whole number")


def _number(value: Any) -> Any:
    """A real number (numpy's included) as a float; a bool or a string is refused."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise ValueError("not a number")


def _listed(value: Any) -> Any:
    """A range or an array (numpy, pandas) as a list, so a sequence type takes it."""
    if isinstance(value, range) or hasattr(value, "tolist"):
        return list(value.tolist() if hasattr(value, "tolist") else value)
    return value


Whole = BeforeValidator(_whole)
Real = BeforeValidator(_number)
#: how many of something: a whole number >= 1
Count = Annotated[int, Whole, Ge(1)]
#: a layer index: a whole number >= 0
Layer = Annotated[int, Whole, Ge(0)]
#: a confidence level, strictly between 0 and 1
Level = Annotated[float, Real, Gt(0), Lt(1)]
Positive = Annotated[float, Real, Gt(0)]
Name = Annotated[str, Field(strict=True)]
Names = Name | Annotated[Sequence[Name], BeforeValidator(_listed)]


def _many(item: Any) -> Any:
    """One ``item`` or a list of them (a tuple, range or array is taken as a list)."""
    return item | Annotated[Sequence[item], BeforeValidator(_listed), MinLen(1)]


class Params(BaseModel):
    """Base of every action's parameters: frozen, and an unknown name is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    #: whether the action runs a RunSpec's probe controls beside its probes
    takes_controls: ClassVar[bool] = False


class IntervalParams(Params):
    """The bootstrap over samples behind every interval."""

    resamples: Count = Field(1000, description="bootstrap resamples for the intervals")
    level: Level = Field(0.95, description="confidence level of the intervals")


class ProtocolParams(IntervalParams):
    """The probing protocol (:class:`mechwidgets.probes.sweep.Protocol`) as a config sets
    it; ``seeds`` is a count here (seed values start at the run's ``seed``)."""

    seeds: Count = Field(5, description="seeds: shuffles, subspaces, control tasks, bootstraps")
    permutations: Count = Field(200, description="control draws per seed (200+ for p-values)")
    resamples: Annotated[int, Whole, Ge(100)] = Field(
        1000, description="bootstrap resamples of the test units per seed"
    )
    strengths: _many(Positive) | None = Field(  # type: ignore[valid-type]
        None, description="L2 strengths, as multiples of the training samples"
    )
    metric: Metric | None = Field(None, description="default: by the label's kind")
    probe: Probe = "ridge"
    correction: Correction = Field("holm", description="across slices")
    subspace_rank: Count | None = Field(None, description="random-subspace control's rank")
    layers: _many(Layer) | None = Field(None, description="restrict the sweep")  # type: ignore[valid-type]
    components: Names | None = Field(None, description="restrict the sweep")
    groups: Name | None = Field(None, description="the unit of inference: a cube variable")


class DetectParams(ProtocolParams):
    """:func:`mechwidgets.detect`."""

    takes_controls: ClassVar[bool] = True
    label: Name | None = None


class CompareParams(ProtocolParams):
    """:func:`mechwidgets.compare`."""

    takes_controls: ClassVar[bool] = True
    labels: Names | None = None
    threshold: Annotated[float, Real] | None = Field(None, description="score that counts")
    component: Name | None = None


class RecoveryBase(IntervalParams):
    """What a recovery test takes besides its layers."""

    readout_layer: Layer | None = None
    batch_size: Count = 128


class RecoveryOptions(RecoveryBase):
    """collapse's ``recovery=``: the model and task to patch (a config's own by default)."""

    # a Model and a Task: pydantic reads annotations when the class is built, and naming
    # them would import torch with every RunSpec (this module stays light)
    model: Any = None
    task: Any = None
    source_layer: Layer | None = None
    target_layer: _many(Layer) | None = None  # type: ignore[valid-type]
    seed: Annotated[int, Whole] = 0


def _options(value: Any) -> Any:
    """``recovery: true`` takes every default; ``false`` none."""
    return {} if value is True else None if value is False else value


class CollapseParams(ProtocolParams):
    """:func:`mechwidgets.collapse`."""

    takes_controls: ClassVar[bool] = True
    label: Name | None = None
    cka: Cka = "debiased"
    component: Name | None = None
    recovery: Annotated[RecoveryOptions | None, BeforeValidator(_options)] = None


class PolysemanticParams(ProtocolParams):
    """:func:`mechwidgets.polysemantic`; its null is always the label shuffle."""

    labels: Names | None = None
    threshold: Annotated[float, Real, Ge(0), Lt(1)] = Field(
        0.2, description="smallest |loading| that counts a feature"
    )
    seeds: Count = 1


class LocalizeParams(IntervalParams):
    """:func:`mechwidgets.localize`."""

    label: Name | None = None
    behavior: Any = None
    probe: Any = None
    components: Names = Field(INTERVENED, description="kinds or selectors to rank")
    top_k: Count = 8
    interventions: Annotated[Sequence[Intervention], BeforeValidator(_listed)] | None = None
    corrupt: Any = None
    n: Count = 200
    rank_by: Intervention | None = None


class AttributionParams(IntervalParams):
    """:func:`mechwidgets.attribution_patch`."""

    behavior: Any = None
    grid: GridAxis | Annotated[Sequence[GridAxis], BeforeValidator(_listed)] = Field(
        GRID_AXES, description="the axes patched one cell at a time"
    )
    components: Names = Field(INTERVENED, description="kinds or selectors to patch")
    direction: Direction = "denoise"
    n: Count | None = None
    corrupt: Any = None


class PatchParams(AttributionParams):
    """:func:`mechwidgets.patch`."""

    attribution: StrictBool = Field(True, description="estimate the grid by attribution beside it")


class RecoveryParams(RecoveryBase):
    """:func:`mechwidgets.actions.recovery.recovery_test`."""

    label: Name
    source_layer: Layer
    target_layers: _many(Layer) | None = None  # type: ignore[valid-type]


def check(cls: type[Params], values: Mapping[str, Any], action: str) -> Params:
    """``values`` as a ``cls``, or a one-line SpecError naming the parameter of ``action``
    and what it takes (unknown names first, then missing ones, then bad values)."""
    try:
        return cls.model_validate(dict(values))
    except ValidationError as exc:
        raise SpecError(_one_line(exc, cls, values, action)) from None


def _one_line(exc: ValidationError, cls: type[Params], values: Any, action: str) -> str:
    order = {"extra_forbidden": 0, "missing": 1}
    err = min(exc.errors(), key=lambda e: order.get(e["type"], 2))
    model, field, path, value = _walk(cls, err["loc"], values)
    key = ".".join(path)
    if err["type"] == "extra_forbidden" or field is None:
        names = names_of(model)
        prefix = key.rpartition(".")[0]
        return (
            f"unknown parameter '{key}' for {action}"
            f"{did_you_mean(path[-1], names, prefix)}; it takes: {', '.join(names)}"
        )
    if err["type"] == "missing":
        return f"{action} needs parameter '{key}': {allowed(field)}"
    return f"bad value {value!r} for '{action}' parameter '{key}': {allowed(field, value)}"


def names_of(model: type[BaseModel]) -> list[str]:
    """A model's parameter names, its own first, then those it shares (the protocol's)."""
    own = [
        name
        for klass in model.__mro__
        for name in getattr(klass, "__annotations__", {})
        if name in model.model_fields
    ]
    return list(dict.fromkeys(own))


def _walk(
    cls: type[Params], loc: tuple[Any, ...], values: Any
) -> tuple[type[BaseModel], FieldInfo | None, list[str], Any]:
    """The model, field, dotted path and given value an error's location points at; the
    parts after a plain field (union members, list positions) are passed over."""
    owner: type[BaseModel] | None = cls
    model: type[BaseModel] = cls
    field = None
    path: list[str] = []
    for part in loc:
        if owner is None:
            break
        model = owner
        path.append(str(part))
        values = values.get(part) if isinstance(values, Mapping) else None
        field = model.model_fields.get(str(part))
        owner = None if field is None else _nested(field)
    return model, field, path, values


def _nested(field: FieldInfo) -> type[BaseModel] | None:
    """The Params model a field holds (collapse's ``recovery``), if any."""
    for arg in (field.annotation, *typing.get_args(field.annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _members(annotation: Any) -> list[Any]:
    """The members of a union, less None; a plain type as one member."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _base(annotation: Any) -> tuple[Any, list[Any]]:
    """A type and its constraints, with ``Annotated`` taken apart."""
    if typing.get_origin(annotation) is Annotated:
        base, *meta = typing.get_args(annotation)
        inner, more = _base(base)
        return inner, [*meta, *more]
    return annotation, []


def _choices(annotation: Any) -> list[str]:
    """The ``Literal`` choices a type allows, itself or as a list's items; [] if none."""
    out: list[str] = []
    for member in _members(annotation):
        base, _ = _base(member)
        if typing.get_origin(base) is Sequence:
            base, _ = _base(typing.get_args(base)[0])
        if typing.get_origin(base) is not Literal:
            return []
        out += [str(c) for c in typing.get_args(base) if str(c) not in out]
    return out


def _describe(annotation: Any) -> str:
    """What one member type takes, in words: "a whole number of 1 or more"."""
    base, meta = _base(annotation)
    bounds = {
        type(m).__name__: getattr(m, type(m).__name__.lower())
        for m in meta
        if isinstance(m, Ge | Gt | Lt)
    }
    if typing.get_origin(base) is Sequence:
        item = _describe(typing.get_args(base)[0])
        return "a list of names" if item == "one name as a string" else f"a list of {item}"
    if base is bool:  # StrictBool
        return "true or false"
    if base is int:
        least = bounds.get("Ge")
        return "a whole number" + ("" if least is None else f" of {least} or more")
    if base is float:
        if "Gt" in bounds and "Lt" in bounds:
            return f"a number between {bounds['Gt']:g} and {bounds['Lt']:g}"
        if "Ge" in bounds and "Lt" in bounds:
            return f"a number from {bounds['Ge']:g} up to, not including, {bounds['Lt']:g}"
        return "a positive number" if bounds.get("Gt") == 0 else "a number"
    if base is str:
        return "one name as a string"
    if isinstance(base, type) and issubclass(base, BaseModel):
        return f"true, or a mapping of {', '.join(names_of(base))}"
    return "any value"


def allowed(field: FieldInfo, value: Any = None) -> str:
    """What a parameter takes, as the end of an error message: "choose one of ridge,
    logistic (did you mean 'ridge'?)" or "give a whole number of 1 or more, e.g. 200"."""
    annotation = field.rebuild_annotation()
    inner, _ = _base(annotation)
    if typing.get_origin(inner) in (typing.Union, types.UnionType):  # validated as a whole
        annotation = inner
    choices = _choices(annotation)
    if choices:
        items = value if isinstance(value, list | tuple) else [value]
        given = next((str(v) for v in items if str(v) not in choices), "")
        return f"choose one of {', '.join(choices)}{did_you_mean(str(given), choices)}"
    members = _members(annotation)
    words = [_describe(m) for m in members]
    many = [w for w in words if f"a list of {w}" in words]
    if many:  # "one X or a list of them"
        words = [f"{w}, or a list of them" if w in many else w for w in words]
        words = [w for w in words if not any(w == f"a list of {m}" for m in many)]
    default = field.default
    example = (
        f", e.g. {default}"
        if isinstance(default, int | float | str) and not isinstance(default, bool)
        else ""
    )
    return f"give {' or '.join(words)}{example}"


def did_you_mean(word: str, choices: list[str], prefix: str = "") -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to ``word``, or nothing;
    ``prefix`` goes before the guess (``recovery.`` for a nested name)."""
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
