"""Extraction against ground truth: plain PyTorch hooks on one unpadded text at a time.

For every family the cube must equal what forward hooks on the same modules record for
each text run alone (so padding, left or right, must not leak in), for every layer and
component, heads and neurons, with the last-token and the mean policies.
"""

from __future__ import annotations

import dataclasses

import dask.array
import numpy as np
import pytest
import torch
import xarray as xr

import mechwidgets as mw
from mechwidgets.core.errors import SelectorError, SpecError, TaskError
from mechwidgets.data.tasks import Task
from mechwidgets.extract.cube import check_cube
from mechwidgets.extract.extractor import _pooler, plan_extraction
from mechwidgets.models.loading import Model

TEXTS = [
    "the cat sat on the mat",
    "a dog runs",
    "the big red bird sits near the tree and the small blue bird sits under a rug",
    "cats",
    "the dogs were quickly under a rug",
]
ALL = ["resid", "attn", "mlp", "head", "neuron"]
FAMILIES = ["gpt_neox", "gpt2", "llama", "qwen2", "mistral", "bert"]


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def hook_records(model: Model, text: str) -> dict[tuple[str, int], torch.Tensor]:
    """(what, layer) -> (tokens, width) from forward hooks on one text run alone."""
    records: dict[tuple[str, int], torch.Tensor] = {}
    handles = []

    def output_hook(key):
        def hook(module, args, out):
            records[key] = (out[0] if isinstance(out, tuple) else out)[0].detach().clone()

        return hook

    def input_hook(key):
        def hook(module, args):
            records[key] = args[0][0].detach().clone()

        return hook

    for layer in range(model.shape.n_layers):
        for site, name in (("block", "resid"), ("attn", "attn"), ("mlp", "mlp")):
            handle = model.module(site, layer).register_forward_hook(output_hook((name, layer)))
            handles.append(handle)
        for site in ("attn_out_proj", "mlp_out_proj"):
            module = model.module(site, layer)
            handles.append(module.register_forward_pre_hook(input_hook((site, layer))))
    ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        model.hf(input_ids=ids)
    for handle in handles:
        handle.remove()
    return records


def head_reference(model: Model, layer: int, z: torch.Tensor, head: int) -> torch.Tensor:
    """One head's write: the projection module itself run on z with other heads zeroed."""
    proj = model.module("attn_out_proj", layer)
    keep = torch.zeros_like(z)
    span = slice(head * model.d_head, (head + 1) * model.d_head)
    keep[..., span] = z[..., span]
    with torch.no_grad():
        return proj(keep) - (proj.bias if proj.bias is not None else 0)


@pytest.fixture(scope="module")
def references(tiny_models):
    """model_type -> token policy -> {(component, layer): (n_texts, width)} and neurons."""
    out = {}
    for family in FAMILIES:
        model = tiny_models[family]
        per_text = [hook_records(model, t) for t in TEXTS]
        out[family] = {}
        for policy, reduce in (("last", lambda x: x[-1]), ("mean", lambda x: x.mean(0))):
            ref = {}
            for layer in range(model.shape.n_layers):
                for name in ("resid", "attn", "mlp"):
                    ref[name, layer] = np.stack([reduce(r[name, layer]) for r in per_text])
                for h in range(model.shape.n_heads):
                    ref[f"head.{h}", layer] = np.stack(
                        [
                            reduce(head_reference(model, layer, r["attn_out_proj", layer], h))
                            for r in per_text
                        ]
                    )
                ref["neurons", layer] = np.stack(
                    [reduce(r["mlp_out_proj", layer]) for r in per_text]
                )
            out[family][policy] = ref
    return out


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("token", ["last", "mean"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cube_equals_hooks(tiny_models, references, family, token, padding_side):
    model = tiny_models[family]
    cube = mw.extract(
        model, TEXTS, components=ALL, token=token, padding_side=padding_side, batch_size=2
    )
    ref = references[family][token]
    n_layers, n_heads = model.shape.n_layers, model.shape.n_heads
    components = ["resid", "attn", "mlp"] + [f"head.{h}" for h in range(n_heads)]
    assert list(cube["component"].values) == components
    assert list(cube["layer"].values) == list(range(n_layers))
    assert cube["act"].dtype == np.float32
    for layer in range(n_layers):
        for comp in components:
            got = cube["act"].sel(layer=layer, component=comp).values
            assert rel_err(got, ref[comp, layer]) <= 1e-4, (layer, comp)
        assert rel_err(cube["neurons"].sel(layer=layer).values, ref["neurons", layer]) <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_heads_plus_bias_sum_to_attention_output(tiny_models, family):
    model = tiny_models[family]
    cube = mw.extract(model, TEXTS, components=["attn", "head"], cache=False)
    for layer in range(model.shape.n_layers):
        heads = cube["act"].sel(layer=layer).drop_sel(component="attn").sum("component").values
        bias = model.out_proj_bias("attn_out_proj", layer)
        total = heads + (0 if bias is None else bias.detach().numpy())
        attn = cube["act"].sel(layer=layer, component="attn").values
        assert rel_err(total, attn) <= 1e-5


def test_stops_after_deepest_block_asked_for(tiny_models, count_calls):
    model = tiny_models["gpt_neox"]
    deeper = count_calls(model.module("block", 1))
    unembed = count_calls(model.hf.get_submodule(model.adapter.unembed))
    first = count_calls(model.module("block", 0))
    mw.extract(model, TEXTS, layers=[0], components=["resid", "mlp"], cache=False)
    assert len(first) > 0
    assert deeper == [] and unembed == []
    mw.extract(model, TEXTS, layers="all", components=["attn"], cache=False)
    assert len(deeper) > 0 and unembed == []


def test_second_call_runs_no_forward_pass(tiny_models, count_calls):
    model = tiny_models["llama"]
    calls = count_calls(model.module("block", 0))
    first = mw.extract(model, TEXTS, layers="0-1", components=["resid", "mlp"], batch_size=2)
    n_first = len(calls)
    assert n_first == 3  # three batches of at most two texts
    again = mw.extract(model, TEXTS, components=["mlp", "resid"], batch_size=4)
    assert len(calls) == n_first
    assert again.attrs["cache_key"] == first.attrs["cache_key"]
    np.testing.assert_array_equal(again["act"].values, first["act"].values)


def test_task_positions_labels_and_splits(tiny_models, references):
    model = tiny_models["gpt2"]
    task = Task(
        name="toy",
        texts=TEXTS,
        labels={
            "plural": np.array([0, 0, 0, 1, 1]),
            "animal": np.array(["cat", "dog", "bird", "cat", "dog"]),
        },
        split=np.array(["train", "train", "val", "test", "test"]),
        positions=np.array([-1, 0, -1, -1, -1]),
    )
    cube = mw.extract(model, task, components=["resid"])
    assert cube.attrs["token_policy"] == "positions" and cube.attrs["task"] == "toy"
    assert list(cube["split"].values) == list(task.split)
    assert list(cube["animal"].values) == list(task.labels["animal"])
    assert list(cube["text"].values) == TEXTS
    assert list(cube["sample_id"].values) == list(range(len(TEXTS)))
    last = references["gpt2"]["last"]["resid", 1]
    got = cube["act"].sel(layer=1, component="resid").values
    keep = [0, 2, 3, 4]  # position -1 is the last token
    assert rel_err(got[keep], last[keep]) <= 1e-4
    first_token = hook_records(model, TEXTS[1])["resid", 1][0].numpy()
    assert rel_err(got[1], first_token) <= 1e-4
    relabelled = Task(
        task.name, TEXTS, {"plural": 1 - task.labels["plural"]}, task.split, task.positions
    )
    again = mw.extract(model, relabelled, components=["resid"])
    assert again.attrs["cache_key"] == cube.attrs["cache_key"]
    assert list(again["plural"].values) == [1, 1, 1, 0, 0]
    assert "animal" not in again.coords


def test_cube_is_lazy_and_attrs_are_netcdf_safe(tiny_models):
    cube = mw.extract(tiny_models["bert"], TEXTS, selectors=["resid:0-1", "head:1.2"], cache=False)
    assert isinstance(cube["act"].data, dask.array.Array)
    assert list(cube["component"].values) == ["resid", "head.2"]
    check_cube(cube)
    for key in ("model", "revision", "tokenizer_hash", "token_policy", "dtype", "cache_key"):
        assert key in cube.attrs
    assert cube.attrs["model_identity"].startswith("weights:")
    assert all(isinstance(v, (str, int, float, np.integer)) for v in cube.attrs.values())


def test_plan_grid_and_neuron_subsets(tiny_models):
    model = tiny_models["gpt_neox"]
    plan = plan_extraction(model, selectors=["mlp:1", "head:0.3", "neuron:1.5"])
    assert plan.layers == (0, 1) and plan.streams == ("mlp",)
    assert plan.heads == (3,) and plan.neurons == (5,)
    assert plan.components == ("mlp", "head.3")


@pytest.mark.parametrize(
    ("kwargs", "error", "phrase"),
    [
        ({"selectors": ["resid:x"]}, SelectorError, "use KIND:LAYERS"),
        ({"layers": [5]}, SelectorError, "layers 0-1"),
        ({"selectors": ["head:0.9"]}, SelectorError, "heads 0-3"),
        ({"components": ["resd"]}, SelectorError, "unknown component kind"),
        ({"token": "first"}, TaskError, "marker 'first' is not a token of text 0"),
        ({"token": 2.5}, SpecError, "'last', 'mean'"),
        ({"positions": ["bird"] * 5}, TaskError, "marker 'bird' is not a token of text 0"),
        ({"token": 40}, TaskError, "outside text"),
        ({"batch_size": 0}, SpecError, "positive integer"),
        ({"token": "last", "positions": [0] * 5}, SpecError, "not both"),
        ({"positions": [0, 1]}, TaskError, "one per text"),
    ],
)
def test_bad_requests_fail_in_one_line(tiny_models, count_calls, kwargs, error, phrase):
    model = tiny_models["gpt_neox"]
    calls = count_calls(model.module("block", 0))
    with pytest.raises(error) as info:
        mw.extract(model, TEXTS, **kwargs)
    message = str(info.value)
    assert "\n" not in message and phrase in message
    assert calls == []  # rejected before any forward pass


def test_text_longer_than_context_fails_before_running(tiny_models):
    model = tiny_models["gpt2"]
    with pytest.raises(TaskError, match="reads at most 64; shorten it"):
        mw.extract(model, ["the cat"] + ["the " * 70], cache=False)


def test_neurons_alone_make_a_cube_without_act(tiny_models, references):
    cube = mw.extract(tiny_models["gpt2"], TEXTS, selectors=["neuron:1.5"], cache=False)
    check_cube(cube)
    assert "act" not in cube and "component" not in cube.dims
    assert cube["neurons"].dims == ("sample", "layer", "neuron")
    got = cube["neurons"].sel(layer=1, neuron=5).values
    assert rel_err(got, references["gpt2"]["last"]["neurons", 1][:, 5]) <= 1e-4


def test_one_batch_cube_is_the_cube_its_file_opens_to(tiny_models, tmp_path, monkeypatch):
    """A cube of one batch is returned from the batch's arrays, not by opening the file
    written: it must be the same cube (values, dims, coordinates, attributes) as a later
    cached call opens from that file; uncached, no file is written at all."""
    monkeypatch.setenv("MECHWIDGETS_CACHE", str(tmp_path / "cubes"))
    model = tiny_models["gpt2"]
    task = Task(
        name="toy",
        texts=TEXTS,
        labels={"plural": np.array([0, 0, 0, 1, 1]), "animal": np.array(list("abcab"))},
        split=np.array(["train", "train", "val", "test", "test"]),
        positions=np.array([-1, 0, -1, -1, -1]),
    )
    kwargs = {"selectors": ["resid:0-1", "head:1.0", "neuron:1.3"], "batch_size": 8}
    fresh = mw.extract(model, task, **kwargs)
    assert isinstance(fresh["act"].data, dask.array.Array)
    assert fresh.encoding["source"] == str(next((tmp_path / "cubes").glob("*.nc")))
    opened = mw.extract(model, task, **kwargs)  # from the file: another code path
    xr.testing.assert_identical(fresh.load(), opened.load())
    assert list(fresh["component"].values) == ["resid", "head.0"]
    uncached = mw.extract(model, task, cache=False, **kwargs)
    xr.testing.assert_identical(uncached.load(), opened.load())
    assert "source" not in uncached.encoding
    assert len(list((tmp_path / "cubes").glob("*.nc"))) == 1


class CountingTokenizer:
    """A tokenizer that counts its tokenizer passes (calls) and delegates the rest."""

    def __init__(self, tokenizer) -> None:
        self.inner, self.passes = tokenizer, 0

    def __call__(self, *args, **kwargs):
        self.passes += 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("token", ["last", "mean", "cat@last"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_one_batch_call_tokenizes_once_and_equals_the_batched_cube(
    tiny_models, token, padding_side
):
    """A call of one batch tokenizes its texts once (the unseen check, the read positions
    and the padded batch share the pass); its cube is identical to the same call in
    batches of two, where each use tokenizes on its own."""
    texts = ["the cat sat on the mat", "a cat runs", "cats and the cat", "the cat is red"]
    model = tiny_models["llama"]
    counted = dataclasses.replace(model, tokenizer=CountingTokenizer(model.tokenizer))
    kwargs = {"token": token, "padding_side": padding_side, "cache": False, "neurons": True}
    whole = mw.extract(counted, texts, batch_size=8, **kwargs)
    assert counted.tokenizer.passes == 1
    batched = mw.extract(counted, texts, batch_size=2, **kwargs)
    assert counted.tokenizer.passes == 1 + 4  # unseen check, positions, two batches
    xr.testing.assert_identical(whole.load(), batched.load())


def test_padding_given_token_ids_equals_tokenizing_the_texts(tiny_models):
    """``Model.tokenize(texts, input_ids=...)`` pads the ids a shared pass gave: the same
    inputs as tokenizing the texts with padding, on either side."""
    for family in ("bert", "gpt2"):
        model = tiny_models[family]
        ids = model.tokenizer(TEXTS)["input_ids"]
        for side in ("left", "right"):
            want = model.tokenize(TEXTS, padding_side=side)
            got = model.tokenize(TEXTS, padding_side=side, input_ids=ids)
            assert want.keys() == got.keys()
            for name in want:
                assert torch.equal(want[name], got[name]), (family, side, name)


def test_pooler_reading_one_position_everywhere_copies_the_same_rows():
    """When every row reads the same position (equal lengths, or left padding and the
    last token) the pooler slices instead of gathering: the same float32 values as the
    general gather, in a copy that does not keep the full activation alive."""
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]])
    index = np.array([2, 3, 1])  # each text's last token: position 3 in every row
    x = torch.randn(3, 4, 5, dtype=torch.float32)
    for dtype in (torch.float32, torch.bfloat16):
        activation = x.to(dtype)
        got = _pooler(mask, index)(activation)
        want = activation[torch.arange(3), torch.tensor([3, 3, 3])].float()
        assert got.dtype == torch.float32 and torch.equal(got, want)
        assert got.untyped_storage().data_ptr() != activation.untyped_storage().data_ptr()
    mixed = _pooler(mask, np.array([2, 2, 1]))(x)  # rows at 3, 2 and 3: gathered
    assert torch.equal(mixed, x[torch.arange(3), torch.tensor([3, 2, 3])])


def test_cubes_sharing_a_grid_cannot_change_each_others_coordinates(tiny_models):
    """Cubes of one batch share their layer/component index coordinates (built once per
    grid): writing into one cube's coordinate values fails (read-only) or writes into a
    copy, so it never reaches the other cube."""
    model = tiny_models["gpt2"]
    first = mw.extract(model, TEXTS[:2], cache=False, layers=[0, 1])
    second = mw.extract(model, TEXTS[2:], cache=False, layers=[0, 1])
    for name, edit in (("layer", 7), ("component", "edited")):
        try:
            first[name].values[0] = edit
        except ValueError as error:
            assert "read-only" in str(error)
    for cube in (first, second):
        assert cube["layer"].values.tolist() == [0, 1]
        assert cube["component"].values.tolist() == ["resid", "attn", "mlp"]
