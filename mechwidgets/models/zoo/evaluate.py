"""Ground-truth measurements of the zoo models: what the cards claim and the tests re-check.

toy-grammar: subject-verb agreement across an attractor of the opposite number on
prefixes never trained on. toy-induction: loss on the repeated half against the first
half, and every head's previous-token and prefix-matching scores (Olsson et al. 2022).

>>> model, tokenizer = load_folder(model_dir("toy-grammar"))
>>> agreement(model, tokenizer, agreement_eval_set())["accuracy"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from mechwidgets.data import grammar, induction
from mechwidgets.data.grammar import Sentence


def load_folder(folder: str | Path) -> tuple[PreTrainedModel, Any]:
    """A zoo checkpoint and its tokenizer, from disk only, in eval mode, float32."""
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model.eval(), tokenizer


@torch.no_grad()
def last_token_logits(model: PreTrainedModel, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """Next-token logits (n, vocab) after the last token of each text (right-padded batch)."""
    out = []
    for start in range(0, len(texts), 1024):
        batch = tokenizer(texts[start : start + 1024], return_tensors="pt", padding=True)
        hidden = model.base_model(**batch).last_hidden_state
        last = batch["attention_mask"].sum(1) - 1
        out.append(model.get_output_embeddings()(hidden[torch.arange(len(last)), last]))
    return torch.cat(out)


def preference(
    model: PreTrainedModel,
    tokenizer: Any,
    texts: list[str],
    right: list[list[str]],
    wrong: list[list[str]],
) -> dict[str, Any]:
    """Share of texts whose next-word probability mass on ``right`` exceeds that on ``wrong``.

    Returns
    -------
    ``accuracy``, ``n``, ``mean_log_ratio`` (log mass on right minus log mass on wrong;
    for one word each, the logit difference) and ``correct``, the per-text bool array.
    """
    logprobs = last_token_logits(model, tokenizer, texts).log_softmax(-1)

    def log_mass(words: list[list[str]]) -> torch.Tensor:
        mask = torch.zeros_like(logprobs, dtype=torch.bool)
        for row, group in enumerate(words):
            mask[row, tokenizer.convert_tokens_to_ids(group)] = True
        return logprobs.masked_fill(~mask, -torch.inf).logsumexp(-1)

    ratio = (log_mass(right) - log_mass(wrong)).numpy()
    return {
        "accuracy": float((ratio > 0).mean()),
        "n": len(texts),
        "mean_log_ratio": float(ratio.mean()),
        "correct": ratio > 0,
    }


def agreement(model: PreTrainedModel, tokenizer: Any, sentences: list[Sentence]) -> dict[str, Any]:
    """Share of prefixes where the correct verb form beats the number-flipped one.

    Sentences whose two forms coincide (past tense of lexical verbs) are skipped; the
    result is that of :func:`preference` on the prefixes that end before the verb.
    """
    sentences = [s for s in sentences if s.verb_form != s.wrong_verb_form]
    return preference(
        model,
        tokenizer,
        [s.prefix for s in sentences],
        [[s.verb_form] for s in sentences],
        [[s.wrong_verb_form] for s in sentences],
    )


def grammar_rules(
    model: PreTrainedModel, tokenizer: Any, sentences: list[Sentence]
) -> dict[str, Any]:
    """Whether toy-grammar uses animacy, sentiment and tense where the grammar needs them.

    - ``animacy``: after the verb, mass on adjectives of the subject's animacy class
      against the other class;
    - ``sentiment``: after "ADJ and", mass on the other adjectives of the first one's
      sentiment (same class) against those of the opposite sentiment;
    - ``tense``: after the first adjective, mass on time words of the verb's tense
      against those of the other tense.

    Returns
    -------
    rule -> :func:`preference` result.
    """
    adjectives = np.array(grammar.ADJECTIVES)
    animate, positive = grammar.ADJECTIVE_ANIMATE, grammar.ADJECTIVE_POSITIVE

    def group(a: int, p: int | None = None, drop: int | None = None) -> list[str]:
        keep = animate == a
        if p is not None:
            keep &= positive == p
        if drop is not None:
            keep[drop] = False
        return adjectives[keep].tolist()

    rules = {
        "animacy": (
            [s.cut("verb") for s in sentences],
            [group(s.animate) for s in sentences],
            [group(1 - s.animate) for s in sentences],
        ),
        "sentiment": (
            [s.cut("adjective") + " and" for s in sentences],
            [group(s.animate, s.positive, drop=s.adjective) for s in sentences],
            [group(s.animate, 1 - s.positive) for s in sentences],
        ),
        "tense": (
            [s.cut("adjective") for s in sentences],
            [list(grammar.TIME_WORDS[s.past]) for s in sentences],
            [list(grammar.TIME_WORDS[1 - s.past]) for s in sentences],
        ),
    }
    return {name: preference(model, tokenizer, *args) for name, args in rules.items()}


@torch.no_grad()
def induction_losses(model: PreTrainedModel, n: int = 2000, seed: int = 1) -> dict[str, float]:
    """Mean next-token loss on the repeated half and on the first half of fresh sequences."""
    tokens, lengths = induction.repeated_sequences(np.random.default_rng([seed, 3]), n)
    ids = torch.from_numpy(tokens)
    logprobs = model(ids).logits[:, :-1].log_softmax(-1)
    nll = -logprobs.gather(-1, ids[:, 1:, None])[..., 0].numpy()  # nll[:, t-1] is target t
    return {
        "repeated_half": float(nll[induction.repeat_mask(lengths)[:, 1:]].mean()),
        "first_half": float(nll[induction.first_half_mask(lengths)[:, 1:]].mean()),
        "chance": float(np.log(induction.VOCAB)),
    }


@torch.no_grad()
def attention_patterns(model: PreTrainedModel, ids: torch.Tensor) -> np.ndarray:
    """Attention weights as an array (layer, batch, head, query, key), eager attention."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # sdpa does not return attention weights
    try:
        attentions = model(ids, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(previous)
    return torch.stack(attentions).numpy()


def head_scores(model: PreTrainedModel, n: int = 200, seed: int = 2) -> dict[str, np.ndarray]:
    """Previous-token and prefix-matching score of every head, arrays (layer, head).

    Previous-token score: mean attention from position i to i-1 on uniform random
    sequences. Prefix matching: on sequences of distinct random tokens ending in a segment
    of random length (4..8) and its repeat, mean attention from each token's second
    occurrence to the token after its first. A random length keeps a head that attends
    at a fixed offset from scoring.
    """
    rng = np.random.default_rng([seed, 4])
    length = induction.LENGTH
    pos = np.arange(length)
    uniform = rng.integers(0, induction.VOCAB, size=(n, length))
    previous = (pos[:, None] - 1 == pos[None, :])[None].repeat(n, 0)
    lengths = rng.integers(induction.MIN_REPEAT, induction.MAX_REPEAT + 1, size=n)
    repeated = np.zeros((n, length), dtype=np.int64)
    for row, k in enumerate(lengths):
        distinct = rng.permutation(induction.VOCAB)[: length - k]
        repeated[row] = np.concatenate([distinct, distinct[-k:]])
    second = pos[None, :, None] >= length - lengths[:, None, None]
    prefix = second & (pos[None, None, :] == pos[None, :, None] - lengths[:, None, None] + 1)
    return {
        "previous_token": _mean_attention(model, uniform, previous),
        "prefix_matching": _mean_attention(model, repeated, prefix),
    }


def _mean_attention(model: PreTrainedModel, tokens: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Attention summed over the (query, key) pairs marked in ``where`` (batch, query, key),
    averaged over marked queries, per (layer, head)."""
    pattern = attention_patterns(model, torch.from_numpy(tokens))  # layer, batch, head, q, k
    weight = where[None, :, None].astype(pattern.dtype)
    per_query = (pattern * weight).sum(-1)
    return per_query.sum((1, 3)) / where.any(-1).sum()
