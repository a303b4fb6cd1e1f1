"""Architecture adapters: where each component lives, as a table of data.

One :class:`Adapter` row per architecture family says where the blocks, the attention and
MLP writes into the residual stream, their output projections, the final norm and the
(un)embedding live, and which config keys hold the sizes. Extraction and interventions
read the table; nothing else in the toolkit knows a module name. The family is detected
from the Hugging Face config's ``model_type``.

>>> adapter = adapter_for(transformers.GPTNeoXConfig())
>>> adapter.family, adapter.attn, adapter.attn_out_proj
('gpt_neox', 'attention', 'attention.dense')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mechwidgets.core.errors import ModelError


@dataclass(frozen=True)
class Adapter:
    """Where one architecture family keeps its components.

    Paths are dotted attribute paths. ``blocks``, ``final_norm`` and ``embed`` are relative
    to the HF *base* model (``model.base_model``), so the same row serves a bare base model
    and a model with a head; ``unembed`` is relative to the model with the head. The
    component paths are relative to one block.

    Parameters
    ----------
    family : name shown to users.
    model_types : the config ``model_type`` values this row serves.
    blocks : the ``ModuleList`` of transformer blocks; a block's output is ``resid``.
    attn : the module whose output (first element when a tuple) is the attention's write
        into the residual stream, before the residual add: ``attn``.
    attn_out_proj : the attention output projection; its input is the heads' outputs,
        concatenated, so head ``h`` is the slice ``h * d_head : (h + 1) * d_head``.
    mlp : the module whose output is the MLP's write into the residual stream: ``mlp``.
    mlp_out_proj : the MLP down projection; its input is the neuron activations (after the
        nonlinearity, and after the gate for gated MLPs).
    final_norm, embed, unembed : the final norm, token embedding and output head (None
        where the family has none). The head maps the final norm's output (the last
        block's where there is no final norm) to vocabulary logits; a model loaded without
        it (``AutoModel``) has no logits.
    n_heads_key, d_model_key, max_context_key : config keys of those sizes.
    d_head_key : config key of the head size where it may differ from d_model / n_heads.
    out_proj_transposed : True when projections store weights as (in, out) (GPT-2's
        ``Conv1D``) rather than ``nn.Linear``'s (out, in).
    auto_class : the ``transformers`` auto class that loads a checkpoint of this family.
    causal : True when the head predicts the next token; False for masked LMs, whose head
        predicts the token it reads.
    """

    family: str
    model_types: tuple[str, ...]
    blocks: str
    attn: str
    attn_out_proj: str
    mlp: str
    mlp_out_proj: str
    final_norm: str | None
    embed: str
    unembed: str | None
    n_heads_key: str
    d_model_key: str
    max_context_key: str
    d_head_key: str | None = None
    out_proj_transposed: bool = False
    auto_class: str = "AutoModelForCausalLM"
    causal: bool = True


ADAPTERS: tuple[Adapter, ...] = (
    Adapter(
        family="gpt_neox",
        model_types=("gpt_neox",),
        blocks="layers",
        attn="attention",
        attn_out_proj="attention.dense",
        mlp="mlp",
        mlp_out_proj="mlp.dense_4h_to_h",
        final_norm="final_layer_norm",
        embed="embed_in",
        unembed="lm_head",
        n_heads_key="num_attention_heads",
        d_model_key="hidden_size",
        max_context_key="max_position_embeddings",
    ),
    Adapter(
        family="gpt2",
        model_types=("gpt2",),
        blocks="h",
        attn="attn",
        attn_out_proj="attn.c_proj",
        mlp="mlp",
        mlp_out_proj="mlp.c_proj",
        final_norm="ln_f",
        embed="wte",
        unembed="lm_head",
        n_heads_key="n_head",
        d_model_key="n_embd",
        max_context_key="n_positions",
        out_proj_transposed=True,
    ),
    Adapter(
        family="llama",
        model_types=("llama", "qwen2", "mistral"),
        blocks="layers",
        attn="self_attn",
        attn_out_proj="self_attn.o_proj",
        mlp="mlp",
        mlp_out_proj="mlp.down_proj",
        final_norm="norm",
        embed="embed_tokens",
        unembed="lm_head",
        n_heads_key="num_attention_heads",
        d_model_key="hidden_size",
        max_context_key="max_position_embeddings",
        d_head_key="head_dim",
    ),
    # BERT is post-norm: a sublayer's write is its output projection's output, before the
    # residual add and LayerNorm, so attn/mlp point at the projections themselves.
    Adapter(
        family="bert",
        model_types=("bert",),
        blocks="encoder.layer",
        attn="attention.output.dense",
        attn_out_proj="attention.output.dense",
        mlp="output.dense",
        mlp_out_proj="output.dense",
        final_norm=None,  # post-norm: every block ends in its own LayerNorm
        embed="embeddings.word_embeddings",
        unembed="cls.predictions",  # BertForMaskedLM's head: dense, activation, norm, decoder
        n_heads_key="num_attention_heads",
        d_model_key="hidden_size",
        max_context_key="max_position_embeddings",
        auto_class="AutoModel",
        causal=False,
    ),
)


def adapter_for(config: Any) -> Adapter:
    """The adapter for an HF config, by its ``model_type``; unknown types raise ModelError."""
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    families = ", ".join(f"{a.family} ({'/'.join(a.model_types)})" for a in ADAPTERS)
    raise ModelError(
        f"unsupported architecture '{model_type}': supported families are {families}; "
        "add a row to mechwidgets.models.adapters.ADAPTERS for a new one"
    )


#: checkpoint class names (``config.architectures``) that carry a masked-LM head
MASKED_LM_HEADS = ("ForMaskedLM", "ForPreTraining")


def auto_class_for(config: Any) -> str:
    """The ``transformers`` auto class that loads a checkpoint with the head it was saved with.

    An encoder saved with its masked-LM head (``BertForMaskedLM``, ``BertForPreTraining``)
    loads with ``AutoModelForMaskedLM``, so its logits can be read; one saved without it
    loads as the bare encoder (never with a randomly initialised head).
    """
    adapter = adapter_for(config)
    saved = getattr(config, "architectures", None) or []
    if not adapter.causal and any(name.endswith(MASKED_LM_HEADS) for name in saved):
        return "AutoModelForMaskedLM"
    return adapter.auto_class


def config_value(config: Any, key: str) -> int:
    """An integer size from a config, or a one-line ModelError naming the missing key."""
    value = getattr(config, key, None)
    if not isinstance(value, int):
        raise ModelError(f"model config has no integer '{key}'; is this a {config.model_type}?")
    return value


def walk(root: Any, path: str) -> Any:
    """Follow a dotted path through attributes and integer indices (torch modules or envoys)."""
    node = root
    for part in filter(None, path.split(".")):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node
