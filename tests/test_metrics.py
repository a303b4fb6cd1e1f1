"""Behaviour metrics: the numbers match a hand computation on the logits, task metrics are
the same objects, and bad answers fail with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import mechwidgets as mw
from mechwidgets.core.errors import SpecError, TaskError
from mechwidgets.data.tasks import LogitDiff, RepeatLogProb
from mechwidgets.metrics import Prompts, bind, describe, normalized_effect, orientation
from mechwidgets.models.loading import load_model
from mechwidgets.models.zoo.train import build_tokenizer

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


def test_special_tokens_shift_the_own_tokens():
    tok = build_tokenizer("toy-grammar")
    config = transformers.GPTNeoXConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        vocab_size=len(tok), max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    model = load_model(transformers.GPTNeoXForCausalLM(config).eval(), tokenizer=tok)
    prompts = Prompts.build(model, ["the dog is", "the dogs near the cars are"], positions=[0, -1])
    assert prompts.start.tolist() == [1, 1]  # after <bos>
    assert prompts.length.tolist() == [3, 6]
    assert prompts.read.tolist() == [1, 6]


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
        (mw.metrics.logit_diff(["is", "are"], "are"), TaskError, "2 words for 3 samples"),
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
    assert "outside prompt 1" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SpecError):
        mw.metrics.span_loss(np.ones((2, 3)))
