"""Typed selectors: parsing, expansion against a model's shape, one-line errors."""

import pytest

from mechwidgets.core.components import (
    LayerComponent,
    ModelShape,
    expand_selectors,
    parse_layers,
    parse_selector,
    table_components,
)
from mechwidgets.core.errors import SelectorError

SHAPE = ModelShape(n_layers=6, n_heads=8, d_mlp=2048)


@pytest.mark.parametrize(
    ("text", "layers"),
    [
        ("all", None),
        ("3", (3,)),
        ("0-5", (0, 1, 2, 3, 4, 5)),
        ("1,3-4", (1, 3, 4)),
        ("4,1", (1, 4)),
    ],
)
def test_parse_layers(text, layers):
    assert parse_layers(text) == layers


def test_stream_selectors_expand_to_layers():
    comps = parse_selector("resid:0-5").expand(SHAPE)
    assert comps == [LayerComponent("resid", layer) for layer in range(6)]
    assert [c.name for c in parse_selector("mlp:2,4").expand(SHAPE)] == ["mlp", "mlp"]
    assert len(parse_selector("attn:all").expand(SHAPE)) == 6
    assert len(parse_selector("attn").expand(SHAPE)) == 6


def test_head_and_neuron_selectors():
    assert parse_selector("head:3.2").expand(SHAPE) == [LayerComponent("head", 3, head=2)]
    assert len(parse_selector("head:3.*").expand(SHAPE)) == 8
    assert len(parse_selector("head:all").expand(SHAPE)) == 48
    neuron = parse_selector("neuron:2.187").expand(SHAPE)[0]
    assert (neuron.kind, neuron.layer, neuron.neuron, neuron.name) == (
        "neuron",
        2,
        187,
        "neuron.187",
    )
    assert str(neuron) == "neuron:2.187"


def test_expand_selectors_dedupes_and_keeps_order():
    comps = expand_selectors(["resid:0-1", "resid:1", "head:0.1"], SHAPE)
    assert [str(c) for c in comps] == ["resid:0", "resid:1", "head:0.1"]
    assert expand_selectors("resid:0;mlp:0", SHAPE)[1].kind == "mlp"


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("mlp:x", "bad layer range"),
        ("foo:1", "unknown component kind 'foo'"),
        ("head:3.z", "bad index 'z'"),
        ("resid:5-2", "end is below the start"),
        ("", "empty"),
    ],
)
def test_malformed_selectors_fail_at_parse_time_in_one_line(text, phrase):
    with pytest.raises(SelectorError) as err:
        parse_selector(text)
    assert phrase in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("resid:9", "layer 9 is out of range; this model has layers 0-5"),
        ("head:2.8", "head 8 is out of range; this model has heads 0-7"),
        ("neuron:0.5000", "neuron 5000 is out of range"),
    ],
)
def test_out_of_range_fails_against_the_model_shape(text, phrase):
    with pytest.raises(SelectorError) as err:
        parse_selector(text).expand(SHAPE)
    assert phrase in str(err.value)
    assert "\n" not in str(err.value)


def test_a_cube_component_name_reads_back_as_its_component():
    for comp in (
        LayerComponent("resid", -1),
        LayerComponent("attn", 2),
        LayerComponent("head", 1, head=11),
        LayerComponent("neuron", 0, neuron=187),
    ):
        assert LayerComponent.from_name(comp.name, comp.layer) == comp
    table = {"layer": [1, 3], "component": ["head.3", "mlp"]}
    heads = [c.head for c in table_components(table)]
    assert heads == [3, None]
    assert str(table_components(table)[0]) == "head:1.3"  # the one display format
    for bad in ("head", "resid.2", "heads.1", "head.x"):
        with pytest.raises(SelectorError, match="unknown component name"):
            LayerComponent.from_name(bad, 0)
