"""One position convention: a marker, an int and a negative int read the same token in
extract, patch and localize, for every adapter family, with each family's special tokens.

Each family gets a word-level tokenizer that behaves like its real one where it matters
for positions: BERT wraps a text in ``[CLS] ... [SEP]`` and knows ``[MASK]``; Llama adds
``<s>`` and writes words as ``▁word``; GPT-2 writes them as ``Ġword``; GPT-NeoX and Qwen2
add nothing. Models are random-weight, 2 blocks, built offline (conftest).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from conftest import TINY_CONFIGS, WORDS
from tokenizers import Tokenizer, pre_tokenizers, processors
from tokenizers.models import WordLevel

import mechwidgets as mw
from mechwidgets.actions.localize import _prompts as localize_prompts
from mechwidgets.core.errors import SelectorError, TaskError
from mechwidgets.data.positions import Position, as_positions, encode, resolve_positions
from mechwidgets.data.tasks import Task
from mechwidgets.intervene.pairs import prepare_pairs
from mechwidgets.models.loading import Model
from mechwidgets.runner import run_spec

FAMILIES = ("gpt_neox", "gpt2", "llama", "qwen2", "bert")
SPECIALS = ["[PAD]", "[UNK]", "[EOS]", "[CLS]", "[SEP]", "[MASK]", "<s>"]
CLEAN = ["the cat near the dogs is red", "a big dog is on the mat"]
CORRUPT = ["the cats near the dogs is red", "a small dog is on the mat"]
#: family -> (token read by marker "is", by 1, by -1) in CLEAN[0], as the tokenizer writes it
EXPECTED = {
    "gpt_neox": ("is", "cat", "red"),
    "qwen2": ("is", "cat", "red"),
    "gpt2": ("Ġis", "Ġcat", "Ġred"),
    "llama": ("▁is", "▁the", "▁red"),
    "bert": ("is", "the", "[SEP]"),
}


def family_tokenizer(family: str) -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer with the family's word prefix and special tokens."""
    words = WORDS.split()
    if family == "gpt2":
        pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        vocab_words = words + [f"Ġ{w}" for w in words]
    elif family == "llama":
        pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        vocab_words = [f"▁{w}" for w in words]
    else:
        pre = pre_tokenizers.Whitespace()
        vocab_words = words
    vocab = {w: i for i, w in enumerate(SPECIALS + vocab_words)}
    core = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre
    if family == "bert":
        core.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 3), ("[SEP]", 4)]
        )
    elif family == "llama":
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 6)]
        )
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", eos_token="[EOS]", mask_token="[MASK]"
    )
    if family == "bert":
        tok.pad_token, tok.cls_token, tok.sep_token = "[PAD]", "[CLS]", "[SEP]"
    return tok


@pytest.fixture(scope="module")
def models() -> dict[str, Model]:
    out = {}
    for family in FAMILIES:
        torch.manual_seed(0)
        config = TINY_CONFIGS[family]()
        config.vocab_size = 96  # GPT-2's doubled word list
        auto = transformers.AutoModel if family == "bert" else transformers.AutoModelForCausalLM
        out[family] = mw.load_model(auto.from_config(config).eval(), family_tokenizer(family))
    return out


def test_family_tokenizers_add_their_special_tokens(models):
    pieces = {
        f: models[f].tokenizer.convert_ids_to_tokens(models[f].tokenizer(CLEAN[0])["input_ids"])
        for f in FAMILIES
    }
    assert pieces["bert"][0] == "[CLS]" and pieces["bert"][-1] == "[SEP]"
    assert pieces["llama"][:2] == ["<s>", "▁the"] and pieces["gpt2"][1] == "Ġcat"
    assert pieces["gpt_neox"] == CLEAN[0].split() == pieces["qwen2"]


def read_by_action(model: Model, position: Position) -> dict[str, list[str]]:
    """The token each text is read at by extract, patch (prepare_pairs) and localize."""
    task = Task("t", CLEAN, {"y": np.array([0, 1])}, ["train", "test"], [position] * 2)
    cube = mw.extract(model, task, layers=[1], components=["resid"], cache=False)
    pairs = prepare_pairs(model, task, CORRUPT, mw.metrics.hidden(1))
    local = localize_prompts(model, task, CLEAN, np.arange(2))
    ids = pairs.clean.inputs["input_ids"]
    tokens = model.tokenizer.convert_ids_to_tokens
    return {
        "extract": [str(t) for t in cube["token"].values],
        "patch": [tokens(ids[i])[int(pairs.clean.read[i])] for i in range(2)],
        "localize": [tokens(ids[i])[int(local.read[i])] for i in range(2)],
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_marker_int_and_negative_int_read_the_same_token_in_every_action(models, family):
    model = models[family]
    for position, want in zip(("is", 1, -1), EXPECTED[family], strict=True):
        reads = read_by_action(model, position)
        assert reads["extract"][0] == want, (family, position, reads)
        assert reads["extract"] == reads["patch"] == reads["localize"], (family, position)


@pytest.mark.parametrize("family", FAMILIES)
def test_extract_reads_the_activation_of_the_resolved_token(models, family):
    model = models[family]
    cube = mw.extract(
        model, CLEAN, layers=[1], components=["resid"], token="is", cache=False, batch_size=2
    )
    seen = []
    block = model.module("block", 1)  # HF's last hidden state is after the final norm
    handle = block.register_forward_hook(lambda m, args, out: seen.append(_first(out)[0]))
    for i, text in enumerate(CLEAN):
        inputs = model.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            model.hf(**inputs)
        hidden = seen.pop()
        k = int(cube["position"].values[i])
        assert model.tokenizer.convert_ids_to_tokens(int(inputs["input_ids"][0, k])) == str(
            cube["token"].values[i]
        )
        got = cube["act"].sel(layer=1, component="resid").values[i]
        np.testing.assert_allclose(got, hidden[k].numpy(), rtol=1e-4, atol=1e-5)
    handle.remove()


def _first(out):  # noqa: ANN001, ANN202
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("family", FAMILIES)
def test_embedding_layer_is_the_embedding_output(models, family):
    model = models[family]
    cube = mw.extract(model, CLEAN, layers="embed", components=["resid"], token=2, cache=False)
    assert cube["layer"].values.tolist() == [-1]
    got = cube["act"].sel(layer=-1, component="resid").values
    for i, text in enumerate(CLEAN):
        inputs = model.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            first = model.hf(**inputs, output_hidden_states=True).hidden_states[0][0, 2]
            if family == "bert":  # the embeddings module: word + position + type, LayerNorm
                module = model.hf.embeddings(input_ids=inputs["input_ids"])[0, 2]
            elif family == "gpt2":  # token plus position embedding
                module = model.hf.transformer.wte(inputs["input_ids"])[0, 2]
                module = module + model.hf.transformer.wpe.weight[2]
            else:  # rotary models: the token embedding itself
                embed = model.hf.base_model.get_submodule(model.adapter.embed)
                module = embed(inputs["input_ids"])[0, 2]
        np.testing.assert_allclose(got[i], first.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[i], module.numpy(), rtol=1e-5, atol=1e-6)


def test_bert_reads_mask_cls_sep_and_spans(models):
    tok = models["bert"].tokenizer
    texts = ["the [MASK] is red", "a dog near the [MASK] runs"]
    reads = resolve_positions(tok, texts, ["[MASK]", "[MASK]"])
    assert reads.index.tolist() == [2, 5] and reads.token.tolist() == ["[MASK]"] * 2
    assert resolve_positions(tok, texts, [0, -1]).token.tolist() == ["[CLS]", "[SEP]"]
    assert resolve_positions(tok, texts, ["[CLS]", "[SEP]"]).index.tolist() == [0, 7]
    assert resolve_positions(tok, texts, [(14, 17), (2, 5)]).token.tolist() == ["red", "dog"]
    assert resolve_positions(tok, texts, [(11, 14), (2, 8)]).token.tolist() == ["is", "near"]


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_positions_resolved_from_a_shared_encoding_equal_a_fresh_pass(models, family):
    """``encode`` then ``resolve_positions(..., encoded)`` (one tokenizer pass shared with
    the batch) reads the same tokens as resolving from the texts, for ints, markers and
    spans (which need the offsets ``encode`` must then ask for)."""
    tok = models[family].tokenizer
    texts = ["the cat is near the dog that is red", "a big dog is on the mat", "red"]
    cases = [
        ([1, -1, 0], False),
        (["is@last", "is", "red"], True),
        ([(4, 10), (2, 5), (0, 3)], True),
        (None, False),
    ]
    for specs, offsets in cases:
        encoded = encode(tok, texts, specs)
        assert ("offset_mapping" in encoded) == offsets
        shared = resolve_positions(tok, texts, specs, encoded)
        fresh = resolve_positions(tok, texts, specs)
        for field in ("index", "token", "length"):
            assert getattr(shared, field).tolist() == getattr(fresh, field).tolist()


def test_markers_match_the_text_a_token_covers_and_say_which_occurrence(models):
    gpt2, llama = models["gpt2"].tokenizer, models["llama"].tokenizer
    text = ["the cat is near the dog that is red"]
    assert resolve_positions(gpt2, text, ["is@first"]).token.tolist() == ["Ġis"]
    assert resolve_positions(gpt2, text, ["is@last"]).index.tolist() == [7]
    assert resolve_positions(llama, text, ["is@-1"]).index.tolist() == [8]  # after <s>
    assert resolve_positions(llama, text, ["the@1"]).index.tolist() == [5]
    assert resolve_positions(llama, text, [" cat"]).token.tolist() == ["▁cat"]
    span = resolve_positions(gpt2, text, [(4, 10)])  # "cat is": its last token
    assert span.token.tolist() == ["Ġis"]


@pytest.mark.parametrize(
    ("positions", "message"),
    [
        (["cat", "bird"], "marker 'bird' is not a token of text 1 ('a dog runs')"),
        (["the", "dog"], "marker 'the' occurs 2 times in text 0"),
        (["the@2", "dog"], "'the@2' asks for occurrence 2 but 'the' occurs 2 time(s) in text 0"),
        ([0, 5], "position 5 is outside text 1 ('a dog runs'), which has 5 tokens"),
        ([0, -6], "position -6 is outside text 1"),
        ([(3, 4), 0], "characters 3-4 of text 0 (' ') cover no token"),
        ([0, (2, 40)], "span (2, 40) runs past the end of text 1"),
        ([0, (5, 2)], "positions[1] is the span (5, 2)"),
        ([0, True], "positions[1] is True"),
        ([0], "positions has 1 values for 2 texts"),
    ],
)
def test_bad_positions_fail_in_one_line_naming_the_text(models, positions, message):
    with pytest.raises(TaskError) as info:
        resolve_positions(models["bert"].tokenizer, ["the cat the mat", "a dog runs"], positions)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_positions_keep_one_span_per_text():
    spans = as_positions([(0, 3), (4, 7)], 2)
    assert spans.shape == (2,) and spans.tolist() == [(0, 3), (4, 7)]
    assert as_positions([1, -1], 2).dtype == np.int64
    assert as_positions(["[MASK]", 2], 2).tolist() == ["[MASK]", 2]


def test_cube_records_the_token_and_the_embedding_layer_sits_first(models):
    model = models["bert"]
    cube = mw.extract(
        model, CLEAN, layers="embed,all", components=["resid", "attn"], token="is", cache=False
    )
    assert cube["layer"].values.tolist() == [-1, 0, 1]
    assert cube["token"].values.tolist() == ["is", "is"] and cube["position"].values.tolist() == [
        6,
        4,
    ]
    assert np.isnan(cube["act"].sel(layer=-1, component="attn").values).all()
    assert np.isfinite(cube["act"].sel(layer=-1, component="resid").values).all()
    with pytest.raises(SelectorError, match="ask for 'resid:embed'"):
        mw.extract(model, CLEAN, selectors=["attn:embed,0"], cache=False)


def test_cached_cube_keeps_its_read_tokens(models):
    model = models["gpt2"]
    first = mw.extract(model, CLEAN, layers=[0], components=["resid"], token="is")
    again = mw.extract(model, CLEAN, layers=[0], components=["resid"], token="is")
    assert again.attrs["cache_key"] == first.attrs["cache_key"]
    assert again["token"].values.tolist() == ["Ġis", "Ġis"]
    other = mw.extract(model, CLEAN, layers=[0], components=["resid"], token="is@last")
    assert other.attrs["cache_key"] != first.attrs["cache_key"]


def test_detect_compare_and_collapse_probe_the_embedding_layer_first(tiny_models):
    """The embedding layer is probed like a block (only resid: attn is NaN there, skipped)
    and sorts first; at the noun it encodes the noun's number exactly, by construction."""
    rng = np.random.default_rng(0)
    nouns = [("cat", 0), ("cats", 1), ("dog", 0), ("dogs", 1)]
    rows = [nouns[i] for i in rng.integers(0, 4, 120)]
    verbs = rng.choice(["sat", "ran", "runs", "sits"], 120)
    task = Task(
        "number",
        [f"the {n} {v}" for (n, _), v in zip(rows, verbs, strict=True)],
        {"plural": np.array([p for _, p in rows]), "verb": (verbs == "ran") | (verbs == "sat")},
        np.array(["train", "val", "test"])[np.arange(120) % 3],
        [1] * 120,
    )
    cube = mw.extract(
        tiny_models["gpt_neox"], task, layers="embed,all", components=["resid", "attn"]
    )
    fast = {"seeds": 1, "permutations": 20, "resamples": 100}
    result = mw.detect(cube, "plural", **fast)
    assert "'embed'" in json.dumps(result.chart().to_dict())  # the axis names layer -1
    detected = result.table
    resid = detected[detected["component"] == "resid"].sort_values("layer")
    assert resid["layer"].tolist()[0] == -1 and resid["score"].iloc[0] == 1.0
    assert -1 not in detected.loc[detected["component"] == "attn", "layer"].tolist()
    compared = mw.compare(cube, labels=["plural", "verb"], component="resid", **fast)
    assert -1 in compared.data["layer"].values
    collapsed = mw.collapse(cube, label="plural", component="resid", **fast)
    assert collapsed.data["layer"].values.tolist()[0] == -1


def test_a_config_reads_a_marker_column_and_the_embedding_layer(models, tmp_path):
    """From YAML/dict: a file's position column of markers, the embed layer, a local folder."""
    folder = tmp_path / "tinybert"
    models["bert"].hf.save_pretrained(folder)
    models["bert"].tokenizer.save_pretrained(folder)
    rows = [("the cat is red", 0, "cat"), ("the cats are red", 1, "cats")] * 30
    frame = pd.DataFrame(rows, columns=["text", "plural", "noun"])
    frame.assign(read=["is", "are"] * 30).to_csv(tmp_path / "data.csv", index=False)
    spec = {
        "dataset": {"name": str(tmp_path / "data.csv"), "labels": ["plural"], "position": "read",
                    "word_types": "noun"},
        "extraction": {"model_name": str(folder), "selectors": ["resid:embed,all"]},
        "action": {"name": "detect", "params": {"permutations": 20, "resamples": 100}},
        "controls": ["label_shuffle"],
        "seed": 0,
    }  # fmt: skip
    table = run_spec(spec).table
    assert sorted(set(table["layer"])) == [-1, 0, 1]
    cube = mw.extract(mw.load_model(str(folder)), mw.Task.from_file(
        tmp_path / "data.csv", labels="plural", position="read"), layers="embed")  # fmt: skip
    assert cube["token"].values.tolist()[:2] == ["is", "are"]
