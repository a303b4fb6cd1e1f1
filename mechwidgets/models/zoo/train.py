"""Train the embedded models and write their folders: weights, tokenizer and card.

The zoo's checkpoints are built here and nowhere else, so anyone can rebuild them and
check the card's numbers::

    python -m mechwidgets.models.zoo.train toy-grammar
    python -m mechwidgets.models.zoo.train toy-induction --out /tmp/ind --steps 300

Each run writes a standard Hugging Face folder (``config.json``, ``model.safetensors``,
tokenizer files) plus ``card.json``/``CARD.md`` (recipe, seed, steps, loss, time, the
ground-truth evaluation) and ``reference.safetensors`` (logits on a fixed input that a
later load must reproduce).

>>> card = train("toy-induction", out_dir="/tmp/ind", steps=3)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

from mechwidgets.core.errors import ModelError
from mechwidgets.data import grammar, induction
from mechwidgets.models.zoo import ZOO_DIR, _folder, evaluate


@dataclass(frozen=True)
class Recipe:
    """How one zoo model is built: architecture, data and optimiser."""

    name: str
    description: str
    architecture: dict[str, Any]
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup: int = 0  # steps of linear warm-up before a cosine decay; 0: constant rate
    reference_text: str = ""
    notes: str = ""


RECIPES = {
    "toy-grammar": Recipe(
        name="toy-grammar",
        description=(
            "4-layer GPT-NeoX trained on the synthetic grammar of mechwidgets.data.grammar: "
            "'the SUBJ [PREP the ATTR] VERB ADJ [and ADJ] [TIME]'. Ground truth: subject "
            "number sets the verb form, animacy the adjective class, sentiment the second "
            "adjective, tense the verb and the time word; the attractor is a distractor."
        ),
        architecture={
            "hidden_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 512,
            "max_position_embeddings": 64,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.25,
            },
            "use_parallel_residual": True,
        },
        steps=2500,
        batch_size=64,
        lr=1e-3,
        weight_decay=0.01,
        warmup=200,
        reference_text="the dog near the cars is happy and kind today",
        notes=(
            "Pythia-like: parallel residual and rotary on a quarter of each head's dims. "
            "75% of training sentences carry an attractor (half of them of the opposite "
            "number); attractor prefixes whose hash is 0 mod 8 are never trained on and "
            "make the agreement evaluation."
        ),
    ),
    "toy-induction": Recipe(
        name="toy-induction",
        description=(
            "2-layer GPT-NeoX (d_model 64, 4 heads of 16, MLP 16) trained on random tokens "
            "(vocabulary 32) ending in a segment of random length 4..8 and its repeat, 16 "
            "tokens (the two-layer setting of Olsson et al. 2022). Ground truth: one layer-0 "
            "head attends to the previous token and layer-1 heads are induction heads."
        ),
        architecture={
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 16,
            "max_position_embeddings": induction.LENGTH,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 1.0,
            },
            "use_parallel_residual": True,
        },
        steps=3000,
        batch_size=64,
        lr=3e-3,
        weight_decay=0.01,
        reference_text=induction.words(np.array([5, 17, 2, 29, 11, 23, 8, 30] * 2)),
        notes=(
            "Rotary on all head dims, so positions enter only queries and keys; parallel "
            "residual (GPT-NeoX's default). The vocabulary adds <pad> and <unk> (ids 32, "
            "33), which the data never contains. The MLP is kept (GPT-NeoX has no "
            "attention-only block) but small: with MLP 256 previous-token attention spread "
            "over three or four layer-0 heads (0.21-0.32 each) that mattered more under "
            "mean ablation than the weaker induction heads. MLP 64 and MLP 16 gave a sharp "
            "previous-token head (0.84-0.99) in every seed; the strict claim held in 3 of "
            "5 seeds with MLP 64 and in 5 of 5 with MLP 16, shipped with seed 0. "
            "Search (lr 3e-3, weight decay 0.01, no warm-up; "
            "previous-token score: attention from i to i-1 averaged over positions 1-15 "
            "of uniform random tokens; 'strict': with circuit = heads of either score "
            "> 0.5, a circuit head ranks first under mean ablation (localize, n 200) and "
            "every circuit head's interval lies above every other head's; the lowest "
            "circuit lower bound vs the highest other upper bound):\n\n"
            "| residual | MLP | steps | seed | best L0 previous-token | L1 prefix matching "
            "| repeated-half loss | strict |\n"
            "|---|---|---|---|---|---|---|---|\n"
            "| parallel | 256 | 3000 | 0 | 0.32 | 0.19 0.08 0.56 0.78 | 0.20 | no: 0.31 < 0.78 |\n"
            "| parallel | 256 | 3000 | 2 | 0.27 | 0.72 0.08 0.78 0.15 | 0.20 | no: 0.48 < 0.79 |\n"
            "| sequential | 64 | 3000 | 0 | 0.28 | 0.04 0.12 0.00 0.00 | 0.19 | no circuit |\n"
            "| sequential | 16 | 3000 | 0 | 0.24 | 0.00 0.14 0.01 0.11 | 0.21 | no circuit |\n"
            "| parallel | 64 | 3000 | 0 | 0.98 | 0.04 0.54 0.60 0.87 | 0.14 | yes: 0.17 > 0.08 |\n"
            "| parallel | 64 | 3000 | 1 | 0.99 | 0.71 0.48 0.76 0.84 | 0.22 | no: 0.04 < 0.23 |\n"
            "| parallel | 64 | 6000 | 1 | 0.99 | 0.63 0.498 0.76 0.77 | 0.18 | no: 0.09 < 0.31 |\n"
            "| parallel | 64 | 3000 | 2 | 0.97 | 0.76 0.73 0.85 0.76 | 0.24 | yes: 0.17 > 0.02 |\n"
            "| parallel | 64 | 3000 | 3 | 0.84 | 0.78 0.15 0.63 0.79 | 0.21 | yes: 0.23 > 0.17 |\n"
            "| parallel | 64 | 3000 | 4 | 0.91 | 0.74 0.70 0.81 0.15 | 0.17 | no: 0.08 < 0.10 |\n"
            "| parallel | 16 | 3000 | 0 | 0.95 | 0.90 0.05 0.91 0.87 | 0.18 | yes: 0.24 > 0.17 |\n"
            "| parallel | 16 | 3000 | 1 | 0.94 | 0.86 0.83 0.72 0.07 | 0.17 | yes: 0.07 > 0.06 |\n"
            "| parallel | 16 | 3000 | 2 | 0.85 | 0.47 0.10 0.73 0.84 | 0.22 | yes: 0.42 > 0.23 |\n"
            "| parallel | 16 | 3000 | 3 | 0.91 | 0.90 0.85 0.20 0.38 | 0.18 | yes: 0.30 > 0.14 |\n"
            "| parallel | 16 | 3000 | 4 | 0.97 | 0.77 0.72 0.12 0.85 | 0.19 | yes: 0.18 > 0.10 |\n"
            "\n"
            "The MLP-64 failures are redundancy, not a missing circuit: in seed 1 two "
            "layer-0 heads share the previous-token role and induction head 1.2 (0.76) "
            "matters less (0.07) than head 1.1 (0.48, 0.18); in seed 4 head 1.1 (0.70) "
            "overlaps layer-0 heads at 0.05. The sequential residual learnt the task with "
            "no head above 0.5 on either score, its layer-0 heads carrying the largest "
            "effects (2.9-3.4 nats): a circuit these two scores do not describe. The "
            "previous-token head usually matters most "
            "(2.1-2.9 nats against 0.2-0.5 for each induction head)."
        ),
    ),
}
SPECIALS = {"pad": "<pad>", "unk": "<unk>", "bos": "<bos>", "eos": "<eos>"}


def build_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """The word-level tokenizer of zoo model ``name`` (whitespace split, no hub files).

    toy-grammar prepends ``<bos>`` to every text; toy-induction has no ``<bos>``, as in
    its recipe, and its 32 data tokens keep ids 0..31.
    """
    if name == "toy-grammar":
        specials = dict(SPECIALS)
        vocab = [*specials.values(), *grammar.vocabulary()]
    else:
        specials = {k: SPECIALS[k] for k in ("pad", "unk")}
        vocab = [f"t{i}" for i in range(induction.VOCAB)] + list(specials.values())
    ids = {word: i for i, word in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(ids, unk_token=SPECIALS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if "bos" in specials:
        bos = specials["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, ids[bos])]
        )
    max_len = RECIPES[name].architecture["max_position_embeddings"]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_len,
        padding_side="right",
        **{f"{k}_token": v for k, v in specials.items()},
    )


def _batches(
    recipe: Recipe, tokenizer: PreTrainedTokenizerFast, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Training batches: input_ids, attention_mask and labels (-100 on padding)."""
    if recipe.name == "toy-induction":
        rng = np.random.default_rng([seed, 5])
        for _ in range(recipe.steps):
            ids = torch.from_numpy(induction.repeated_sequences(rng, recipe.batch_size)[0])
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        return
    corpus = grammar.training_corpus(recipe.steps * recipe.batch_size, seed)
    for start in range(0, len(corpus), recipe.batch_size):
        texts = [s.text for s in corpus[start : start + recipe.batch_size]]
        encoded = tokenizer(texts)["input_ids"]
        width = max(len(e) for e in encoded) + 1
        ids = torch.full((len(texts), width), tokenizer.pad_token_id)
        for row, e in enumerate(encoded):
            ids[row, : len(e) + 1] = torch.tensor([*e, tokenizer.eos_token_id])
        mask = (ids != tokenizer.pad_token_id).long()
        yield {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def _schedule(recipe: Recipe) -> Any:
    """Linear warm-up then cosine decay to 10%, or a constant rate when warmup is 0."""

    def factor(step: int) -> float:
        if recipe.warmup == 0:
            return 1.0
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _evaluation(recipe: Recipe, model: GPTNeoXForCausalLM, tokenizer: Any) -> dict[str, Any]:
    """The ground-truth numbers the card records."""
    if recipe.name == "toy-induction":
        scores = evaluate.head_scores(model)
        return {
            "loss": {k: round(v, 4) for k, v in evaluate.induction_losses(model).items()},
            "previous_token_score": scores["previous_token"].astype(float).round(4).tolist(),
            "prefix_matching_score": scores["prefix_matching"].astype(float).round(4).tolist(),
            "score_layout": "[layer][head]",
        }
    heldout = grammar.agreement_eval_set()
    present = [s for s in heldout if not s.past]
    sets = {
        "opposite_attractor_be": heldout,
        "opposite_attractor_lexical_present": [
            replace(s, verb=1 + i % (len(grammar.VERBS) - 1)) for i, s in enumerate(present)
        ],
        "no_attractor_be": [
            grammar.Sentence(subject=n, subject_plural=p, verb=0, past=t, adjective=0)
            for n in range(len(grammar.NOUNS))
            for p in (0, 1)
            for t in (0, 1)
        ],
    }
    agreement = {k: evaluate.agreement(model, tokenizer, v) for k, v in sets.items()}
    past = np.array([s.past for s in heldout], dtype=bool)
    correct = agreement["opposite_attractor_be"]["correct"]
    agreement["opposite_attractor_be_present"] = {
        "accuracy": correct[~past].mean(),
        "n": (~past).sum(),
    }
    agreement["opposite_attractor_be_past"] = {"accuracy": correct[past].mean(), "n": past.sum()}
    rules = evaluate.grammar_rules(model, tokenizer, grammar.heldout_sentences(1000))
    return {"agreement": _summary(agreement), "rules": _summary(rules)}


def _summary(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | int]]:
    """Evaluation results for the card: rounded numbers, no per-sample arrays."""
    return {
        name: {
            k: int(v) if k == "n" else round(float(v), 4) for k, v in r.items() if k != "correct"
        }
        for name, r in results.items()
    }


def train(
    name: str,
    out_dir: str | Path | None = None,
    steps: int | None = None,
    seed: int = 0,
    threads: int = 1,
    config_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train zoo model ``name`` and write its folder; return the card.

    Parameters
    ----------
    name : ``"toy-grammar"`` or ``"toy-induction"``.
    out_dir : where to write; default the shipped folder in the package.
    steps : optimiser steps; default the recipe's.
    seed : seeds the weights and the data.
    threads : torch CPU threads (the recipe timings use 1).
    config_overrides : GPTNeoXConfig fields to change (e.g. ``use_parallel_residual``).

    Returns
    -------
    The card, as written to ``card.json``.
    """
    if name not in RECIPES:
        raise ModelError(f"no training recipe for '{name}'; choose one of {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    recipe = replace(
        recipe,
        steps=steps or recipe.steps,
        architecture={**recipe.architecture, **(config_overrides or {})},
    )
    out = Path(out_dir) if out_dir is not None else ZOO_DIR / _folder(name)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(name)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **recipe.architecture,
    )
    model = GPTNeoXForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(recipe))
    losses = []
    load = os.getloadavg()[0]  # the timing depends on what else shares the CPU
    start = time.perf_counter()
    model.train()
    for batch in _batches(recipe, tokenizer, seed):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    model.eval()

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _portable(out, recipe.architecture["rope_parameters"])
    ref_ids = tokenizer(recipe.reference_text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref_logits = model(ref_ids).logits.float()
    save_file(
        {"input_ids": ref_ids, "logits": ref_logits.contiguous()},
        str(out / "reference.safetensors"),
    )
    card = {
        "name": name,
        "description": recipe.description,
        "command": "python -m mechwidgets.models.zoo.train "
        f"{name} --steps {recipe.steps} --seed {seed} --threads {threads}",
        "recipe": {k: v for k, v in asdict(recipe).items() if k not in ("name", "description")},
        "architecture": "GPTNeoXForCausalLM",
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "seed": seed,
        "steps": len(losses),
        "final_loss": round(float(np.mean(losses[-100:])), 4),
        "loss_curve": {
            str(i + 1): round(float(np.mean(losses[max(0, i - 49) : i + 1])), 4)
            for i in range(0, len(losses), max(1, len(losses) // 20))
        },  # fmt: skip
        "train_seconds": round(seconds, 1),
        "threads": threads,
        "load_average_at_start": round(load, 2),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}".strip(),
        "evaluation": _evaluation(recipe, model, tokenizer),
        "reference": {"file": "reference.safetensors", "text": recipe.reference_text},
        "weights_sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "CARD.md").write_text(card_markdown(card))
    return card


def _portable(folder: Path, rope: dict[str, Any]) -> None:
    """Make the folder load the same way in transformers 4.x, which the package allows.

    transformers 5 writes ``rope_parameters`` and ``tokenizer_class: TokenizersBackend``;
    4.x ignores the first (silently falling back to rotary on a quarter of each head)
    and cannot resolve the second. The legacy keys are read back identically by 5.x.
    """
    config_path, tok_path = folder / "config.json", folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(rotary_pct=rope["partial_rotary_factor"], rotary_emb_base=rope["rope_theta"])
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    tok_config = json.loads(tok_path.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_path.write_text(json.dumps(tok_config, indent=2) + "\n")


def card_markdown(card: dict[str, Any]) -> str:
    """The human-readable model card: what it is, how it was trained, what it does."""
    recipe = card["recipe"]
    lines = [
        f"# {card['name']}",
        "",
        card["description"],
        "",
        "## Training",
        "",
        f"- command: `{card['command']}`",
        f"- architecture: {card['architecture']}, {card['parameters']:,} parameters, "
        f"vocabulary {card['vocab_size']}",
        f"- config: `{json.dumps(recipe['architecture'])}`",
        f"- AdamW lr {recipe['lr']}, weight decay {recipe['weight_decay']}, batch "
        f"{recipe['batch_size']}, warm-up {recipe['warmup']} "
        f"({'cosine to 10%' if recipe['warmup'] else 'constant rate'})",
        f"- seed {card['seed']}, {card['steps']} steps, final loss {card['final_loss']} "
        f"(mean of the last 100 steps)",
        f"- took {card['train_seconds']} s on {card['threads']} CPU thread(s) ({card['machine']}, "
        f"load average {card['load_average_at_start']} at the start)",
        f"- torch {card['versions']['torch']}, transformers {card['versions']['transformers']}",
        "",
        recipe["notes"],
        "",
        "## Evaluation",
        "",
        *_bullets(card["evaluation"]),
        "",
        f"Reference logits for `{card['reference']['text']}` are in "
        f"`{card['reference']['file']}`; a load must reproduce them.",
        "",
    ]
    return "\n".join(lines)


def _bullets(tree: dict[str, Any], indent: str = "") -> Iterator[str]:
    """Markdown bullets for a nested dict: one line per leaf group, values as inline JSON."""
    for key, value in tree.items():
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
            yield f"{indent}- {key}:"
            yield from _bullets(value, indent + "  ")
        else:
            yield f"{indent}- {key}: `{json.dumps(value)}`"


def main(argv: list[str] | None = None) -> None:
    """Command line: train one zoo model and print its evaluation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--out", default=None, help="output folder (default: the shipped one)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    card = train(args.name, args.out, args.steps, args.seed, args.threads)
    print(json.dumps({k: card[k] for k in ("final_loss", "train_seconds", "evaluation")}, indent=2))


if __name__ == "__main__":
    main()
