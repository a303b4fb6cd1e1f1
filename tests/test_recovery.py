"""Recovery by patching, on a random-weight GPT-NeoX whose block 2 erases everything
(its output is a constant), on the same model without the eraser, and on a bare BERT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from conftest import IDS, word_tokenizer

import mechwidgets as mw
from mechwidgets.actions.recovery import recovery_test
from mechwidgets.core.errors import SpecError
from mechwidgets.data.splits import stratified_split
from mechwidgets.probes.linear import fit_probe

ERASED_AT = 2
#: the last word's class: a singular noun or a bare word, or a plural noun or a verb form
CLASS_A = ("cat", "dog", "bird", "mat", "rug", "tree")
CLASS_B = ("cats", "dogs", "sat", "sits", "ran", "runs")
FILLER = ("the", "a", "on", "under", "near", "big", "small", "red", "blue", "and")


class Eraser(torch.nn.Module):
    """Wraps a block; whatever the block computes, the output is one constant vector."""

    def __init__(self, block: torch.nn.Module, width: int) -> None:
        super().__init__()
        self.block = block
        self.register_buffer(
            "constant", torch.randn(width, generator=torch.Generator().manual_seed(1))
        )

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.block(hidden_states, *args, **kwargs)
        return torch.zeros_like(out) + self.constant


def build(erase: bool) -> mw.Model:
    """A 4-block random-weight GPT-NeoX (the same weights either way)."""
    torch.manual_seed(0)
    config = transformers.GPTNeoXConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, **IDS,
    )  # fmt: skip
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    if erase:
        hf.gpt_neox.layers[ERASED_AT] = Eraser(hf.gpt_neox.layers[ERASED_AT], 32)
    return mw.load_model(hf, word_tokenizer())


@pytest.fixture(scope="module")
def task() -> mw.Task:
    rng = np.random.default_rng(0)
    n = 300
    label = np.resize([0, 1], n)
    last = [rng.choice(CLASS_B if y else CLASS_A) for y in label]
    texts = [" ".join([*rng.choice(FILLER, 5), w]) for w in last]
    return mw.Task(
        name="last_word", texts=texts, labels={"plural": label}, split=stratified_split(label, 0)
    )


@pytest.fixture(scope="module")
def erased() -> mw.Model:
    return build(erase=True)


@pytest.fixture(scope="module")
def intact() -> mw.Model:
    return build(erase=False)


@pytest.fixture(scope="module")
def erased_cube(erased, task):
    return mw.extract(erased, task, components=["resid"], cache=False, batch_size=len(task))


def test_patching_past_the_eraser_restores_decodability(erased, task):
    res = recovery_test(
        erased, task, "plural", source_layer=0, target_layers=[1, 2], batch_size=300
    )
    rows = res.table.set_index("target_layer")
    assert res.summary()["readout_layer"] == 3
    assert rows.loc[1, "before"] < 0.7  # erased: near chance at the readout
    assert res.summary()["source_score"] > 0.9
    # patched into the eraser's own output: the later block carries it again
    assert rows.loc[2, "returns"] and rows.loc[2, "ci_low"] > 0.2
    assert rows.loc[2, "after"] > 0.9 and rows.loc[2, "recovered_share"] > 0.8
    # patched before the eraser: it erases the feature again
    assert not rows.loc[1, "returns"] and abs(rows.loc[1, "change"]) < 0.05
    assert res.summary()["first_recovering_target"] == 2
    assert "layer 0 patched into layer 2 brings 'plural' back at layer 3" in res.verdict()


def test_nothing_erased_means_no_change(intact, task):
    res = recovery_test(intact, task, "plural", source_layer=1, batch_size=300)
    row = res.table.iloc[0]
    assert list(res.table["target_layer"]) == [2]
    assert row["before"] > 0.9 and abs(row["change"]) < 0.05
    assert row["ci_low"] <= 0 <= row["ci_high"] and not row["returns"]
    assert "does not raise 'plural' at layer 3" in res.verdict()


def test_collapse_with_recovery(erased, task, erased_cube):
    recovery = dict(model=erased, task=task, batch_size=300)
    res = mw.collapse(erased_cube, label="plural", seeds=1, permutations=20, recovery=recovery)
    s = res.summary()
    assert s["collapsed"] and s["final_layer"] == 3
    rec = s["recovery"]
    assert rec["source_layer"] == s["peak_layer"] and rec["readout_layer"] == 3
    assert rec["first_recovering_target"] == ERASED_AT
    assert "brings 'plural' back" in res.verdict()
    assert "recovery" in res.charts()
    assert res.params["recovery"]["target_layer"] is None
    assert res.params["recovery"]["task"] == "last_word"


def test_bad_recovery_requests(erased, task, erased_cube):
    cases = [
        (dict(task=task), "pass recovery=dict"),
        (dict(model=erased, task=task, source_layer=2, readout_layer=3), "no layer between"),
        (dict(model=erased, task=task, source_layer=0, target_layer=3), "must lie after"),
        (dict(model=erased, task=task, typo=1), "unknown parameter 'recovery.typo'"),
        (dict(model=erased, task=task, readout_layer=9), "not a block"),
    ]
    for recovery, message in cases:
        with pytest.raises(SpecError, match=message) as info:
            mw.collapse(erased_cube, label="plural", seeds=1, permutations=20, recovery=recovery)
        assert "\n" not in str(info.value)


def test_recovery_runs_on_an_encoder_without_a_head(task):
    """A bare 4-block BERT: recovery reads residual streams only, at the token the cube
    reads, so its unpatched scores are the cube's probes' scores."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, **IDS,
    )  # fmt: skip
    bert = mw.load_model(transformers.BertModel(config).eval(), word_tokenizer())
    res = recovery_test(bert, task, "plural", source_layer=0, batch_size=300)
    cube = mw.extract(bert, task, layers=[0, 3], components=["resid"], cache=False)
    y, split = task.labels["plural"], task.split
    for layer, key in ((0, "source_score"), (3, "before")):
        x = cube["act"].sel(layer=layer, component="resid").values
        assert res.summary()[key] == pytest.approx(fit_probe(x, y, split).test_score)
    assert list(res.table["target_layer"]) == [1, 2]
