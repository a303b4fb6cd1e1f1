"""The embedded models: offline loading, reference logits, and the claims on their cards."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mechwidgets as mw
from mechwidgets.data import grammar
from mechwidgets.models.zoo import ZOO_DIR, list_models, model_dir
from mechwidgets.models.zoo.evaluate import (
    agreement,
    grammar_rules,
    head_scores,
    induction_losses,
    load_folder,
)
from mechwidgets.models.zoo.train import main, train

HF_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


@pytest.fixture(scope="module")
def toy_grammar():  # noqa: ANN201
    torch.set_num_threads(1)
    return load_folder(model_dir("toy-grammar"))


@pytest.fixture(scope="module")
def toy_induction():  # noqa: ANN201
    return load_folder(model_dir("toy-induction"))[0]


def card(name: str) -> dict:
    return json.loads((model_dir(name) / "card.json").read_text())


def test_zoo_lists_both_models_with_hf_files_and_cards() -> None:
    assert list_models() == ["toy-grammar", "toy-induction"] and mw.list_models is list_models
    for name in list_models():
        folder = model_dir(name)
        assert all((folder / f).is_file() for f in (*HF_FILES, "card.json", "CARD.md"))
        info = card(name)
        for key in ("recipe", "seed", "steps", "final_loss", "train_seconds", "evaluation"):
            assert key in info, (name, key)
        assert info["steps"] == info["recipe"]["steps"]
        markdown = (folder / "CARD.md").read_text()
        assert (
            f"seed {info['seed']}, {info['steps']} steps, final loss {info['final_loss']}"
            in markdown
        )
        assert f"took {info['train_seconds']} s on" in markdown


def test_load_model_works_offline_and_reproduces_the_reference_logits() -> None:
    script = (
        "import json, torch\n"
        "from safetensors.torch import load_file\n"
        "import mechwidgets as mw\n"
        "from mechwidgets.models.zoo import model_dir\n"
        "out = {}\n"
        "for name in ('toy-grammar', 'toy-induction'):\n"
        "    model = mw.load_model(name)\n"
        "    ref = load_file(str(model_dir(name) / 'reference.safetensors'))\n"
        "    text = json.load(open(model_dir(name) / 'card.json'))['reference']['text']\n"
        "    ids = model.tokenizer(text, return_tensors='pt')['input_ids']\n"
        "    assert torch.equal(ids, ref['input_ids']), name\n"
        "    with torch.no_grad():\n"
        "        out[name] = (model.hf(ids).logits - ref['logits']).abs().max().item()\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    diffs = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(diffs) == {"toy-grammar", "toy-induction"}
    assert max(diffs.values()) < 1e-5, diffs


def test_toy_grammar_agrees_with_the_subject_across_attractors(toy_grammar) -> None:  # noqa: ANN001
    model, tokenizer = toy_grammar
    result = agreement(model, tokenizer, grammar.agreement_eval_set())
    assert result["n"] > 9000
    assert result["accuracy"] >= 0.95
    claimed = card("toy-grammar")["evaluation"]["agreement"]["opposite_attractor_be"]
    assert result["accuracy"] == pytest.approx(claimed["accuracy"], abs=1e-3)


def test_toy_grammar_uses_animacy_sentiment_and_tense_where_the_grammar_needs_them(
    toy_grammar,  # noqa: ANN001
) -> None:
    model, tokenizer = toy_grammar
    rules = grammar_rules(model, tokenizer, grammar.heldout_sentences(300, seed=5))
    assert {name: r["accuracy"] >= 0.95 for name, r in rules.items()} == {
        "animacy": True,
        "sentiment": True,
        "tense": True,
    }


def test_toy_induction_has_the_induction_heads_its_card_claims(toy_induction) -> None:  # noqa: ANN001
    claimed = card("toy-induction")["evaluation"]
    scores = head_scores(toy_induction)
    # the model card's claim: a sharp previous-token head in layer 0 and induction heads in layer 1
    assert scores["previous_token"][0].max() > 0.5 and scores["prefix_matching"][1].max() > 0.5
    np.testing.assert_allclose(
        scores["prefix_matching"], claimed["prefix_matching_score"], atol=1e-3
    )
    np.testing.assert_allclose(scores["previous_token"], claimed["previous_token_score"], atol=1e-3)
    losses = induction_losses(toy_induction)
    assert losses["repeated_half"] < 0.5 < 3.0 < losses["first_half"]
    assert losses["repeated_half"] == pytest.approx(claimed["loss"]["repeated_half"], abs=1e-3)


@pytest.mark.parametrize("name", ["toy-grammar", "toy-induction"])
def test_training_script_runs_a_few_steps_into_a_loadable_folder(name: str, tmp_path: Path) -> None:
    small = {"num_hidden_layers": 1, "intermediate_size": 64}
    info = train(name, tmp_path, steps=3, seed=1, config_overrides=small)
    assert info["steps"] == 3 and math.isfinite(info["final_loss"])
    assert info["recipe"]["architecture"]["num_hidden_layers"] == 1
    model, tokenizer = load_folder(tmp_path)
    assert model.config.num_hidden_layers == 1 and model.config.vocab_size == len(tokenizer)
    ids = tokenizer(info["reference"]["text"], return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(ids).logits).all()


def test_training_command_line_writes_the_card(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    main(["toy-induction", "--out", str(tmp_path), "--steps", "2", "--seed", "3"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["final_loss"] == json.loads((tmp_path / "card.json").read_text())["final_loss"]
    assert "--steps 2 --seed 3" in (tmp_path / "CARD.md").read_text()


def test_whole_package_stays_under_20_mb() -> None:
    package = ZOO_DIR.parent.parent
    files = [p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    shipped = sum(p.stat().st_size for p in ZOO_DIR.rglob("*") if p.is_file())
    assert shipped < 6 * 2**20
