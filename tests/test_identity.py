"""The weight identity: hashed once per state of the weights, never per call."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import build_tiny

import mechwidgets as mw
from mechwidgets.extract.request import cached_cube
from mechwidgets.models import loading
from mechwidgets.models.card import find_card


@pytest.fixture
def hashes(monkeypatch):
    """Count calls of the weights hash."""
    calls = []
    real = loading.weights_hash

    def counted(module):
        calls.append(module)
        return real(module)

    monkeypatch.setattr(loading, "weights_hash", counted)
    return calls


def test_identity_is_hashed_once_until_an_in_place_edit(hashes):
    model = mw.load_model(*build_tiny("gpt_neox", seed=0))
    first = model.identity
    assert model.identity == first and len(hashes) == 1
    with torch.no_grad():  # torch's version counter sees this edit
        model.module("mlp_out_proj", 0).weight.mul_(2.0)
    assert model.identity != first and len(hashes) == 2
    assert model.identity == model.identity and len(hashes) == 2


def test_load_state_dict_and_dtype_changes_rehash(hashes):
    model = mw.load_model(*build_tiny("llama", seed=0))
    before = model.identity
    other = build_tiny("llama", seed=1)[0]
    model.hf.load_state_dict(other.state_dict())
    after = model.identity
    assert after != before and after == mw.load_model(other, tokenizer=model.tokenizer).identity
    model.hf.to(torch.float64)
    assert model.identity != after


def test_data_edits_need_forget_identity(hashes):
    model = mw.load_model(*build_tiny("gpt2", seed=0))
    first = model.identity
    model.module("mlp_out_proj", 0).weight.data.mul_(2.0)  # bypasses the version counter
    assert model.identity == first  # the documented blind spot
    model.forget_identity()
    assert model.identity != first


def test_extract_hashes_at_most_once_per_state(hashes, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHWIDGETS_CACHE", str(tmp_path))
    model = mw.load_model(*build_tiny("gpt_neox", seed=2))
    for _ in range(3):  # one cold call (the key and the attrs both read the identity), two cached
        mw.extract(model, ["the cat sat", "a dog"], layers=[0], components=["resid"]).close()
    assert len(hashes) == 1


def test_a_card_keys_the_cube_as_the_loaded_model_and_a_changed_checkpoint_has_none(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("MECHWIDGETS_CACHE", str(tmp_path / "cache"))
    hf, tok = build_tiny("gpt_neox", seed=3)
    folder = tmp_path / "ckpt"
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    assert find_card(str(folder)) is None  # never loaded
    model = mw.load_model(str(folder))
    card = find_card(str(folder))
    assert card == loading.model_card(model)  # identity, tokenizer hash, dtype, sizes
    texts, where = ["the cat sat", "a dog ran"], {"layers": [0], "components": ["resid"]}
    assert cached_cube(card, texts, **where) is None  # nothing extracted yet
    cube = mw.extract(model, texts, **where)
    found = cached_cube(card, texts, **where)
    assert found.attrs["cache_key"] == cube.attrs["cache_key"]
    np.testing.assert_array_equal(found["act"].values, cube["act"].values)
    assert cached_cube(card, texts[:1], **where) is None  # another request: not this cube
    assert find_card(str(folder), dtype="float16") is None
    assert find_card(str(folder), revision="v2") is None
    weights = folder / "model.safetensors"
    stat = weights.stat()  # the checkpoint rewritten since: no card, the model must load
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert find_card(str(folder)) is None


def test_a_card_is_recorded_at_load_so_a_later_edit_never_enters_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHWIDGETS_CACHE", str(tmp_path / "cache"))
    hf, tok = build_tiny("gpt_neox", seed=4)
    folder = tmp_path / "ckpt"
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    model = mw.load_model(str(folder))
    card = find_card(str(folder))
    with torch.no_grad():
        model.module("mlp_out_proj", 0).weight.mul_(2.0)
    texts, where = ["the cat sat"], {"layers": [0], "components": ["resid"]}
    edited = mw.extract(model, texts, **where)
    assert edited.attrs["model_identity"] != card.identity
    assert (
        cached_cube(card, texts, **where) is None
    )  # the edited model's cube is not the checkpoint's
    mw.load_model(str(folder))  # a second load finds its card and leaves it as it is
    assert find_card(str(folder)) == card
