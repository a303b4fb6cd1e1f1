"""Components and typed component selectors: the one vocabulary of where in a layer.

User-facing strings are parsed once, at the edge, into typed values; analysis code
never handles hook-name strings. A :class:`Selector` is what a string says
(``"resid:0-5"``, ``"attn:all"``, ``"mlp:2,4"``, ``"head:3.2"``, ``"neuron:2.187"``);
:meth:`Selector.expand` checks it against a model's shape and yields
:class:`LayerComponent` values. A component has one cube name (``resid``, ``attn``,
``mlp``, ``head.H``, ``neuron.N``: :attr:`LayerComponent.name`, read back by
:meth:`LayerComponent.from_name`), one display format, its selector
(``str(component)``: ``"head:3.2"``), and one reading order (:func:`component_key`).
Where a component lives in the model (a block's output, an attention output
projection's input) is the intervention engine's (:mod:`mechwidgets.intervene.sites`).

>>> shape = ModelShape(n_layers=6, n_heads=8, d_mlp=2048)
>>> parse_selector("head:3.2").expand(shape)
[LayerComponent(kind='head', layer=3, head=2, neuron=None)]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from mechwidgets.core.errors import SelectorError

#: a component's kind, written as in a selector (``head:3.2``) and a cube's component
#: names (``head.2``): the residual stream (block output), the attention and MLP writes,
#: one attention head, one MLP neuron
Kind = Literal["resid", "attn", "mlp", "head", "neuron"]
#: the one reading order of components (tables, charts, grids, widgets): the streams,
#: then heads and neurons, each by index (:func:`component_key`)
COMPONENT_ORDER: tuple[Kind, ...] = get_args(Kind)
#: the three streams every layer has, each ``d_model`` wide: the residual stream (block
#: output) and the attention and MLP writes into it; heads and neurons are finer parts
STREAMS: tuple[Kind, ...] = COMPONENT_ORDER[:3]
#: what an intervention covers unless told: the streams and every head (neurons, which
#: are many, on request)
INTERVENED: tuple[Kind, ...] = COMPONENT_ORDER[:4]
#: the layer index of the embedding output: the residual stream entering block 0 (token
#: embeddings, plus position embeddings and LayerNorm where the family has them)
EMBED = -1
_ALIASES = {"residual": "resid", "attention": "attn", "heads": "head", "neurons": "neuron"}
_HELP = (
    "use KIND:LAYERS with KIND in resid|attn|mlp|head|neuron and LAYERS like 'all', '3', "
    "'0-5' or '2,4'; heads and neurons as 'head:3.2', 'head:3.*', 'neuron:2.187'"
)


@dataclass(frozen=True)
class ModelShape:
    """The sizes a selector is checked against."""

    n_layers: int
    n_heads: int
    d_mlp: int


@dataclass(frozen=True, order=True)
class LayerComponent:
    """One component of one layer: a stream, an attention head or an MLP neuron."""

    kind: Kind
    layer: int
    head: int | None = None
    neuron: int | None = None

    @property
    def name(self) -> str:
        """The cube's component label: ``resid``, ``attn``, ``mlp``, ``head.H``, ``neuron.N``."""
        if self.kind == "head":
            return f"head.{self.head}"
        if self.kind == "neuron":
            return f"neuron.{self.neuron}"
        return self.kind

    @classmethod
    def from_name(cls, name: str, layer: int) -> LayerComponent:
        """The component a cube component name (:attr:`name`) names at ``layer``.

        >>> LayerComponent.from_name("head.3", 1)
        LayerComponent(kind='head', layer=1, head=3, neuron=None)
        """
        prefix, dot, index = str(name).partition(".")
        split = prefix in ("head", "neuron")
        if prefix not in COMPONENT_ORDER or split != bool(dot) or (dot and not index.isdigit()):
            raise SelectorError(
                f"unknown component name {name!r}: use resid, attn, mlp, head.H or neuron.N"
            )
        kind = cast(Kind, prefix)
        if kind == "head":
            return cls(kind, int(layer), head=int(index))
        if kind == "neuron":
            return cls(kind, int(layer), neuron=int(index))
        return cls(kind, int(layer))

    def __str__(self) -> str:
        """The display format of a component everywhere: its selector, ``head:3.2``
        (``resid:embed`` for the embedding output)."""
        if self.kind == "head":
            return f"head:{self.layer}.{self.head}"
        if self.kind == "neuron":
            return f"neuron:{self.layer}.{self.neuron}"
        layer = "embed" if self.layer == EMBED else self.layer
        return f"{self.kind}:{layer}"


def component_key(name: str) -> tuple[int, int, str]:
    """Sort key of a cube component name in :data:`COMPONENT_ORDER`, heads and neurons by
    index; unknown names last.

    >>> sorted(["head.10", "mlp", "head.2", "resid"], key=component_key)
    ['resid', 'mlp', 'head.2', 'head.10']
    """
    prefix, _, index = name.partition(".")
    rank = COMPONENT_ORDER.index(prefix) if prefix in COMPONENT_ORDER else len(COMPONENT_ORDER)
    return rank, int(index) if index.isdigit() else -1, name


def table_components(table: Any) -> list[LayerComponent]:
    """The component of each row of a tidy table with ``layer`` and ``component`` (cube
    name) columns: how a table's ``"head.3"`` is read back, never by string surgery."""
    pairs = zip(table["layer"], table["component"], strict=True)
    return [LayerComponent.from_name(name, layer) for layer, name in pairs]


@dataclass(frozen=True)
class Selector:
    """A parsed selector string; ``None`` fields mean "all"."""

    kind: Kind
    layers: tuple[int, ...] | None
    index: int | None = None  # head or neuron index within the layer
    text: str = ""

    def expand(self, shape: ModelShape) -> list[LayerComponent]:
        """Check against ``shape`` and list the components this selector names."""
        layers = range(shape.n_layers) if self.layers is None else self.layers
        bad = [layer for layer in layers if not 0 <= layer < shape.n_layers]
        if bad:
            which = f"layer {bad[0]} is" if len(bad) == 1 else f"layers {bad[0]}-{bad[-1]} are"
            raise SelectorError(
                f"selector '{self.text}': {which} out of range; "
                f"this model has layers 0-{shape.n_layers - 1}: choose among them"
            )
        if self.kind == "head":
            return [
                LayerComponent(self.kind, layer, head=h)
                for layer in layers
                for h in self._indices(shape.n_heads, "head")
            ]
        if self.kind == "neuron":
            return [
                LayerComponent(self.kind, layer, neuron=n)
                for layer in layers
                for n in self._indices(shape.d_mlp, "neuron")
            ]
        return [LayerComponent(self.kind, layer) for layer in layers]

    def _indices(self, size: int, what: str) -> range | tuple[int]:
        if self.index is None:
            return range(size)
        if not 0 <= self.index < size:
            raise SelectorError(
                f"selector '{self.text}': {what} {self.index} is out of range; "
                f"this model has {what}s 0-{size - 1}: choose among them"
            )
        return (self.index,)


_LAYERS = re.compile(r"^(all|\d+(-\d+)?(,\d+(-\d+)?)*)$")


def parse_layers(text: str, *, context: str | None = None) -> tuple[int, ...] | None:
    """Parse ``'all'``, ``'3'``, ``'0-5'`` or ``'1,3-4'`` into sorted layer indices (None = all)."""
    spec = text.replace(" ", "")
    if not _LAYERS.match(spec):
        raise SelectorError(
            f"bad layer range '{text}'" + (f" in '{context}'" if context else "") + f": {_HELP}"
        )
    if spec == "all":
        return None
    layers: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        start, stop = int(lo), int(hi or lo)
        if stop < start:
            raise SelectorError(f"bad layer range '{part}': the end is below the start")
        layers.update(range(start, stop + 1))
    return tuple(sorted(layers))


def parse_selector(text: str) -> Selector:
    """Parse one selector string; a malformed one raises a one-line :class:`SelectorError`."""
    if not isinstance(text, str) or not text.strip():
        raise SelectorError(f"empty or non-string selector {text!r}: {_HELP}")
    raw = text.strip()
    prefix, colon, rest = raw.partition(":")
    prefix = _ALIASES.get(prefix, prefix)
    if prefix not in COMPONENT_ORDER:
        raise SelectorError(f"unknown component kind '{prefix}' in '{raw}': {_HELP}")
    kind = cast(Kind, prefix)
    if colon and not rest.strip():  # "resid:" (e.g. from layers='') is a slip, not "all"
        raise SelectorError(f"no layers after ':' in '{raw}': {_HELP}")
    rest = rest or "all"
    if kind in ("head", "neuron") and "." in rest:
        layer_text, _, index_text = rest.partition(".")
        layers = parse_layers(layer_text, context=raw)
        if index_text in ("*", "all"):
            return Selector(kind, layers, None, raw)
        if not index_text.isdigit():
            raise SelectorError(f"bad index '{index_text}' in '{raw}': {_HELP}")
        return Selector(kind, layers, int(index_text), raw)
    return Selector(kind, parse_layers(rest, context=raw), None, raw)


def without_embed(selector: str) -> tuple[str | None, bool]:
    """The selector without ``embed`` among its layers (None when nothing is left), and
    whether it named ``embed``: ``"resid:embed,0-3"`` -> ``("resid:0-3", True)``.

    ``embed`` is the embedding layer (:data:`EMBED`), which only extraction reads; the
    other layers parse as usual.
    """
    kind, colon, rest = selector.strip().partition(":")
    parts = rest.split(",")
    if not colon or "embed" not in parts:
        return selector, False
    left = [p for p in parts if p != "embed"]
    return (f"{kind}:{','.join(left)}" if left else None), True


def expand_selectors(selectors: str | list[str], shape: ModelShape) -> list[LayerComponent]:
    """Parse and expand several selectors (a list or a ``;``-separated string), without repeats."""
    items = selectors.split(";") if isinstance(selectors, str) else list(selectors)
    seen: dict[LayerComponent, None] = {}
    for item in items:
        for comp in parse_selector(item).expand(shape):
            seen.setdefault(comp, None)
    return list(seen)
