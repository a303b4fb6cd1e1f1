"""Views below the layer: coloured tokens (probe score per position) and attention per head."""

from __future__ import annotations

import html

import numpy as np
import pytest

import mechwidgets as mw
from mechwidgets.viz.attention import AttentionError, attention_patterns, head_scores
from mechwidgets.viz.chart_widget import ChartView
from mechwidgets.viz.samples import slice_samples
from mechwidgets.viz.tokens import TokenViewError, _token_activations, token_scores

# ---- attention ------------------------------------------------------------------------


def test_head_scores_on_known_patterns():
    ids = [5, 6, 7, 5, 6, 7]  # "a b c a b c": induction attends from the 2nd a to the 1st b
    n = len(ids)
    previous = np.zeros((1, 2, n, n))
    previous[0, 0, 0, 0] = 1.0
    for q in range(1, n):
        previous[0, 0, q, q - 1] = 1.0  # head 0: the previous token, always
    for q in range(n):
        previous[0, 1, q, q] = 1.0  # head 1: itself
    for q, k in ((3, 1), (4, 2), (5, 3)):
        previous[0, 1, q] = 0.0
        previous[0, 1, q, k] = 1.0  # head 1 on the repeats: the token after the first copy
    prev, ind = head_scores(ids, previous)
    assert prev[0].tolist() == [1.0, pytest.approx(0.0)]
    assert ind[0].tolist() == [0.0, 1.0]
    _, none = head_scores([1, 2, 3], previous[..., :3, :3])
    assert np.isnan(none).all()  # no repeated token: no induction score
    with pytest.raises(AttentionError, match="pattern is"):
        head_scores([1, 2], previous)


@pytest.fixture(scope="module")
def induction():
    model = mw.load_model("toy-induction")
    task = mw.get_task("induction", n=20, seed=0)
    return attention_patterns(model, task.texts[:4])


def test_toy_induction_shows_its_known_circuit(induction):
    # the model card's ground truth: head 0.0 is the previous-token head (0.95) and
    # heads 1.0, 1.2, 1.3 are induction heads (prefix matching 0.87-0.91)
    heads = induction.head_scores.set_index(["layer", "head"])
    assert heads.loc[(0, 0), "previous_token"] > 0.8
    assert heads["previous_token"].drop((0, 0)).max() < 0.4
    for head in (0, 2, 3):
        assert heads.loc[(1, head), "induction"] > 0.6
    assert heads.loc[(1, 1), "induction"] < 0.2


def test_attention_chart_has_a_panel_per_head_and_a_sample_menu(induction):
    spec = induction.chart().to_dict()
    (param,) = spec["params"]
    assert param["name"] == "sample" and param["bind"]["input"] == "select"
    assert len(param["bind"]["options"]) == 4
    titles = spec["facet"]["header"]["labelExpr"]
    assert "head:0.0  prev 0.9" in titles and titles.count("head:1.") == 4
    weights = [np.asarray(w) for w in induction.weights]
    assert all(np.allclose(w.sum(-1), 1.0, atol=1e-5) for w in weights)  # rows are softmaxes
    assert isinstance(ChartView(induction.chart(heads=[(1, 2)])), ChartView)
    with pytest.raises(AttentionError, match="no head"):
        induction.chart(heads=[(2, 0)])


# ---- tokens ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grammar():
    model = mw.load_model("toy-grammar")
    cube = mw.extract(model, mw.get_task("subject_number", n=400), selectors=["resid:all"])
    return model, cube


def test_every_token_is_read_as_the_cube_reads_its_own(grammar):
    model, cube = grammar
    for i in np.flatnonzero(cube["split"].values == "test")[:3]:
        ids, acts = _token_activations(model, str(cube["text"].values[i]), 2, "resid")
        read = int(cube["position"].values[i]) % len(ids)
        cube_row = cube["act"].sel(layer=2, component="resid").values[i]
        assert np.allclose(acts[read], cube_row, atol=1e-4)


def test_token_view_names_classes_and_predicts_at_the_read_token(grammar):
    model, cube = grammar
    view = token_scores(model, cube, "subject_number", layer=2, k=20)
    assert view.classes == ("singular", "plural")
    right = [row["label"] == row["predicted"] for row in view.rows]
    assert len(right) == 20 and np.mean(right) >= 0.9  # toy-grammar carries it above 90%
    frame = view.frame()
    assert frame["read"].sum() == 20 and frame["score"].between(0, 1).all()
    page = html.unescape(view._repr_html_())
    assert page.count("class='mw-token'") == len(frame)
    assert "singular" in page and "plural" in page and "<script" not in page


def test_token_view_refuses_what_it_cannot_show(grammar):
    model, cube = grammar
    with pytest.raises(TokenViewError, match="no label"):
        token_scores(model, cube, "tense", layer=2)
    with pytest.raises(TokenViewError, match="no slice"):
        token_scores(model, cube, "subject_number", layer=2, component="mlp")


# ---- sentences of a slice -------------------------------------------------------------


@pytest.fixture(scope="module")
def grammar_detect(grammar):
    from mechwidgets.actions.detect import detect

    _, cube = grammar
    return detect(cube, "subject_number", seeds=1, controls=("label_shuffle",), layers=(0, 2))


def test_a_slices_sentences_carry_their_label_prediction_and_score(grammar, grammar_detect):
    _, cube = grammar
    res = grammar_detect
    view = res.samples(layer=0, component="resid", texts=cube)
    frame = view.frame
    test = cube["split"].values == "test"
    assert view.n == test.sum() and set(frame["sample_id"]) == set(np.flatnonzero(test))
    # ground truth from the cube: each row's sentence and class are its sample's
    names = ("singular", "plural")
    for row in frame.itertuples():
        assert row.text == str(cube["text"].values[row.sample_id])
        assert row.label == names[int(cube["subject_number"].values[row.sample_id])]
        assert row.correct == (row.label == row.predicted)
    # the table's accuracy is the share of these sentences the probe got right
    score = res.table.query("layer == 0 and component == 'resid' and control == 'none'")["score"]
    assert frame["correct"].mean() == pytest.approx(float(score.iloc[0]))
    assert frame["correct"].is_monotonic_increasing  # the misclassified first
    page = html.unescape(view._repr_html_())
    assert frame["text"].iloc[0] in page and f"{view.n_wrong} misclassified" in page
    with pytest.raises(mw.core.errors.MechError, match="no predictions .* layer 1"):
        res.samples(layer=1, texts=cube)


def test_clicking_a_cell_shows_its_sentences_and_token_view(grammar, grammar_detect):
    from mechwidgets.viz.widgets import LayerExplorer

    model, cube = grammar
    ex = LayerExplorer(grammar_detect, model=model, cube=cube)
    assert ex.samples_html == ""
    ex.selected = {"layer": 2, "component": "resid"}
    page = html.unescape(ex.samples_html)
    first = grammar_detect.samples(layer=2, texts=cube).frame["text"].iloc[0]
    assert first in page and "test sentences" in page
    assert "class='mw-token'" in page and "probe at layer 2" in page  # the token view
    ex.selected = {}
    assert ex.samples_html == ""


def test_a_run_from_a_spec_finds_its_sentences_itself():
    from mechwidgets.runner import run_spec
    from mechwidgets.viz.widgets import LayerExplorer

    spec = {"action": "detect", "model": "toy-grammar", "task": "subject_number", "n": 200}
    res = run_spec({**spec, "layers": "1", "components": ["resid"], "seeds": 1})
    task = mw.get_task("subject_number", n=200)
    frame = res.samples(layer=1).frame
    assert [task.texts[i] for i in frame["sample_id"]] == list(frame["text"])
    ex = LayerExplorer(res)
    ex.selected = {"layer": 1, "component": "resid"}
    assert html.escape(frame["text"].iloc[0]) in ex.samples_html
    assert "mw-token" not in ex.samples_html  # no model given: sentences only


def test_misclassified_sentences_come_first_with_class_names():
    import pandas as pd
    import xarray as xr

    from mechwidgets.actions.base import ActionResult

    y_true = np.array([0, 1, 0, 1, 0, 1])
    y_pred = np.array([0, 1, 1, 1, 0, 0])  # samples 2 and 5 are wrong
    preds = pd.DataFrame(
        dict(sample_id=np.arange(6), label="animacy", layer=1, component="mlp")
        | dict(y_true=y_true, y_pred=y_pred, y_score=np.linspace(-1, 1, 6))
    )
    res = ActionResult("detect", xr.Dataset(), pd.DataFrame(), predictions=preds)
    texts = [f"sentence {i}" for i in range(6)]
    view = res.samples(layer=1, component="mlp", texts=texts)
    assert list(view.frame["sample_id"]) == [2, 5, 0, 1, 3, 4] and view.n_wrong == 2
    # class names from a mapping; the score is the probe's, unchanged
    named = slice_samples(res, 1, "mlp", texts=texts, classes={"animacy": ["inanimate", "animate"]})
    row = named.frame.iloc[0]
    assert (row.text, row.label, row.predicted) == ("sentence 2", "inanimate", "animate")
    assert row.score == pytest.approx(-0.2)
    assert "2 misclassified" in repr(view) and "WRONG" in repr(view)
    with pytest.raises(mw.core.errors.MechError, match="beyond the 3 texts"):
        res.samples(layer=1, component="mlp", texts=texts[:3])
    with pytest.raises(mw.core.errors.MechError, match="no per-sample predictions"):
        ActionResult("detect", xr.Dataset(), pd.DataFrame()).samples(layer=0)


def test_chart_view_draws_compositions_with_their_fallback():
    import altair as alt
    import pandas as pd

    from mechwidgets.viz.charts import ChartError

    chart = alt.Chart(pd.DataFrame({"x": [1, 2]})).mark_point().encode(x="x:Q")
    view = ChartView(alt.vconcat(alt.hconcat(chart, chart), chart), title="grid")
    data, _ = view._repr_mimebundle_()
    assert len(view.spec["vconcat"][0]["hconcat"]) == 2
    assert data["text/plain"] == "ChartView('grid')" and data["image/png"]
    with pytest.raises(ChartError, match="Vega-Lite spec"):
        ChartView({"data": {"values": []}})


def test_a_charts_fallback_png_is_drawn_once_and_then_read_from_the_cache(tmp_path, monkeypatch):
    import altair as alt
    import pandas as pd
    import vl_convert

    from mechwidgets.extract.cache import clear_cache
    from mechwidgets.viz import chart_widget

    monkeypatch.setenv("MECHWIDGETS_CACHE", str(tmp_path))
    spec = alt.Chart(pd.DataFrame({"x": [1, 2]})).mark_point().encode(x="x:Q").to_dict()
    drawn = chart_widget.fallback_png(spec)
    assert drawn[0].startswith(b"\x89PNG") and drawn[1] * 2 == chart_widget._png_size(drawn[0])[0]

    def no_drawing(*args, **kwargs):
        raise AssertionError("drawn again")

    monkeypatch.setattr(vl_convert, "vegalite_to_png", no_drawing)
    assert chart_widget.fallback_png(spec) == drawn  # same bytes and CSS size, not drawn
    with pytest.raises(AssertionError, match="drawn again"):  # another chart is drawn
        chart_widget.fallback_png({**spec, "title": "another"})
    assert clear_cache().removed == 1 and not (tmp_path / "charts").exists()
