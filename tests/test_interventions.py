"""Interventions are exact: ablations equal hand-written torch hooks, patching every position
reproduces the other run, attribution equals patching to first order, and on encoders and
decoders alike a patch restores a probe metric (or masked-LM logits) exactly where it must;
bad input, and a metric the model cannot give, fail in one line before any forward pass."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIGS, build_tiny, number_task

import mechwidgets as mw
from mechwidgets.core.components import LayerComponent
from mechwidgets.core.errors import ModelError, SelectorError, SpecError, TaskError
from mechwidgets.intervene.edits import READ, Cell, run_cells
from mechwidgets.intervene.prompts import Prompts
from mechwidgets.intervene.scoring import bind
from mechwidgets.intervene.sources import ablation_source, donors
from mechwidgets.models.loading import load_model
from mechwidgets.probes.linear import fit_probe

CLEAN = ["the cat sat on the mat", "a dog runs on the rug", "the big dog sits near the tree"]
CORRUPT = ["the cats sat on the mat", "a dogs runs on the rug", "the big dogs sits near the tree"]
METRIC = mw.metrics.logit_diff("is", "are")


@pytest.fixture(scope="module")
def neox(tiny_models):
    return tiny_models["gpt_neox"]


def hooked_logits(model, prompts, site, layer, replace):
    """Logits with ``replace(x)`` applied to the input of a projection by a torch pre-hook."""
    handle = model.module(site, layer).register_forward_pre_hook(
        lambda module, args: (replace(args[0].clone()),)
    )
    try:
        with torch.no_grad():
            return model.hf(**prompts.inputs).logits
    finally:
        handle.remove()


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2"])
def test_zero_ablating_a_head_equals_zeroing_its_slice_by_hook(tiny_models, family):
    model = tiny_models[family]
    prompts = Prompts.build(model, CLEAN)
    scorer = bind(METRIC, model, prompts)
    head = LayerComponent("head", 1, head=2)
    values = run_cells(model, prompts, [Cell(head)], ablation_source("zero", prompts), [scorer])[0][
        0
    ]

    def zero(z):
        z[..., 2 * model.d_head : 3 * model.d_head] = 0
        return z

    expected = scorer(hooked_logits(model, prompts, "attn_out_proj", 1, zero))
    torch.testing.assert_close(values[0], expected, atol=1e-5, rtol=1e-5)


def test_mean_ablating_a_neuron_equals_its_per_position_mean_by_hook(neox):
    prompts = Prompts.build(neox, CLEAN)
    scorer = bind(METRIC, neox, prompts)
    neuron = LayerComponent("neuron", 0, neuron=7)
    values = run_cells(neox, prompts, [Cell(neuron)], ablation_source("mean", prompts), [scorer])[
        0
    ][0]
    with torch.no_grad(), neox.nn.trace(**prompts.inputs):
        acts = neox.mlp_out_proj(0).input.save()
    mask = prompts.inputs["attention_mask"].float()
    mean = (acts[..., 7] * mask).sum(0) / mask.sum(0)

    def replace(x):
        x[..., 7] = mean
        return x

    expected = scorer(hooked_logits(neox, prompts, "mlp_out_proj", 0, replace))
    torch.testing.assert_close(values[0], expected, atol=1e-5, rtol=1e-5)


def test_resample_donors_are_other_prompts_long_enough(neox):
    prompts = Prompts.build(neox, CLEAN + ["a cat", "the dog ran", "a big cat sat near the mat"])
    picks = donors(prompts, seed=3)
    ends = (prompts.start + prompts.length).numpy()
    assert (picks != np.arange(len(picks))).all()
    assert (ends[picks] >= ends).all()
    with pytest.raises(TaskError) as info:  # the one longest prompt has no donor
        donors(Prompts.build(neox, CLEAN))
    assert "prompt 2 (7 tokens)" in str(info.value) and "\n" not in str(info.value)
    classes = np.array([0, 1, 0, 1, 0, 1])
    picks = donors(prompts, seed=3, classes=classes)
    assert (classes[picks] != classes).all() and (ends[picks] >= ends).all()


def test_patching_every_position_of_a_layer_reproduces_the_clean_run(neox):
    res = mw.patch(
        neox, CLEAN, CORRUPT, behavior=METRIC, grid=("layer", "component"),
        components=["resid:0-1"], resamples=200,
    )  # fmt: skip
    assert res.direction == "denoise" and res.method == "activation"
    assert np.allclose(res.table["effect"], 1.0, atol=1e-4)
    assert res.table["delta"].to_numpy() == pytest.approx(res.clean_value - res.corrupt_value)
    # and the logits themselves: every position of block 0 from the clean run
    pairs = [Prompts.build(neox, texts) for texts in (CLEAN, CORRUPT)]
    with torch.no_grad(), neox.nn.trace(**pairs[0].inputs):
        clean_resid = neox.block(0).output.save()
        clean_logits = neox.nn.output.logits.save()
    with torch.no_grad(), neox.nn.trace(**pairs[1].inputs):
        neox.block(0).output[:] = clean_resid
        patched_logits = neox.nn.output.logits.save()
    torch.testing.assert_close(patched_logits, clean_logits)


def test_noising_every_position_destroys_the_whole_gap(neox):
    res = mw.patch(
        neox, CLEAN, CORRUPT, behavior=METRIC, grid=("layer", "component"),
        components=["resid"], direction="noise", attribution=False, resamples=200,
    )  # fmt: skip
    assert res.direction == "noise" and "attribution" not in res.table
    assert res.table["layer"].tolist() == [-1, 0, 1]  # -1: the embeddings
    assert np.allclose(res.table["effect"], 1.0, atol=1e-4)
    assert "destroyed" in res.verdict() and "noise" in res.table["intervention"].iloc[0]


def test_position_grid_sums_to_the_whole_layer_at_the_last_block(neox):
    res = mw.patch(neox, CLEAN, CORRUPT, behavior=METRIC, components=["resid:1"], resamples=200)
    # after the last block a position only changes its own prediction: the read tokens' cells
    # add up to the full effect
    assert res.table["effect"].sum() == pytest.approx(1.0, abs=1e-4)
    assert set(res.table["position"]) == set(range(Prompts.build(neox, CLEAN).width))


def test_patch_takes_tasks_and_their_behaviour(neox):
    def task(texts):
        return mw.Task(name="t", texts=texts, labels={}, split=["test"] * 3, behavior=METRIC)

    res = mw.patch(neox, clean=task(CLEAN), corrupt=task(CORRUPT), resamples=200)
    same = mw.patch(neox, CLEAN, CORRUPT, behavior=METRIC, resamples=200)
    assert res.metric == "logit_diff(is-are)"
    np.testing.assert_allclose(res.table["effect"], same.table["effect"])


@pytest.fixture(scope="module")
def nudged():
    """A tiny float64 model in which 'cats' embeds as 'cat' nudged by 1e-3 of its norm."""
    hf, tok = build_tiny("gpt_neox", seed=1)
    hf = hf.double()
    cat, cats = tok.convert_tokens_to_ids(["cat", "cats"])
    with torch.no_grad():
        emb = hf.gpt_neox.embed_in.weight
        noise = torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(0))
        emb[cats] = emb[cat] + 1e-3 * emb[cat].norm() * noise.double() / noise.norm()
    return load_model(hf, tokenizer=tok)


def test_attribution_equals_activation_patching_for_a_tiny_perturbation(nudged):
    clean = ["the cat sat on the mat", "a cat runs on the rug", "the big cat sits near"]
    corrupt = [t.replace("cat", "cats") for t in clean]
    res = mw.patch(nudged, clean, corrupt, behavior=mw.metrics.logprob("the"), resamples=200)
    act, atp = res.table["delta"].to_numpy(), res.table["attribution_delta"].to_numpy()
    scale = np.abs(act).max()
    assert scale > 0
    assert np.abs(act - atp).max() < 0.01 * scale  # second-order terms only
    assert res.agreement["pearson"] > 0.999
    alone = mw.attribution_patch(nudged, clean, corrupt, behavior=mw.metrics.logprob("the"))
    assert alone.method == "attribution"
    assert alone.table["delta"].to_numpy() == pytest.approx(atp, rel=1e-4, abs=1e-9)


def test_patch_result_tables_charts_and_summary(neox):
    res = mw.patch(neox, CLEAN, CORRUPT, behavior=METRIC, resamples=200)
    cols = {"layer", "component", "position", "token", "intervention", "effect", "ci_low"}
    assert cols <= set(res.table.columns)
    assert (res.table["ci_low"] <= res.table["effect"] + 1e-9).all()
    assert {"resid", "attn", "mlp", "head.0", "head.3"} <= set(res.table["component"])
    charts = res.charts()
    assert set(charts) == {"main", "heads", "agreement"}
    assert charts["main"].to_dict()["layer"][0]["mark"]["type"] == "rect"
    scatter = charts["agreement"].to_dict()
    assert [layer["mark"]["type"] for layer in scatter["layer"]] == ["line", "circle"]
    points = scatter["layer"][1]["encoding"]
    assert (points["x"]["field"], points["y"]["field"]) == ("effect", "attribution")
    json.dumps(res.summary())
    assert repr(res) == repr(res)  # deterministic text
    assert {"pearson", "spearman"} <= set(res.agreement)


def test_read_position_cells_edit_only_the_read_token(neox):
    prompts = Prompts.build(neox, CLEAN, positions=[1, 1, 1])
    scorer = bind(mw.metrics.logprob("the"), neox, prompts)
    late = Cell(LayerComponent("resid", 1), READ)  # after the last block, at the read token
    cells = [late, Cell(LayerComponent("resid", 1), 4)]
    values = run_cells(neox, prompts, cells, ablation_source("zero", prompts), [scorer])[0][0]
    with torch.no_grad():
        base = scorer(neox.hf(**prompts.inputs).logits)
    assert not torch.allclose(values[0], base)
    torch.testing.assert_close(values[1], base)  # position 4 comes after the read token


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"corrupt": CORRUPT[:2]}, TaskError, "3 clean prompts but 2 corrupt"),
        ({"corrupt": ["the cats sat", *CORRUPT[1:]]}, TaskError, "pair 0 has 6 clean and 3"),
        ({"behavior": mw.metrics.logit_diff("is are", "are")}, TaskError, "2 tokens"),
        ({"components": ["head:1.9"]}, SelectorError, "head 9"),
        ({"grid": ("layer", "token")}, SpecError, "parameter 'grid'"),
        ({"direction": "sideways"}, SpecError, "parameter 'direction'"),
        ({"behavior": None}, SpecError, "no behaviour metric"),
    ],
)
def test_bad_patching_input_fails_in_one_line(neox, kwargs, error, words):
    args = {"corrupt": CORRUPT, "behavior": METRIC, **kwargs}
    with pytest.raises(error) as info:
        mw.patch(neox, CLEAN, **args)
    assert words in str(info.value) and "\n" not in str(info.value)


# --- encoders and decoders alike: probe metrics, masked-LM logits, checks before work ------

SUBJECT, READ_AT = 1, 5  # number_task: "the cat sat on the mat", no special tokens


def plural_probe(model, score="margin"):
    """A probe of the subject's number fitted after the last block at the last token, as a
    metric of the number task's labels."""
    task, _ = number_task(40)
    last = model.shape.n_layers - 1
    cube = mw.extract(model, task, layers=[last], components=["resid"], cache=False)
    y = task.labels["plural"]
    fitted = fit_probe(cube["act"].sel(layer=last, component="resid").values, y, task.split)
    return mw.metrics.probe(fitted, layer=last, labels=y, score=score)


@pytest.mark.parametrize("family", [*TINY_CONFIGS, "bert_mlm"])
def test_patching_restores_the_metric_exactly_where_it_must(tiny_models, tiny_mlm, family):
    """Exact by construction: patching the differing token's embedding makes the two inputs
    one; patching the stream the metric reads, at the token it reads, gives it the clean
    value. Encoders score a probe (or, with the masked-LM head, the logits), decoders a probe."""
    model = tiny_mlm if family == "bert_mlm" else tiny_models[family]
    task, corrupt = number_task(40)
    if family == "bert_mlm":  # the clean subject's logit minus the corrupt one's, at the end
        subjects = [[text.split()[SUBJECT] for text in side] for side in (task.texts, corrupt)]
        metric = mw.metrics.logit_diff(*subjects)
    else:
        metric = plural_probe(model)
    res = mw.patch(model, task, corrupt, behavior=metric, n=8, components=["resid"],
                   resamples=100)  # fmt: skip
    effect = res.table.set_index(["layer", "position"])["effect"]
    last = model.shape.n_layers - 1
    assert abs(res.clean_value - res.corrupt_value) > 1e-3
    assert effect[(-1, SUBJECT)] == pytest.approx(1.0, abs=1e-4)
    assert effect[(last, READ_AT)] == pytest.approx(1.0, abs=1e-4)
    assert effect.loc[-1].drop(index=SUBJECT).abs().max() < 1e-4  # the other tokens agree
    if family != "bert_mlm":  # a probe is linear in the stream it reads: attribution is exact
        cell = res.table.set_index(["layer", "position"]).loc[(last, READ_AT)]
        assert cell["attribution"] == pytest.approx(cell["effect"], abs=1e-4)


def test_attribution_patching_runs_on_an_encoder(tiny_models):
    bert = tiny_models["bert"]
    task, corrupt = number_task(40)
    metric = plural_probe(bert)
    res = mw.attribution_patch(bert, task, corrupt, behavior=metric, n=8, resamples=100)
    assert res.method == "attribution" and res.metric == "probe(resid:1, margin)"
    assert {"resid", "attn", "mlp", "head.0"} <= set(res.table["component"])
    effect = res.table.set_index(["layer", "component", "position"])["effect"]
    assert effect[(1, "resid", READ_AT)] == pytest.approx(1.0, abs=1e-4)


def test_a_step_metric_refuses_attribution_before_any_forward_pass(tiny_models):
    bert = tiny_models["bert"]
    task, corrupt = number_task(40)
    accuracy = plural_probe(bert, score="accuracy")
    with pytest.raises(SpecError) as info:
        mw.patch(bert, task, corrupt, behavior=accuracy, n=8, components=["resid"])
    assert "step function" in str(info.value) and "attribution=False" in str(info.value)
    res = mw.patch(bert, task, corrupt, behavior=accuracy, n=8, components=["resid"],
                   attribution=False, resamples=100)  # fmt: skip
    assert res.metric == "probe(resid:1, accuracy)"


@pytest.mark.parametrize("action", [mw.patch, mw.attribution_patch])
def test_a_logit_metric_on_an_encoder_without_a_head_fails_in_one_line_at_once(tiny_models, action):
    task, corrupt = number_task(40)
    start = time.perf_counter()
    with pytest.raises(ModelError) as info:
        action(tiny_models["bert"], task, corrupt, behavior=METRIC)
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert "\n" not in message and "no output head" in message and "mw.metrics.probe" in message
