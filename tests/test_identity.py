"""The weight identity: hashed once per state of the weights, never per call."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

import mechwidgets as mw
from mechwidgets.models import loading


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
