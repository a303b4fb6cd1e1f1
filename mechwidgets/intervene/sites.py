"""Sites: where in the model a component's activation lives, and in which order.

A component (:class:`~mechwidgets.core.components.LayerComponent`) lives at a *site*: a
block's output (the residual stream), the attention or MLP write, the *input* of the
attention output projection (where heads are still separate: a head owns ``d_head``
columns of it) or of the MLP down projection (a neuron owns one column), the embedding
output (layer :data:`~mechwidgets.core.components.EMBED`), or the final norm's output
where logits are read. A :data:`SiteKey` sorts in forward order, as nnsight requires
its envoys to be visited; :func:`site_port` finds the envoy through the model's adapter
(:mod:`mechwidgets.models.adapters`: where each family keeps those modules).

>>> site_of(LayerComponent("head", 1, head=2))
(1, 0, 'attn_out_proj')
>>> components_of(model, ["resid", "head"], embed=True)[:2]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from mechwidgets.core.components import (
    EMBED,
    LayerComponent,
    component_key,
    expand_selectors,
)
from mechwidgets.core.errors import SelectorError
from mechwidgets.models.adapters import walk

if TYPE_CHECKING:
    from mechwidgets.intervene.scoring import Scorer
    from mechwidgets.models.loading import Model
    from mechwidgets.models.loading import Site as ModelSite

#: component kind -> (model site, order of that site within a block's forward pass)
SITES: dict[str, tuple[str, int]] = {
    "head": ("attn_out_proj", 0),
    "attn": ("attn", 1),
    "neuron": ("mlp_out_proj", 2),
    "mlp": ("mlp", 3),
    "resid": ("block", 4),
}
#: (layer, order within the block, site): sorts in forward order
SiteKey = tuple[int, int, str]


def site_of(component: LayerComponent) -> SiteKey:
    """The site key of a component: its layer, forward order and model site."""
    if component.kind == "resid" and component.layer == EMBED:
        return (EMBED, SITES["resid"][1], "embed")
    site, order = SITES[component.kind]
    return (component.layer, order, site)


def columns(model: Model, component: LayerComponent) -> slice:
    """The slice of the site's last dimension that the component owns."""
    if component.kind == "head":
        assert component.head is not None
        return slice(component.head * model.d_head, (component.head + 1) * model.d_head)
    if component.kind == "neuron":
        assert component.neuron is not None
        return slice(component.neuron, component.neuron + 1)
    return slice(None)


def check_components(model: Model, components: Iterable[LayerComponent]) -> None:
    """Raise a one-line SelectorError for a layer, head or neuron the model does not have."""
    shape = model.shape
    for comp in components:
        if comp.kind == "resid" and comp.layer == EMBED:
            continue
        limits = [("layer", comp.layer, shape.n_layers)]
        if comp.head is not None:
            limits.append(("head", comp.head, shape.n_heads))
        if comp.neuron is not None:
            limits.append(("neuron", comp.neuron, shape.d_mlp))
        for what, index, size in limits:
            if not 0 <= index < size:
                raise SelectorError(
                    f"{what} {index} of '{comp}' is out of range; {model.name} has "
                    f"{what}s 0-{size - 1}"
                )


def score_site(model: Model, scorer: Scorer) -> SiteKey:
    """Where a scorer reads: its component's site, or for logits the final norm's output
    (after every block), or the last block's output where the family has no final norm."""
    if scorer.component is not None:
        return site_of(scorer.component)
    if model.adapter.final_norm is None:
        return site_of(LayerComponent("resid", model.shape.n_layers - 1))
    return (model.shape.n_layers, 0, "final_norm")


#: where a site's activation is read inside a trace: (envoy, "input" or "output")
Port = tuple[Any, str]


def site_port(model: Model, key: SiteKey) -> Port:
    """The envoy and side holding a site's activation: a projection's input, the embedding
    output (block 0's input), or a module's output. Looked up before a trace, so the traced
    block references envoys only and also runs remotely."""
    layer, _, site = key
    if site == "embed":
        return model.block(0), "input"
    if site == "final_norm":  # score_site keys it only when the adapter names one
        return walk(_base(model), cast(str, model.adapter.final_norm)), "output"
    side = "input" if site.endswith("out_proj") else "output"
    return model.envoy(cast("ModelSite", site), layer), side


def _base(model: Model) -> Any:
    """The base model's envoy (Model.envoy reaches block components only; the embedding
    and the final norm sit on the base model)."""
    hf: Any = model.hf  # a Hugging Face PreTrainedModel, more than its torch.nn.Module type
    prefix = hf.base_model_prefix if hf.base_model is not hf else ""
    return walk(model.nn, prefix)


def components_of(
    model: Model, components: str | Sequence[str], embed: bool = False
) -> list[LayerComponent]:
    """Expand ``["resid", "attn", "mlp", "head"]`` or selector strings against the model.

    With ``embed``, a bare ``"resid"`` also names the embeddings (layer -1, the residual
    stream before block 0).
    """
    items = [components] if isinstance(components, str) else list(components)
    selectors = [item if ":" in item else f"{item}:all" for item in items]
    comps = expand_selectors(selectors, model.shape)
    if embed and any(item in ("resid", "residual") for item in items):
        comps.insert(0, LayerComponent("resid", EMBED))
    check_components(model, comps)
    return sorted(
        comps, key=lambda c: (component_key(c.name)[0], c.layer, c.head or 0, c.neuron or 0)
    )
