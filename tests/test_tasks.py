"""Built-in tasks and user tables: determinism, stratification, held-out lexical items, errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mechwidgets as mw
from mechwidgets.core.errors import TaskError
from mechwidgets.data import grammar, induction
from mechwidgets.data.catalog import get_task, get_task_pairs, list_tasks
from mechwidgets.data.tasks import Task
from mechwidgets.intervene.metrics import LogitDiff, RepeatLogProb
from mechwidgets.models.zoo.train import build_tokenizer

GRAMMAR_TASKS = [
    "subject_number",
    "attractor_number",
    "animacy",
    "sentiment",
    "tense",
    "grammar_all",
]


@pytest.fixture(scope="module")
def tokenizer():  # noqa: ANN201
    return build_tokenizer("toy-grammar")


@pytest.fixture(scope="module", params=[*GRAMMAR_TASKS, "induction"])
def task(request: pytest.FixtureRequest) -> Task:
    return get_task(request.param, n=600, seed=2)


def test_catalog_lists_the_built_in_tasks_and_the_alias() -> None:
    assert set(list_tasks()) == {*GRAMMAR_TASKS, "induction"}
    alias = get_task("subject_number_agreement", n=200, seed=1)
    assert alias.texts == get_task("subject_number", n=200, seed=1).texts
    assert mw.get_task is get_task and mw.list_tasks is list_tasks and mw.Task is Task
    with pytest.raises(TaskError, match="unknown task 'nope'; choose one of"):
        get_task("nope")
    with pytest.raises(TaskError, match="too small"):
        get_task("grammar_all", n=50)


def test_tasks_are_deterministic_for_a_seed(task: Task) -> None:
    again = get_task(task.name, n=600, seed=2)
    assert again.texts == task.texts
    assert all(np.array_equal(again.labels[k], v) for k, v in task.labels.items())
    assert np.array_equal(again.split, task.split)
    assert get_task(task.name, n=600, seed=3).texts != task.texts


def test_splits_are_60_20_20_and_stratified(task: Task) -> None:
    sizes = [len(task.indices(s)) for s in ("train", "val", "test")]
    assert sizes == [360, 120, 120]
    for name, values in task.labels.items():
        assert values.dtype.kind == "i"
        assert len(task.classes(name)) == 2
        for split in ("train", "val", "test"):
            share = values[task.indices(split)].mean()
            assert abs(share - 0.5) <= 0.02, (name, split, share)


def test_splits_hold_out_sentences_and_lexical_items(task: Task) -> None:
    texts = {s: {task.texts[i] for i in task.indices(s)} for s in ("train", "val", "test")}
    assert texts["train"].isdisjoint(texts["test"]) and texts["train"].isdisjoint(texts["val"])
    assert sum(len(t) for t in texts.values()) == len(task), "texts are distinct"
    for name, types in task.word_types.items():
        seen = {s: set(types[task.indices(s)]) for s in ("train", "val", "test")}
        assert seen["train"].isdisjoint(seen["test"]), name
        assert seen["train"].isdisjoint(seen["val"]), name
        assert seen["val"].isdisjoint(seen["test"]), name


@pytest.mark.parametrize("name", GRAMMAR_TASKS)
def test_grammar_labels_match_the_words_read(name: str, tokenizer) -> None:  # noqa: ANN001
    task = get_task(name, n=600, seed=2)
    ids = tokenizer(task.texts, add_special_tokens=False)["input_ids"]
    assert max(len(row) for row in ids) <= 64  # toy-grammar's context
    assert all(tokenizer.unk_token_id not in row for row in ids)
    factors = task.metadata["factors"]
    for name, values in task.labels.items():
        assert np.array_equal(factors[name], values)
    words = [t.split() for t in task.texts]
    if "subject_number" in task.labels:
        plural = [
            grammar.NOUNS[n][1] == w[1]
            for n, w in zip(task.word_types["subject_number"], words, strict=True)
        ]
        assert np.array_equal(np.array(plural, dtype=int), task.labels["subject_number"])
    if "tense" in task.labels:
        past = [
            w[-2] in {v[2] for v in grammar.VERBS} | {v[3] for v in grammar.VERBS} for w in words
        ]
        assert np.array_equal(np.array(past, dtype=int), task.labels["tense"])


def test_grammar_all_balances_every_label_combination_and_reads_the_adjective() -> None:
    task = get_task("grammar_all", n=640, seed=0)
    combos = pd.Series(list(zip(*task.labels.values(), strict=True))).value_counts()
    assert len(combos) == 32 and combos.max() - combos.min() <= 3
    assert task.metadata["read_at"] == "adjective"
    assert all(t.split()[-1] in grammar.ADJECTIVES for t in task.texts)


def test_subject_number_carries_its_agreement_metric() -> None:
    task = get_task("subject_number", n=300, seed=0)
    assert isinstance(task.behavior, LogitDiff)
    for plural, past, right, wrong in zip(
        task.labels["subject_number"], task.metadata["factors"]["tense"], task.behavior.correct,
        task.behavior.wrong, strict=True,
    ):  # fmt: skip
        assert right == grammar.VERBS[0][2 * past + plural]
        assert wrong == grammar.VERBS[0][2 * past + 1 - plural]
    assert (task.metadata["factors"]["has_attractor"] == 1).mean() >= 0.7


def test_induction_task_marks_the_repeated_half_and_reads_where_it_says() -> None:
    task = get_task("induction", n=400, seed=0)
    tokens = task.metadata["factors"]["tokens"]
    lengths = task.metadata["factors"]["repeat_length"]
    assert isinstance(task.behavior, RepeatLogProb)
    mask = task.behavior.mask
    assert mask.shape == (400, induction.LENGTH)
    for row, k, m in zip(tokens, lengths, mask, strict=True):
        marked = np.flatnonzero(m)
        assert len(marked) == k - 1
        assert np.array_equal(row[marked], row[marked - k]), "marked tokens repeat k earlier"
    read = task.positions + induction.LENGTH
    second_copy = read >= induction.LENGTH - lengths
    assert np.array_equal(second_copy.astype(int), task.labels["in_repeat"])
    assert (read < induction.LENGTH - 1).all()
    assert task.texts[0].split()[read[0]] == f"t{task.word_types['in_repeat'][0]}"


def test_prompt_pairs_differ_only_in_subject_number(tokenizer) -> None:  # noqa: ANN001
    pairs = get_task_pairs("subject_number_agreement", n=200, seed=1)
    assert len(pairs) == 200 and mw.get_task_pairs is get_task_pairs
    clean = tokenizer(pairs.clean)["input_ids"]
    corrupt = tokenizer(pairs.corrupt)["input_ids"]
    for a, b, ca, wa in zip(clean, corrupt, pairs.clean_answer, pairs.corrupt_answer, strict=True):
        assert len(a) == len(b)
        assert [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y] == [2]
        assert {ca, wa} in ({"is", "are"}, {"was", "were"})
    assert abs(np.mean([a in ("are", "were") for a in pairs.clean_answer]) - 0.5) < 0.02
    train = set(pairs.word_types[pairs.split == "train"])
    assert train.isdisjoint(pairs.word_types[pairs.split == "test"])
    with pytest.raises(TaskError, match="no prompt pairs"):
        get_task_pairs("sentiment")


# ---- user tables ----


def _frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    number = rng.permutation(np.arange(n) % 2)
    return pd.DataFrame(
        {
            "sentence": [f"the {'dogs' if p else 'dog'} number {i}" for i, p in enumerate(number)],
            "number": np.where(number == 1, "pl", "sg"),
            "pos": -1,
        }
    )


def test_from_frame_maps_classes_and_makes_a_stratified_deterministic_split() -> None:
    df = _frame()
    task = Task.from_frame(df, text="sentence", labels=["number"], position="pos")
    assert task.classes("number") == ("pl", "sg")
    assert np.array_equal(task.labels["number"], (df["number"] == "sg").to_numpy().astype(int))
    assert [len(task.indices(s)) for s in ("train", "val", "test")] == [36, 12, 12]
    for split in ("train", "val", "test"):
        assert task.labels["number"][task.indices(split)].mean() == 0.5
    assert np.array_equal(task.split, Task.from_frame(df, text="sentence", labels="number").split)
    assert (task.positions == -1).all()


def test_from_frame_keeps_a_given_split_column() -> None:
    df = _frame().assign(part=["train", "test", "val"] * 20)
    task = Task.from_frame(df, text="sentence", labels="number", split="part")
    assert task.split.tolist() == df["part"].tolist()


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        (
            lambda d: d,
            {"labels": ["numbr"]},
            "column 'numbr' is not in the table; its columns are: sentence",
        ),
        (lambda d: d.assign(number="sg"), {}, "label 'number' has a single class ('sg')"),
        (lambda d: d.iloc[:0], {}, "the table is empty"),
        (lambda d: d.assign(number=None), {}, "column 'number' has 60 missing values"),
        (
            lambda d: d.assign(part="train"),
            {"split": "part"},
            "split column 'part' has no 'test' rows",
        ),
        (
            lambda d: d.assign(part="dev"),
            {"split": "part"},
            "split column 'part' has no 'train' rows",
        ),
        (
            lambda d: pd.concat([d[d.number == "sg"], d[d.number == "pl"].iloc[:2]]),
            {},
            "label 'number' class 'pl' has 2 samples; a stratified split needs 3 or more",
        ),
    ],
)
def test_from_frame_rejects_bad_tables_with_one_line(change, kwargs, message) -> None:  # noqa: ANN001
    kwargs = {"text": "sentence", "labels": ["number"], **kwargs}
    with pytest.raises(TaskError, match=re.escape(message)) as info:
        Task.from_frame(change(_frame()), **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_from_file_reads_csv_jsonl_and_parquet(tmp_path: Path, suffix: str) -> None:
    df, path = _frame(), tmp_path / f"mine{suffix}"
    {".csv": lambda: df.to_csv(path, index=False),
     ".jsonl": lambda: df.to_json(path, orient="records", lines=True),
     ".parquet": lambda: df.to_parquet(path)}[suffix]()  # fmt: skip
    task = Task.from_file(path, text="sentence", labels=["number"])
    assert task.name == "mine" and task.texts == df["sentence"].tolist()
    with pytest.raises(TaskError, match="use a .csv, .jsonl or .parquet file"):
        Task.from_file(tmp_path / "mine.xlsx")
    with pytest.raises(TaskError, match="no file at"):
        Task.from_file(tmp_path / "other.csv")


def test_from_frame_reads_positions_as_markers_spans_or_indices() -> None:
    df = _frame(12).assign(
        marker=["number", "the"] * 6,
        start=0,
        end=3,
        mixed=[-1, "number", [0, 3]] * 4,
    )
    markers = Task.from_frame(df, text="sentence", labels="number", position="marker")
    assert markers.positions.tolist() == ["number", "the"] * 6
    spans = Task.from_frame(df, text="sentence", labels="number", position=("start", "end"))
    assert spans.positions.shape == (12,) and spans.positions[0] == (0, 3)
    mixed = Task.from_frame(df, text="sentence", labels="number", position="mixed")
    assert mixed.positions.tolist()[:3] == [-1, "number", (0, 3)]
    with pytest.raises(TaskError, match=r"positions\[0\] is the span \(3, 0\)"):
        Task.from_frame(df.assign(end=0, start=3), labels="number", text="sentence",
                        position=("start", "end"))  # fmt: skip


def test_from_frame_word_types_and_groups_become_cube_variables(tiny_models) -> None:
    df = _frame(12).assign(
        sentence=["the dog sat", "the cat ran", "a bird sits"] * 4,  # the tiny vocabulary
        noun=["dog", "cat", "bird"] * 4,
        verb=["is", "are"] * 6,
        template=np.arange(12) // 4,
        tense=["past", "present", "present", "past"] * 3,
    )
    shared = Task.from_frame(df, text="sentence", labels=["number", "tense"], word_types="noun")
    assert set(shared.word_types) == {"number", "tense"}
    assert shared.metadata["word_type_names"]["tense"] == ("bird", "cat", "dog")
    assert shared.word_types["number"].tolist() == [2, 1, 0] * 4
    task = Task.from_frame(
        df, text="sentence", labels=["number", "tense"],
        word_types={"number": "noun", "tense": "verb"}, groups="template",
    )  # fmt: skip
    assert task.groups.tolist() == (np.arange(12) // 4).tolist()
    cube = mw.extract(tiny_models["gpt_neox"], task, layers=[0], components=["resid"])
    assert cube["wordtype_number"].values.tolist() == [2, 1, 0] * 4
    assert cube["wordtype_tense"].values.tolist() == [1, 0] * 6
    assert cube["group"].values.tolist() == task.groups.tolist()
    with pytest.raises(TaskError, match=r"word_types names \['noun'\], which are not labels"):
        Task.from_frame(df, text="sentence", labels="number", word_types={"noun": "noun"})
    with pytest.raises(TaskError, match="column 'kind' is not in the table"):
        Task.from_frame(df, text="sentence", labels="number", groups="kind")
