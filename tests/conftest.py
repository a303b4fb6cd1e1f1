"""Shared fixtures: tiny random-weight models of every supported family, built offline.

Every model has 2 blocks, d_model 32, 4 heads and an MLP of 64, and reads a word-level
vocabulary (``WORDS``) through a tokenizer built with ``tokenizers``; nothing downloads.
The whole session writes cubes to a temporary cache folder, never ``~/.cache``.

>>> def test_something(tiny_models):
...     model = tiny_models["gpt_neox"]
"""

from __future__ import annotations

import os

# Tests never reach a model hub: an unknown id fails at once instead of after retries.
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from mechwidgets.data.splits import stratified_split
from mechwidgets.data.tasks import Task
from mechwidgets.models.loading import Model, load_model

#: the vocabulary, one string so it stays readable
WORDS = (
    "the a cat cats dog dogs bird sat sits ran runs on under near mat rug tree big small "
    "red blue and quickly slowly is are was were"
)
SPECIALS = ["[PAD]", "[UNK]", "[EOS]"]
SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
IDS = {"vocab_size": 64, "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 0}
#: model_type -> config; GPT-2 uses its own key names, the rest the common ones
TINY_CONFIGS = {
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        **SIZES, **IDS, intermediate_size=64, max_position_embeddings=64
    ),
    "gpt2": lambda: transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **IDS),
    "llama": lambda: transformers.LlamaConfig(
        **SIZES, **IDS, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64
    ),
    "qwen2": lambda: transformers.Qwen2Config(
        **SIZES, **IDS, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64
    ),
    "mistral": lambda: transformers.MistralConfig(
        **SIZES, **IDS, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64
    ),
    "bert": lambda: transformers.BertConfig(
        **SIZES, **IDS, intermediate_size=64, max_position_embeddings=64
    ),
}
#: families whose real tokenizers ship without a pad token; load_model must set one
NO_PAD = {"gpt2", "llama", "qwen2", "mistral"}


def word_tokenizer(pad: bool = True) -> transformers.PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over ``WORDS`` (with or without a pad token)."""
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS.split())}
    core = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        eos_token="[EOS]",
        pad_token="[PAD]" if pad else None,
    )


def build_tiny(
    model_type: str, seed: int = 0
) -> tuple[torch.nn.Module, transformers.PreTrainedTokenizerFast]:
    """A random-weight model of ``model_type`` and its tokenizer."""
    torch.manual_seed(seed)
    config = TINY_CONFIGS[model_type]()
    auto = transformers.AutoModel if model_type == "bert" else transformers.AutoModelForCausalLM
    return auto.from_config(config).eval(), word_tokenizer(pad=model_type not in NO_PAD)


@pytest.fixture(scope="session")
def tiny_mlm() -> Model:
    """A random-weight BERT loaded with its masked-LM head (``BertForMaskedLM``), its weights
    drawn wide enough (std 0.5, not BERT's 0.02) that its logits vary with the input."""
    torch.manual_seed(0)
    config = TINY_CONFIGS["bert"]()
    config.initializer_range = 0.5
    hf = transformers.BertForMaskedLM(config).eval()
    return load_model(hf, tokenizer=word_tokenizer())


def number_task(n: int = 40, seed: int = 0) -> tuple[Task, list[str]]:
    """Sentences whose subject (word 1) is singular or plural (label ``plural``), read at
    the last word, and for each a corrupt twin whose subject has the other number."""
    rng = np.random.default_rng(seed)
    plural = np.resize([0, 1], n)
    nouns = rng.choice(["cat", "dog"], n)
    words = [rng.choice(options, n) for options in (["the", "a"], ["sat", "ran"], ["on", "near"])]
    rest = [f"{verb} {prep} the {obj}" for verb, prep, obj in zip(
        words[1], words[2], rng.choice(["mat", "rug", "tree"], n), strict=True
    )]  # fmt: skip
    texts, corrupt = [], []
    for det, noun, number, tail in zip(words[0], nouns, plural, rest, strict=True):
        forms = (noun, noun + "s") if not number else (noun + "s", noun)
        texts.append(f"{det} {forms[0]} {tail}")
        corrupt.append(f"{det} {forms[1]} {tail}")
    task = Task(
        name="number", texts=texts, labels={"plural": plural},
        split=stratified_split(plural, seed), positions=np.full(n, -1),
    )  # fmt: skip
    return task, corrupt


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Model]:
    """model_type -> loaded tiny Model, built once per session."""
    return {t: load_model(*build_tiny(t)) for t in TINY_CONFIGS}


@pytest.fixture
def count_calls():
    """``count_calls(module)`` -> a list that grows by one each time ``module`` is entered."""
    handles = []

    def count(module: torch.nn.Module) -> list[int]:
        calls: list[int] = []
        handles.append(module.register_forward_pre_hook(lambda *_: calls.append(1)))
        return calls

    yield count
    for handle in handles:
        handle.remove()


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point MECHWIDGETS_CACHE at a temporary folder for the whole session."""
    old = os.environ.get("MECHWIDGETS_CACHE")
    os.environ["MECHWIDGETS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("MECHWIDGETS_CACHE", None)
    else:
        os.environ["MECHWIDGETS_CACHE"] = old


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, empty activation cache folder for one test (``MECHWIDGETS_CACHE``)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("MECHWIDGETS_CACHE", str(folder))
    return folder
