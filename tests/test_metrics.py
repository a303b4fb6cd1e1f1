"""Behaviour metrics: the numbers match a hand computation on the logits (a decoder's or a
masked LM's) or on the hidden states (probe readouts, norms, projections), read at the token
extraction reads; task metrics are the same objects; what a model cannot give, and bad
answers, fail with one line in under a second."""

from __future__ import annotations

import time

import conftest
import numpy as np
import pytest
import torch
import transformers
from conftest import number_task
from transformers import BertModel

import mechwidgets as mw
from mechwidgets.core.errors import ModelError, SpecError, TaskError
from mechwidgets.intervene.edits import capture
from mechwidgets.intervene.metrics import (
    LogitDiff,
    RepeatLogProb,
    describe,
    normalized_effect,
    orientation,
)
from mechwidgets.intervene.prompts import Prompts
from mechwidgets.intervene.scoring import bind, output_head
from mechwidgets.models.loading import load_model
from mechwidgets.models.zoo.train import build_tokenizer
from mechwidgets.probes.linear import LabelEncoding, LinearProbe, fit_probe

TEXTS = ["the cat sat on the mat", "a dog runs", "the big dogs are"]


@pytest.fixture(scope="module")
def neox(tiny_models):
    return tiny_models["gpt_neox"]


def logits_of(model, prompts):
    with torch.no_grad():
        return model.hf(**prompts.inputs).logits


def test_logit_diff_is_the_task_metric_and_matches_the_logits(neox):
    metric = mw.metrics.logit_diff(correct="is", wrong="are")
    assert isinstance(metric, LogitDiff) and metric == LogitDiff(("is",), ("are",))
    prompts = Prompts.build(neox, TEXTS)
    logits = logits_of(neox, prompts)
    is_, are = neox.tokenizer.convert_tokens_to_ids(["is", "are"])
    last = torch.tensor([5, 2, 3])
    rows = torch.arange(3)
    expected = logits[rows, last, is_] - logits[rows, last, are]
    torch.testing.assert_close(bind(metric, neox, prompts)(logits), expected)
    # k stacked copies of the prompts score row by row
    stacked = bind(metric, neox, prompts)(logits.repeat(2, 1, 1))
    torch.testing.assert_close(stacked, expected.repeat(2))


def test_per_sample_answers_follow_the_samples(neox):
    metric = mw.metrics.logit_diff(correct=["is", "are", "is"], wrong=["are", "is", "are"])
    prompts = Prompts.build(neox, TEXTS[1:], samples=[1, 2], n_source=3)
    logits = logits_of(neox, prompts)
    is_, are = neox.tokenizer.convert_tokens_to_ids(["is", "are"])
    last = torch.tensor([2, 3])
    expected = torch.stack(
        [logits[0, last[0], are] - logits[0, last[0], is_], logits[1, 3, is_] - logits[1, 3, are]]
    )
    torch.testing.assert_close(bind(metric, neox, prompts)(logits), expected)


def test_logprob_and_prob_at_a_read_position(neox):
    prompts = Prompts.build(neox, TEXTS, positions=[1, 0, -2])
    assert prompts.read.tolist() == [1, 0, 2]
    logits = logits_of(neox, prompts)
    target = neox.tokenizer.convert_tokens_to_ids("the")
    logp = logits.log_softmax(-1)[torch.arange(3), prompts.read, target]
    torch.testing.assert_close(bind(mw.metrics.logprob("the"), neox, prompts)(logits), logp)
    torch.testing.assert_close(bind(mw.metrics.prob("the"), neox, prompts)(logits), logp.exp())


def test_repeat_logprob_and_span_loss_average_the_marked_tokens(neox):
    mask = np.zeros((3, 6), dtype=bool)
    mask[0, [2, 5]] = True
    mask[1, 1] = True
    mask[2, 3] = True
    prompts = Prompts.build(neox, TEXTS)
    logits = logits_of(neox, prompts)
    logp = logits.log_softmax(-1)
    ids = prompts.inputs["input_ids"]

    def lp(i, t):  # log p(token t | tokens before t)
        return logp[i, t - 1, ids[i, t]]

    expected = torch.stack([(lp(0, 2) + lp(0, 5)) / 2, lp(1, 1), lp(2, 3)])
    value = bind(mw.metrics.repeat_logprob(mask), neox, prompts)(logits)
    torch.testing.assert_close(value, expected)
    loss = bind(mw.metrics.span_loss(mask), neox, prompts)(logits)
    torch.testing.assert_close(loss, -expected)
    assert orientation(mw.metrics.span_loss(mask)) == -1
    assert orientation(RepeatLogProb(mask)) == 1


def test_read_positions_count_special_tokens_as_extraction_does():
    tok = build_tokenizer("toy-grammar")
    config = transformers.GPTNeoXConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        vocab_size=len(tok), max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    model = load_model(transformers.GPTNeoXForCausalLM(config).eval(), tokenizer=tok)
    texts = ["the dog is", "the dogs near the cars are"]
    prompts = Prompts.build(model, texts, positions=[1, -1])
    assert prompts.start.tolist() == [1, 1]  # the own tokens start after <bos>
    assert prompts.length.tolist() == [3, 6]
    assert prompts.read.tolist() == [1, 6]  # <bos> is token 0
    assert Prompts.build(model, texts, positions=["dog", "dogs"]).read.tolist() == [2, 2]


def test_normalized_effect():
    assert normalized_effect(patched=1.2, clean=2.0, corrupt=-2.0) == pytest.approx(0.8)
    out = normalized_effect(np.array([2.0, -2.0]), np.array([2.0, 1.0]), np.array([-2.0, 1.0]))
    assert out[0] == 1.0 and np.isnan(out[1])


def test_describe_names_the_metric():
    assert describe(mw.metrics.logit_diff("is", "are")) == "logit_diff(is-are)"
    assert describe(mw.metrics.logit_diff(["is", "are"], ["are", "is"])) == "logit_diff"
    assert describe(mw.get_task("induction", n=40).behavior) == "repeat_logprob"


@pytest.mark.parametrize(
    ("metric", "error", "words"),
    [
        (mw.metrics.logit_diff("is are", "are"), TaskError, "2 tokens"),
        (mw.metrics.logprob("zebra"), TaskError, "not in the tokenizer's vocabulary"),
        (mw.metrics.logit_diff(["is", "are"], "are"), TaskError, "2 values for 3 samples"),
        ("accuracy", SpecError, "unknown behaviour metric"),
    ],
)
def test_bad_metrics_fail_in_one_line(neox, metric, error, words):
    prompts = Prompts.build(neox, TEXTS)
    with pytest.raises(error) as info:
        bind(metric, neox, prompts)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_bad_prompts_fail_in_one_line(neox):
    with pytest.raises(TaskError) as info:
        Prompts.build(neox, TEXTS, positions=[0, 7, 0])
    assert "outside text 1" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SpecError):
        mw.metrics.span_loss(np.ones((2, 3)))


# --- metrics that need no output head: probe readouts and hidden states --------------------


def hidden_at(model, prompts, layer):
    """The residual stream after block ``layer`` at each prompt's read token, by plain HF."""
    with torch.no_grad():
        out = model.hf(**prompts.inputs, output_hidden_states=True)
    return out.hidden_states[layer + 1][torch.arange(len(prompts)), prompts.read].double()


def score_unpatched(model, prompts, metric):
    return capture(model, prompts, [], [bind(metric, model, prompts)])[1][0].double()


@pytest.mark.parametrize("family", conftest.TINY_CONFIGS)
def test_a_probe_metric_reads_the_token_extraction_read(tiny_models, family):
    """A probe fitted on the cube scores the unpatched run exactly as it scores the cube."""
    model = tiny_models[family]
    task, _ = number_task(40)
    task.positions = np.array([t.split()[1] for t in task.texts], dtype=object)  # markers
    cube = mw.extract(model, task, layers=[1], components=["resid"], cache=False)
    fitted = fit_probe(cube["act"].sel(layer=1, component="resid").values, task.labels["plural"],
                       task.split)  # fmt: skip
    prompts = Prompts.build(model, task.texts, task.positions)
    metric = mw.metrics.probe(fitted, layer=1)
    expected = fitted.decision(cube["act"].sel(layer=1, component="resid").values)[:, 0]
    np.testing.assert_allclose(score_unpatched(model, prompts, metric), expected, atol=1e-4)


def test_probe_scores_match_a_hand_computation(tiny_models):
    model = tiny_models["bert"]
    prompts = Prompts.build(model, TEXTS)
    x = hidden_at(model, prompts, 0)
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(32, 3)), rng.normal(size=3)
    d = x.numpy() @ w + b  # (3 prompts, 3 classes)
    three = LinearProbe(LabelEncoding("multiclass", np.array(["x", "y", "z"])), w, b, 1.0,
                        "accuracy", 1.0, 1.0)  # fmt: skip
    labels = ["z", "x", "y"]
    true = np.array([2, 0, 1])
    own = d[np.arange(3), true]
    others = np.where(np.eye(3, dtype=bool)[true], -np.inf, d).max(1)
    for score, expected in [
        ("logit", own),
        ("margin", own - others),
        ("accuracy", (d.argmax(1) == true).astype(float)),
    ]:
        metric = mw.metrics.probe(three, layer=0, labels=labels, score=score)
        np.testing.assert_allclose(score_unpatched(model, prompts, metric), expected, atol=1e-4)
    # a direction: raw projection + bias, or signed towards each prompt's side
    raw = x.numpy() @ w[:, 0] + 0.5
    direction = mw.metrics.probe(direction=w[:, 0], bias=0.5, layer=0)
    np.testing.assert_allclose(score_unpatched(model, prompts, direction), raw, atol=1e-4)
    sides = [True, False, True]
    margin = mw.metrics.probe(direction=w[:, 0], bias=0.5, layer=0, labels=sides, score="margin")
    np.testing.assert_allclose(score_unpatched(model, prompts, margin), raw * [1, -1, 1], atol=1e-4)
    assert describe(margin) == "probe(resid:0, margin)"


def test_hidden_state_metrics_match_a_hand_computation(tiny_models):
    model = tiny_models["gpt_neox"]
    prompts = Prompts.build(model, TEXTS, positions=[1, 0, -2])
    x = hidden_at(model, prompts, 0)  # (HF's last hidden state is after the final norm)
    u = np.arange(32.0)
    norm = score_unpatched(model, prompts, mw.metrics.hidden(0))
    np.testing.assert_allclose(norm, x.norm(dim=-1), rtol=1e-5)
    projection = score_unpatched(model, prompts, mw.metrics.hidden(0, direction=u))
    np.testing.assert_allclose(projection, x.numpy() @ u / np.linalg.norm(u), rtol=1e-4)
    assert describe(mw.metrics.hidden(0, direction=u)) == "projection(resid:0)"


def test_a_probe_from_a_detect_result_is_the_probe_detect_fitted(tiny_models):
    model = tiny_models["bert"]
    task, _ = number_task(60)
    task.positions = np.full(60, 1)  # the subject
    cube = mw.extract(model, task, components=["resid"], cache=False)
    res = mw.detect(cube, label="plural", controls=["label_shuffle"], seeds=1, permutations=20,
                    resamples=100)  # fmt: skip
    metric = mw.metrics.probe(res, cube=cube, score="accuracy")
    best = res.summary()["best"]
    assert metric.component.layer == best["layer"] and metric.labels == tuple(range(2)) * 30
    prompts = Prompts.build(model, task.texts, task.positions)
    accuracy = score_unpatched(model, prompts, metric).numpy()
    assert accuracy[task.split == "test"].mean() == pytest.approx(best["score"])


def test_masked_lm_logits_come_from_its_prediction_head(tiny_mlm):
    prompts = Prompts.build(tiny_mlm, TEXTS, positions=[2, 1, 0])
    with torch.no_grad():
        logits = tiny_mlm.hf(**prompts.inputs).logits
    is_, are = tiny_mlm.tokenizer.convert_tokens_to_ids(["is", "are"])
    rows = torch.arange(3)
    expected = logits[rows, prompts.read, is_] - logits[rows, prompts.read, are]
    metric = mw.metrics.logit_diff("is", "are")
    torch.testing.assert_close(score_unpatched(tiny_mlm, prompts, metric).float(), expected)


def one_line(error, call, *args, **kwargs) -> str:
    start = time.perf_counter()
    with pytest.raises(error) as info:
        call(*args, **kwargs)
    assert time.perf_counter() - start < 1.0
    assert "\n" not in str(info.value)
    return str(info.value)


def test_what_a_model_cannot_give_fails_in_one_line(tiny_models, tiny_mlm):
    encoder = tiny_models["bert"]
    prompts = Prompts.build(encoder, TEXTS)
    message = one_line(ModelError, bind, mw.metrics.logit_diff("is", "are"), encoder, prompts)
    assert "no output head" in message and "masked-LM head" in message
    assert "mw.metrics.probe" in message
    mask = np.ones((3, 6), bool)
    message = one_line(ModelError, bind, mw.metrics.repeat_logprob(mask), tiny_mlm, prompts)
    assert "masked LM" in message
    assert "layers 0-1" in one_line(SpecError, bind, mw.metrics.hidden(2), encoder, prompts)
    wide = mw.metrics.probe(direction=np.ones(16), layer=0)
    assert "16 weights" in one_line(SpecError, bind, wide, encoder, prompts)
    labels = mw.metrics.probe(direction=np.ones(32), layer=0, labels=[1, 0], score="margin")
    assert "2 values for 3 samples" in one_line(TaskError, bind, labels, encoder, prompts)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"direction": np.ones(4), "layer": 0, "score": "odds"}, "unknown probe score"),
        ({"direction": np.ones(4), "layer": 0, "score": "margin"}, "needs the true class"),
        ({"direction": np.ones(4), "layer": "last"}, "block index"),
        ({"direction": np.ones(4), "layer": 0, "component": "head"}, "reads one of"),
        ({"layer": 0}, "takes a detect result"),
    ],
)
def test_bad_probe_metrics_fail_in_one_line(kwargs, words):
    assert words in one_line(SpecError, mw.metrics.probe, **kwargs)


def test_a_probe_reads_the_embedding_layer_as_the_cube_stores_it(tiny_models):
    model = tiny_models["gpt2"]  # the embedding output adds position embeddings
    task, _ = number_task(40)
    cube = mw.extract(model, task, layers="embed", components=["resid"], cache=False)
    x = cube["act"].sel(layer=-1, component="resid").values
    fitted = fit_probe(x, task.labels["plural"], task.split)
    prompts = Prompts.build(model, task.texts, task.positions)
    metric = mw.metrics.probe(fitted, layer="embed")
    assert describe(metric) == "probe(resid:embed, logit)"
    np.testing.assert_allclose(
        score_unpatched(model, prompts, metric), fitted.decision(x)[:, 0], atol=1e-4
    )


def test_an_encoder_folder_loads_with_the_head_it_was_saved_with(tmp_path):
    config = conftest.TINY_CONFIGS["bert"]()
    for name, hf in [("mlm", transformers.BertForMaskedLM(config)), ("bare", BertModel(config))]:
        hf.save_pretrained(tmp_path / name)
        conftest.word_tokenizer().save_pretrained(tmp_path / name)
    with_head, bare = (mw.load_model(str(tmp_path / name)) for name in ("mlm", "bare"))
    assert type(with_head.hf).__name__ == "BertForMaskedLM" and output_head(with_head) is not None
    assert type(bare.hf).__name__ == "BertModel" and output_head(bare) is None  # never random
