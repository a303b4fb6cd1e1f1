"""The adapter table and model loading: paths resolve, sizes match, errors are one line."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch
import transformers
from conftest import TINY_CONFIGS, build_tiny

import mechwidgets as mw
from mechwidgets.core.errors import ModelError
from mechwidgets.models import zoo
from mechwidgets.models.adapters import ADAPTERS, adapter_for

FAMILY = {"gpt_neox": "gpt_neox", "gpt2": "gpt2", "bert": "bert"} | dict.fromkeys(
    ("llama", "qwen2", "mistral"), "llama"
)


@pytest.mark.parametrize("model_type", TINY_CONFIGS)
def test_family_is_detected_from_model_type(model_type):
    assert adapter_for(TINY_CONFIGS[model_type]()).family == FAMILY[model_type]


@pytest.mark.parametrize("model_type", TINY_CONFIGS)
def test_every_path_resolves_and_sizes_match_the_weights(tiny_models, model_type):
    model = tiny_models[model_type]
    config = model.hf.config
    assert model.shape.n_layers == 2 and model.shape.n_heads == 4
    assert model.d_model == 32 and model.d_head == 8 and model.max_context == 64
    assert model.shape.d_mlp == (128 if model_type == "gpt2" else 64)  # GPT-2: 4 * n_embd
    for layer in range(model.shape.n_layers):
        for site in ("block", "attn", "mlp", "attn_out_proj", "mlp_out_proj"):
            assert isinstance(model.module(site, layer), torch.nn.Module)
            assert model.envoy(site, layer)._module is model.module(site, layer)
        assert model.out_proj_weight("attn_out_proj", layer).shape == (32, 32)
        assert model.out_proj_weight("mlp_out_proj", layer).shape == (model.shape.d_mlp, 32)
    base = model.hf.base_model
    adapter = model.adapter
    assert isinstance(base.get_submodule(adapter.embed), torch.nn.Embedding)
    if adapter.final_norm:
        assert base.get_submodule(adapter.final_norm) is not None
    if adapter.unembed and model.hf is not model.hf.base_model:  # loaded with its head
        unembed = model.hf.get_submodule(adapter.unembed)
        assert unembed.out_features == config.vocab_size


def test_accessors_read_the_same_values_as_hooks(tiny_models):
    model = tiny_models["bert"]  # its `output` submodules are renamed by nnsight
    inputs = model.tokenize(["the cat sat", "a dog"], padding_side="right")
    seen = {}
    handle = model.module("mlp_out_proj", 1).register_forward_pre_hook(
        lambda m, args: seen.setdefault("neurons", args[0].detach().clone())
    )
    with torch.no_grad(), model.nn.trace(**inputs):
        neurons = model.mlp_out_proj(1).input.save()
        resid = model.block(1).output.save()
    handle.remove()
    torch.testing.assert_close(neurons, seen.pop("neurons"))
    assert neurons.shape == (2, 3, model.shape.d_mlp) and resid.shape == (2, 3, 32)


@pytest.mark.parametrize("side", ["left", "right"])
def test_tokenize_pads_either_side_with_positions_over_real_tokens(tiny_models, side):
    model = tiny_models["gpt2"]  # no pad token of its own: load_model set one
    assert model.tokenizer.pad_token == model.tokenizer.eos_token
    inputs = model.tokenize(["the cat sat", "a dog"], padding_side=side)
    mask = inputs["attention_mask"]
    assert mask.tolist() == ([[1, 1, 1], [0, 1, 1]] if side == "left" else [[1, 1, 1], [1, 1, 0]])
    real = inputs["position_ids"][mask.bool()].tolist()
    assert real == [0, 1, 2, 0, 1]


def test_identity_hashes_weights_of_in_memory_models():
    a = mw.load_model(*build_tiny("gpt_neox", seed=0))
    b = mw.load_model(*build_tiny("gpt_neox", seed=0))
    c = mw.load_model(*build_tiny("gpt_neox", seed=1))
    assert a.identity == b.identity != c.identity
    assert a.identity.startswith("weights:") and a.tokenizer_hash == c.tokenizer_hash


def test_named_models_load_from_the_zoo_folder_offline(tmp_path, monkeypatch):
    hf, tok = build_tiny("llama")
    hf.save_pretrained(tmp_path / "tiny_zoo")
    tok.save_pretrained(tmp_path / "tiny_zoo")
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)
    model = mw.load_model("tiny-zoo", dtype="bfloat16")
    assert model.source.startswith("zoo:tiny-zoo@") and model.revision in model.source
    assert model.dtype == torch.bfloat16 and model.adapter.family == "llama"
    cube = mw.extract(model, ["the cat sat"], layers=[1], components=["resid"], cache=False)
    assert cube.attrs["dtype"] == "bfloat16" and cube["act"].dtype == "float32"


def one_line_error(error, call, *args, **kwargs) -> str:
    with pytest.raises(error) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_model_fails_in_one_line_with_what_to_do(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    message = one_line_error(ModelError, mw.load_model, "nobody/no-such-model")
    assert "nobody/no-such-model" in message and "zoo" in message
    assert "local Hugging Face cache" in message


def test_unsupported_architecture_names_supported_families():
    message = one_line_error(ModelError, adapter_for, transformers.OPTConfig())
    assert "'opt'" in message
    assert all(a.family in message for a in ADAPTERS)
    torch.manual_seed(0)
    opt = transformers.OPTForCausalLM(
        transformers.OPTConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2
        )
    )
    one_line_error(ModelError, mw.load_model, opt, tokenizer=build_tiny("gpt2")[1])


def test_bad_load_arguments_fail_in_one_line():
    hf, _ = build_tiny("gpt2")
    assert "tokenizer=" in one_line_error(ModelError, mw.load_model, hf)
    assert "float32" in one_line_error(ModelError, mw.load_model, "toy", dtype="float8")
    assert "model name" in one_line_error(ModelError, mw.load_model, 42)


def test_local_folders_load_as_hf_models_unless_exactly_a_zoo_name(tmp_path, monkeypatch):
    zoo_dir, mine = tmp_path / "zoo", tmp_path / "work"
    for folder, family in ((zoo_dir / "tiny_zoo", "gpt2"), (mine / "tiny_zoo", "llama")):
        hf, tok = build_tiny(family)
        hf.save_pretrained(folder)
        tok.save_pretrained(folder)
    monkeypatch.setattr(zoo, "ZOO_DIR", zoo_dir)
    monkeypatch.chdir(mine)
    assert mw.load_model("tiny-zoo").adapter.family == "gpt2"  # exactly the zoo name
    relative = mw.load_model("tiny_zoo")  # not the zoo name: the folder here
    absolute = mw.load_model(str(mine / "tiny_zoo"))
    assert relative.adapter.family == absolute.adapter.family == "llama"
    assert absolute.source.startswith(f"local:{mine / 'tiny_zoo'}@")
    assert mw.load_model(str(zoo_dir / "tiny_zoo")).source.startswith("local:")


def test_a_broken_local_folder_is_named_in_one_line(tmp_path, monkeypatch):
    broken = tmp_path / "minibert"
    broken.mkdir()
    (broken / "config.json").write_text(transformers.BertConfig().to_json_string())
    message = one_line_error(ModelError, mw.load_model, str(broken))
    assert f"cannot load the folder '{broken}'" in message and "reinstall" not in message
    missing = one_line_error(ModelError, mw.load_model, str(tmp_path / "nowhere"))
    assert f"no folder at '{tmp_path / 'nowhere'}'" in missing
    monkeypatch.chdir(tmp_path)
    assert "cannot load the folder 'minibert'" in one_line_error(
        ModelError, mw.load_model, "minibert"
    )
