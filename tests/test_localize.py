"""localize and patching on the zoo models, against their known circuits.

toy-induction: the circuit is the heads whose previous-token or prefix-matching score on
the model card exceeds 0.5 (Olsson et al. 2022's two-layer setting). toy-grammar: the
verb's number comes from the subject noun alone, so patching the subject's embedding
restores the whole logit difference, and with depth the information flows from the
subject to the read token (the last one), not back and not elsewhere. Random-weight BERTs
(with and without the masked-LM head): localize ranks by a probe metric where there are
no logits, reports both drops side by side where there are, and checks every metric
before extracting.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from conftest import number_task

import mechwidgets as mw
from mechwidgets.actions.base import RunContext, run_action
from mechwidgets.core.errors import ModelError, SelectorError, SpecError, TaskError
from mechwidgets.intervene.edits import capture
from mechwidgets.intervene.prompts import Prompts
from mechwidgets.intervene.scoring import bind
from mechwidgets.models.zoo import model_dir
from mechwidgets.probes.linear import fit_probe
from mechwidgets.runner import run_spec

THRESHOLD = 0.5


@pytest.fixture(scope="session")
def toy_induction():
    torch.set_num_threads(1)
    return mw.load_model("toy-induction")


@pytest.fixture(scope="session")
def toy_grammar():
    torch.set_num_threads(1)
    return mw.load_model("toy-grammar")


@pytest.fixture(scope="session")
def induction_heads(toy_induction):
    """localize over every head on the induction behaviour, once per session."""
    task = mw.get_task("induction", n=200)
    return mw.localize(toy_induction, task, components=["head"], interventions=["mean", "resample"])


def circuit_heads() -> set[str]:
    """Heads whose card score (previous-token or prefix-matching) exceeds the threshold."""
    card = json.loads((model_dir("toy-induction") / "card.json").read_text())["evaluation"]
    scores = np.maximum(card["previous_token_score"], card["prefix_matching_score"])
    return {f"head:{layer}.{head}" for layer, head in np.argwhere(scores > THRESHOLD)}


def test_induction_ranks_a_circuit_head_first(induction_heads):
    circuit = circuit_heads()
    ranking = induction_heads.ranking
    assert circuit, "the card names no circuit head"
    assert ranking["tested"].all() and len(ranking) == 8  # no label: every head intervened on
    assert ranking["site"].iloc[0] in circuit
    assert ranking["effect"].is_monotonic_decreasing
    assert ranking["ablation"].eq("mean").all()
    assert induction_heads.verdict().startswith(f"{ranking['site'].iloc[0]} matters most: mean")


def test_induction_circuit_heads_separate_from_every_other_head(induction_heads):
    """Every circuit head's interval lies above every non-circuit head's, in any layer.

    Which circuit head matters most is left open: redundant induction heads can each
    matter less than the previous-token head they all depend on.
    """
    circuit = circuit_heads()
    table = induction_heads.ranking.set_index("site")
    inside, outside = table.loc[sorted(circuit)], table.drop(index=sorted(circuit))
    assert len(inside) and len(outside)
    assert inside["ci_low"].min() > outside["ci_high"].max(), (inside, outside)


def test_induction_result_names_ablations_and_charts(induction_heads):
    impact = induction_heads.impact
    assert set(impact["intervention"]) == {"mean", "resample"}
    assert set(impact["metric"]) == {"behavior"}
    assert (impact["ci_low"] <= impact["drop"]).all() and (
        impact["drop"] <= impact["ci_high"]
    ).all()
    matrix = induction_heads.impact_matrix
    assert list(matrix.columns) == ["behavior[mean]", "behavior[resample]"]
    assert list(matrix.index) == list(induction_heads.ranking["site"])
    charts = induction_heads.charts()
    assert set(charts) == {"heads"}
    assert induction_heads.chart().to_dict()["layer"][0]["encoding"]["y"]["field"] == "layer"
    json.dumps(induction_heads.summary())


@pytest.fixture(scope="session")
def grammar_patch(toy_grammar):
    pairs = mw.get_task_pairs("subject_number", n=64)
    return mw.patch(toy_grammar, clean=pairs, n=16, components=["resid", "attn", "mlp"])


def test_subject_embedding_restores_the_logit_difference(grammar_patch):
    table = grammar_patch.table
    resid = table[table["component"] == "resid"].set_index(["layer", "position"])["effect"]
    subject, last = 2, int(table["position"].max())  # <bos> the SUBJECT ... ATTRACTOR
    assert grammar_patch.clean_value > 0 > grammar_patch.corrupt_value
    assert resid.loc[(-1, subject)] == pytest.approx(1.0, abs=0.02)
    assert resid.loc[(table["layer"].max(), last)] == pytest.approx(1.0, abs=0.02)
    # number flows from the subject to the read token, never back, and nowhere else
    layers = sorted(set(table["layer"]))
    at_subject = np.array([resid.loc[(layer, subject)] for layer in layers])
    at_last = np.array([resid.loc[(layer, last)] for layer in layers])
    assert (np.diff(at_subject) < 0.05).all() and (np.diff(at_last) > -0.05).all()
    for layer in layers:
        assert resid.loc[layer].drop(index=[subject, last]).abs().max() < 0.1, layer


def test_attribution_agrees_with_activation_patching_on_the_grid(grammar_patch):
    agreement = grammar_patch.agreement
    assert agreement["cells"] == len(grammar_patch.table)
    assert agreement["pearson"] > THRESHOLD
    assert agreement["spearman"] > THRESHOLD
    assert f"r={agreement['pearson']:.2f}" in grammar_patch.verdict()


def test_localize_probes_then_intervenes_on_the_top_candidates(toy_grammar):
    task = mw.get_task("subject_number", n=400)
    res = mw.localize(
        toy_grammar, task, label="subject_number",
        behavior=mw.metrics.logit_diff(correct="is", wrong="are"),
        components=["resid", "attn", "mlp", "head"], top_k=4, n=40,
        interventions=["zero", "mean", "resample", "patch"], resamples=300,
    )  # fmt: skip
    ranking = res.ranking
    assert ranking["tested"].sum() == 4
    tested = ranking[ranking["tested"]]
    untested = ranking[~ranking["tested"]]
    assert tested["probe_score"].min() >= untested["probe_score"].max()
    names = {"zero", "mean", "resample", "patch:noise(other-class)"}
    assert set(res.impact["intervention"]) == names
    assert {f"{m}_drop[{n}]" for m in ("behavior", "probe") for n in names} <= set(ranking)
    # is-are is positive for singular subjects and negative for plural ones: signed per class
    assert res.metric == "logit_diff(is-are), signed by subject_number class"
    assert res.clean_behavior > 1
    assert res.clean_probe > 0.9  # the readout probe after the last block decodes number
    assert set(res.impact["metric"]) == {"behavior", "probe"}
    assert set(res.charts()) == {"main", "heads", "probe"}


def test_localize_on_prompt_pairs_patches_the_corrupt_prompts(toy_grammar):
    pairs = mw.get_task_pairs("subject_number", n=200)
    res = mw.localize(toy_grammar, pairs, components=["attn:0", "head:0.*"],
                      interventions=["patch"], resamples=300)  # fmt: skip
    assert res.ranking["ablation"].eq("patch:noise(corrupt)").all()
    assert res.metric == "logit_diff"  # the pairs' own clean-minus-corrupt answers
    # noising layer 0's attention swaps in the corrupt subject's number: the answer flips
    top = res.ranking.iloc[0]
    assert top["site"] == "attn:0" and top["effect"] > res.clean_behavior


def test_localize_runs_as_the_registered_action(toy_induction):
    context = RunContext(
        model=toy_induction,
        task=mw.get_task("induction", n=40),
        params={"components": ["head:1.*"], "interventions": ["zero"], "resamples": 200},
    )
    res = run_action("localize", context)
    assert res.action == "localize" and len(res.ranking) == 4
    assert res.ranking["ablation"].eq("zero").all()


def test_localize_ablates_single_neurons(toy_induction):
    res = mw.localize(toy_induction, mw.get_task("induction", n=40), label="in_repeat",
                      components=["neuron:1.3", "head:1.3"], top_k=1, interventions=["zero"],
                      resamples=200)  # fmt: skip
    table = res.ranking.set_index("site")
    assert table.loc["neuron:1.3", "tested"] and np.isnan(table.loc["neuron:1.3", "probe_score"])
    assert table.loc["head:1.3", "tested"]  # the one probed candidate kept by top_k=1


def test_localize_runs_from_a_config_into_a_bundle(tmp_path):
    spec = {"action": "localize", "model": "toy-induction", "task": "induction", "n": 40,
            "components": "head", "interventions": ["zero"], "resamples": 200}  # fmt: skip
    res = run_spec(spec, output_dir=tmp_path / "run")
    assert res.ranking["site"].iloc[0] in circuit_heads()
    assert (tmp_path / "run" / "report.html").is_file()
    assert any((tmp_path / "run" / "charts").iterdir())


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"interventions": ["patch"]}, SpecError, "needs corrupt prompts"),
        ({"interventions": ["shuffle"]}, SpecError, "parameter 'interventions'"),
        ({"label": "colour"}, TaskError, "has no label 'colour'"),
        ({"components": ["head:0.4"]}, SelectorError, "head 4"),
        ({"corrupt": ["t1 t2"]}, TaskError, "40 clean prompts but 1 corrupt"),
        ({"rank_by": "zero", "interventions": ["mean"]}, SpecError, "rank_by 'zero'"),
    ],
)
def test_bad_localize_input_fails_in_one_line(toy_induction, kwargs, error, words):
    with pytest.raises(error) as info:
        mw.localize(toy_induction, mw.get_task("induction", n=40), **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


# --- encoders: probe metric drop beside behaviour drop, checks before extraction ----------


def test_localize_on_an_encoder_without_a_head_ranks_by_the_probe_metric(tiny_models):
    bert = tiny_models["bert"]
    task, _ = number_task(60)
    task.behavior = mw.metrics.logit_diff("is", "are")  # unreadable without a head: skipped
    res = mw.localize(bert, task, label="plural", components=["resid", "attn", "mlp"],
                      top_k=3, interventions=["mean", "zero"], resamples=200)  # fmt: skip
    assert res.ranked_on == "probe" and set(res.impact["metric"]) == {"probe"}
    assert res.metric == res.probe_metric == "probe(resid:1, accuracy)"
    assert res.ranking["tested"].sum() == 3 and res.readout_layer == 1
    assert {"probe_drop[mean]", "probe_drop[zero]"} <= set(res.ranking)
    assert not any(c.startswith("behavior_drop") for c in res.ranking)
    assert res.ranking["effect"].iloc[0] == res.ranking["probe_drop[mean]"].iloc[0]


def test_localize_reports_behaviour_and_probe_drops_side_by_side(tiny_mlm):
    """Noising the last block's stream at the read token with the corrupt prompt's gives
    both metrics, which read there, the corrupt prompt's values: exact drops."""
    task, corrupt = number_task(60)
    subjects = [[text.split()[1] for text in side] for side in (task.texts, corrupt)]
    behavior = mw.metrics.logit_diff(*subjects)
    cube = mw.extract(tiny_mlm, task, layers=[1], components=["resid"], cache=False)
    y = task.labels["plural"]
    fitted = fit_probe(cube["act"].sel(layer=1, component="resid").values, y, task.split)
    probe = mw.metrics.probe(fitted, layer=1, labels=y, score="margin")
    res = mw.localize(tiny_mlm, task, behavior=behavior, probe=probe, corrupt=corrupt,
                      components=["resid:1", "attn"], interventions=["patch"], n=20,
                      resamples=200)  # fmt: skip
    assert res.ranked_on == "behavior" and set(res.impact["metric"]) == {"behavior", "probe"}
    assert "and probe(resid:1, margin) by" in res.verdict()
    drops = res.ranking.set_index("site")
    rows = np.arange(20)
    for metric, column in ((behavior, "behavior"), (probe, "probe")):
        clean, bad = (
            Prompts.build(tiny_mlm, [texts[i] for i in rows], task.positions[rows], rows, 60)
            for texts in (task.texts, corrupt)
        )
        scorer = bind(metric, tiny_mlm, clean)
        gap = capture(tiny_mlm, clean, [], [scorer])[1] - capture(tiny_mlm, bad, [], [scorer])[1]
        expected = float(gap.mean())
        assert drops.loc["resid:1", f"{column}_drop[patch:noise(corrupt)]"] == pytest.approx(
            expected, abs=1e-4
        )


def test_a_metric_the_model_cannot_give_fails_before_extraction(tiny_models):
    bert = tiny_models["bert"]
    task, corrupt = number_task(60)
    cases = [
        ({"label": "plural", "behavior": mw.metrics.logit_diff("is", "are")}, "no output head"),
        ({"probe": mw.metrics.hidden(5)}, "layers 0-1"),
        ({"corrupt": corrupt[:-1] + ["the cat"], "interventions": ["patch"],
          "probe": mw.metrics.hidden(1)}, "pair 59"),
        ({}, "no behaviour metric and no label"),
    ]  # fmt: skip
    for kwargs, words in cases:
        start = time.perf_counter()
        with pytest.raises((ModelError, SpecError, TaskError)) as info:
            mw.localize(bert, task, n=60, **kwargs)
        assert time.perf_counter() - start < 1.0, kwargs
        assert words in str(info.value) and "\n" not in str(info.value)
