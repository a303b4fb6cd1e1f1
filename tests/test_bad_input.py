"""Bad input, family by family, through Python, the CLI and the magic: one line, at once.

Like scikit-learn's common checks, one table feeds the same families of bad input through
every entry point that takes them, and every case must end in a one-line error that says
what to do: a ``MechError`` from Python, ``mechinterp: error: ...`` and a non-zero status
from the CLI, a one-line ``UsageError`` from the magic. Never a traceback (an exception
that is not a ``MechError``; the CLI's "internal error"), never a silent answer (no error
at all). Config mistakes fail on parse, in under a second, with no model loaded.

``bench/bad_inputs.py`` runs the same table outside pytest and prints the counts.
"""

# ruff: noqa: E501  (the case tables read best one case per line)
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

#: an existing folder where nothing can be created, even by root (sysfs)
READ_ONLY = Path("/sys/kernel")
#: the flat config every YAML case changes one thing of: fast and valid as it stands
BASE = {
    "action": "detect",
    "model": "toy-grammar",
    "task": "subject_number",
    "n": 300,
    "layers": "1",
    "components": "resid",
    "seeds": 1,
    "permutations": 20,
    "resamples": 100,
}
#: a message says what to do when it holds one of these (an instruction or a guess)
ADVICE = re.compile(
    r"\b(use|give|choose|add|fix|drop|set|pass|check|remove|lower|did you mean|save|close|"
    r"rename|try|keep|make|shorten|point|re-run|write|extract|fill|see|test|ask|name|reinstall|"
    r"delete|load|allowed|it takes|must be|should be|needs?|expected)\b",
    re.IGNORECASE,
)
#: parse-level cases must fail within this many seconds
FAST_S = 1.0


@dataclass
class Context:
    """Files, folders, a model and a cube the cases point at, built once."""

    root: Path

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def config(self, name: str, data: dict[str, Any] | str) -> Path:
        text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
        return self.file(f"{name}.yaml", text)

    @cached_property
    def model(self) -> Any:
        import mechwidgets as mw

        return mw.load_model("toy-grammar")

    @cached_property
    def cube(self) -> Any:
        import mechwidgets as mw

        task = mw.get_task("subject_number", n=300)
        return mw.extract(self.model, task, layers="0-1", components=["resid"]).load()

    @cached_property
    def bundle(self) -> Path:
        """A real bundle of the base config, to break for the re-run cases."""
        from mechwidgets.runner import run_spec

        out = self.root / "bundle"
        run_spec(BASE, output_dir=out)
        return out

    def broken_bundle(self, name: str, metrics: str | None) -> Path:
        import shutil

        folder = self.root / name
        if not folder.exists():
            shutil.copytree(self.bundle, folder)
        (folder / "metrics.json").unlink(missing_ok=True)
        if metrics is not None:
            (folder / "metrics.json").write_text(metrics)
        return folder / "artifacts.json"

    def relabel(self, values: Any) -> Any:
        dtype = object if isinstance(values, list) else None  # keep None and mixed types
        return self.cube.assign_coords(subject_number=("sample", np.asarray(values, dtype)))

    def warm(self) -> Context:
        """Load what the cases share, and the modules they import, before any is timed."""
        from mechwidgets.cli import main  # noqa: F401
        from mechwidgets.core.specs import RunSpec
        from mechwidgets.runner import run_spec  # noqa: F401

        RunSpec.from_dict(BASE)
        for name in ("model", "cube", "shell", "bundle"):
            getattr(self, name)
        return self

    @cached_property
    def shell(self) -> Any:
        from IPython import get_ipython
        from IPython.testing.globalipapp import start_ipython

        shell = start_ipython() or get_ipython()  # the second start returns None
        shell.run_line_magic("load_ext", "mechwidgets")
        return shell


@dataclass(frozen=True)
class Case:
    """One bad input through one entry point.

    ``run(ctx)`` feeds it: Python calls, returning normally or raising; the CLI returns
    ``(status, stderr)``; the magic returns or raises. ``phrase`` must be in the message.
    """

    family: str
    name: str
    channel: str  # "python", "cli" or "magic"
    run: Callable[[Context], Any]
    phrase: str = ""
    fast: bool = True

    @property
    def id(self) -> str:
        return f"{self.channel}:{self.family}:{self.name}"


@dataclass
class Outcome:
    kind: str  # "one-line", "traceback" or "silent"
    message: str = ""
    seconds: float = 0.0
    detail: list[str] = field(default_factory=list)


def cli(*argv: str | Path) -> Callable[[], tuple[int, str]]:
    def call() -> tuple[int, str]:
        from mechwidgets.cli import main

        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exc:  # argparse's own errors
                code = int(exc.code or 0)
        return code, err.getvalue()

    return call


@contextlib.contextmanager
def env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def outcome(case: Case, ctx: Context) -> Outcome:
    """Run ``case`` and classify what came back."""
    from IPython.core.error import UsageError

    from mechwidgets.core.errors import MechError

    start = time.perf_counter()
    try:
        value = case.run(ctx)
    except MechError as exc:  # from the CLI or the magic it would leak as a traceback
        return _one_line(str(exc), start, case.channel == "python")
    except UsageError as exc:
        return _one_line(str(exc), start, case.channel == "magic")
    except Exception as exc:
        return Outcome("traceback", f"{type(exc).__name__}: {exc}", time.perf_counter() - start)
    seconds = time.perf_counter() - start
    if case.channel == "cli":
        code, err = value
        if code == 0:
            return Outcome("silent", err, seconds)
        lines = err.strip().splitlines()
        ok = len(lines) == 1 and lines[0].startswith("mechinterp") and "internal" not in err
        return Outcome("one-line" if ok else "traceback", err.strip(), seconds)
    try:  # a result whose display raises is a traceback too (the user sees one)
        shown = repr(value)
    except Exception as exc:
        return Outcome("traceback", f"display: {type(exc).__name__}: {exc}", seconds)
    return Outcome("silent", shown[:200], seconds)


def _one_line(message: str, start: float, right_kind: bool) -> Outcome:
    seconds = time.perf_counter() - start
    ok = right_kind and "\n" not in message.strip() and "Traceback" not in message
    return Outcome("one-line" if ok else "traceback", message, seconds)


# --- the table --------------------------------------------------------------------------


def _yaml_cases() -> list[Case]:
    """Config mistakes, each through run_spec, `mechinterp run` and `%%mechinterp`."""
    flat = {
        # family, name, change to BASE (None removes the key), phrase, fast
        ("typo", "top-level key"): ({"outptu_dir": "x"}, "did you mean 'output_dir'"),
        ("typo", "model key"): ({"model": None, "modle": "toy-grammar"}, "did you mean 'model'"),
        ("typo", "param at top level"): ({"lable": "x"}, "did you mean 'label'"),
        ("typo", "action name"): ({"action": "detcet"}, "did you mean 'detect'"),
        ("typo", "control name"): ({"controls": ["label_shufle"]}, "label_shuffle"),
        ("typo", "dtype"): ({"dtype": "float23"}, "did you mean 'float32'"),
        ("position", "token marker not in the text"): ({"token": "firts"}, "marker 'firts'"),
        ("typo", "unseen option"): ({"unseen": "skip"}, "exclude"),
        ("typo", "labels for one-label action"): ({"labels": ["a", "b"]}, "did you mean"),
        ("type", "permutations 2.5"): ({"permutations": 2.5}, "whole number"),
        ("type", "permutations as text"): ({"permutations": "100"}, "whole number"),
        ("type", "permutations 0"): ({"permutations": 0}, "1 or more"),
        ("type", "seeds 2.5"): ({"seeds": 2.5}, "whole number"),
        ("type", "n as text"): ({"n": "100"}, "dataset.n"),
        ("type", "n 2.5"): ({"n": 2.5}, "dataset.n"),
        ("type", "batch_size 0"): ({"batch_size": 0}, "batch_size"),
        ("type", "seed as text"): ({"seed": "x"}, "seed"),
        ("type", "label as a list"): ({"label": ["a", "b"]}, "one name"),
        ("range", "level 2"): ({"level": 2}, "between 0 and 1"),
        ("range", "probe lasso"): ({"probe": "lasso"}, "ridge"),
        ("range", "resamples 10"): ({"resamples": 10}, "resamples"),
        ("range", "correction"): ({"correction": "bonf"}, "holm"),
        ("range", "layers empty"): ({"layers": ""}, "layers is empty"),
        ("selector", "layers out of range"): ({"layers": "0-99"}, "layer"),
        ("range", "unknown component"): ({"components": "resdi"}, "resdi"),
        ("memory", "permutations 1e9"): ({"permutations": 10**9}, "GiB"),
        ("memory", "resamples 1e10"): ({"resamples": 10**10}, "GiB"),
        ("memory", "seeds x permutations"): ({"seeds": 10**4, "permutations": 10**5}, "GiB"),
        ("controls", "control with options"): (
            {"controls": [{"name": "random_subspace", "params": {"rank": 3}}]},
            "no options",
        ),
        ("controls", "unknown control"): ({"controls": ["shuffle"]}, "controls"),
        ("task", "unknown task"): ({"task": "subject_numbr"}, "did you mean 'subject_number'"),
        ("task", "n too small"): ({"n": 3}, "too small"),
        ("model", "unknown model"): ({"model": "no-such-model-xyz"}, "cannot load model"),
    }
    texts = {
        ("yaml", "duplicate key"): ("action: detect\naction: collapse\n", "given twice"),
        ("yaml", "syntax error"): ("action: [detect\n", "bad YAML at line"),
        ("yaml", "a list, not a mapping"): ("- detect\n- collapse\n", "mapping"),
        ("yaml", "tab indentation"): ("action: detect\n\tmodel: x\n", "bad YAML"),
    }
    slow = {"model", "task", "selector", "position"}
    cases: list[Case] = []
    for (family, name), (change, phrase) in flat.items():
        data = {k: v for k, v in {**BASE, **change}.items() if v is not None}
        cases += _three(family, name, data, phrase, fast=family not in slow)
    for (family, name), (text, phrase) in texts.items():
        cases += _three(family, name, text, phrase)
    return cases


def _three(family: str, name: str, data: dict | str, phrase: str, fast: bool = True) -> list:
    """The same config through Python, the CLI and the cell magic."""
    slug = re.sub(r"\W+", "_", f"{family}_{name}")
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)

    def python(ctx: Context) -> Any:
        from mechwidgets.runner import run_spec

        return run_spec(ctx.config(slug, text))

    def command(ctx: Context) -> Any:
        return cli("run", ctx.config(slug, text))()

    def magic(ctx: Context) -> Any:
        return ctx.shell.run_cell_magic("mechinterp", "", text)

    return [
        Case(family, name, "python", python, phrase, fast),
        Case(family, name, "cli", command, phrase, fast),
        Case(family, name, "magic", magic, phrase, fast),
    ]


def _data_cases() -> list[Case]:
    """The user's data files and texts: through Python, a config (CLI) and the magic."""
    rows = pd.DataFrame({"text": ["the dog near the cars"] * 30, "label": [0, 1] * 15})
    files: dict[tuple[str, str], tuple[Callable[[Context], Path], str]] = {
        ("file", "empty csv"): (lambda c: c.file("empty.csv", b""), "is empty"),
        ("file", "non-UTF-8 csv"): (
            lambda c: c.file("latin1.csv", "text,label\ncafé olé,1\nthe dog,0\n".encode("latin-1")),
            "not UTF-8",
        ),
        ("file", "header only"): (lambda c: c.file("header.csv", "text,label\n"), "empty"),
        ("file", "missing file"): (lambda c: c.root / "nope.csv", "no file"),
        ("file", "not a table"): (lambda c: c.file("words.txt", "hello\n"), ".csv"),
        ("file", "broken parquet"): (
            lambda c: c.file("bad.parquet", b"PAR1 garbage"),
            "cannot read",
        ),
        ("file", "unterminated quote"): (
            lambda c: c.file("quote.csv", 'text,label\n"the dog,1\nthe cat,0\n'),
            "cannot read",
        ),
        ("labels", "label column missing"): (
            lambda c: c.file("nolabel.csv", rows.drop(columns="label").to_csv(index=False)),
            "column 'label'",
        ),
        ("labels", "labels with NaN"): (
            lambda c: c.file(
                "nan.csv", rows.assign(label=[np.nan, *rows["label"][1:]]).to_csv(index=False)
            ),
            "missing",
        ),
        ("labels", "one class"): (
            lambda c: c.file("one.csv", rows.assign(label=1).to_csv(index=False)),
            "single class",
        ),
        ("unseen", "empty texts"): (
            lambda c: c.file(
                "empty_texts.csv", rows.assign(text=["", *rows["text"][1:]]).to_csv(index=False)
            ),
            "missing",  # a CSV cell holding "" reads as missing
        ),
        ("unseen", "blank texts"): (
            lambda c: c.file(
                "blank.csv", rows.assign(text=["   ", *rows["text"][1:]]).to_csv(index=False)
            ),
            "special tokens only",
        ),
        ("unseen", "out-of-vocabulary text"): (
            lambda c: c.file(
                "unk.csv",
                rows.assign(text=["the 🐶 near the cars", *rows["text"][1:]]).to_csv(index=False),
            ),
            "outside the vocabulary",
        ),
        ("unseen", "all texts empty, excluded"): (
            lambda c: c.file("allempty.csv", rows.assign(text=" ").to_csv(index=False)),
            "none of the",
        ),
    }
    cases = []
    for (family, name), (make, phrase) in files.items():
        cases += _through_a_task(family, name, make, phrase)
    return cases


def _through_a_task(family: str, name: str, make: Callable, phrase: str) -> list[Case]:
    exclude = "excluded" in name

    def config(ctx: Context) -> dict:
        data = {**BASE, "task": str(make(ctx)), "label": "label"}
        data.pop("n")
        return {**data, "unseen": "exclude"} if exclude else data

    def python(ctx: Context) -> Any:
        from mechwidgets.runner import run_spec

        return run_spec(config(ctx))

    def command(ctx: Context) -> Any:
        return cli("run", ctx.config(re.sub(r"\W+", "_", name), config(ctx)))()

    def magic(ctx: Context) -> Any:
        flag = " --unseen exclude" if exclude else ""
        line = f"detect --task {make(ctx)} --label label --layers 1 --seeds 1{flag}"
        return ctx.shell.run_line_magic("mechinterp", line + " --permutations 20 --resamples 100")

    return [
        Case(family, name, "python", python, phrase, fast=False),
        Case(family, name, "cli", command, phrase, fast=False),
        Case(family, name, "magic", magic, phrase, fast=False),
    ]


def _python_cases() -> list[Case]:
    """Calls only Python makes: tasks, cubes, models, extraction, patching."""
    import mechwidgets as mw

    fast = dict(seeds=1, permutations=20, resamples=100)
    labels = lambda c: c.cube["subject_number"].values  # noqa: E731

    def nan_act(c: Context) -> Any:
        cube = c.cube.copy()
        cube["act"] = cube["act"] * np.nan
        return cube

    def same_pairs(c: Context) -> Any:
        pairs = mw.get_task_pairs(n=40)
        return replace(pairs, corrupt=list(pairs.clean))

    table: list[tuple[str, str, Callable[[Context], Any], str, bool]] = [
        ("type", "get_task n as text", lambda c: mw.get_task("subject_number", n="100"), "whole number", True),
        ("type", "get_task n 2.5", lambda c: mw.get_task("subject_number", n=2.5), "whole number", True),
        ("type", "get_task seed as text", lambda c: mw.get_task("tense", seed="1"), "whole number", True),
        ("typo", "get_task unknown name", lambda c: mw.get_task("subject_numbr"), "did you mean", True),
        ("type", "detect permutations 2.5", lambda c: mw.detect(c.cube, seeds=1, permutations=2.5), "permutations", True),
        ("range", "detect level 2", lambda c: mw.detect(c.cube, level=2, **fast), "between 0 and 1", True),
        ("typo", "detect param typo", lambda c: mw.detect(c.cube, lable="x"), "lable", True),
        ("typo", "detect unknown label", lambda c: mw.detect(c.cube, "nope", **fast), "no label 'nope'", True),
        ("memory", "detect permutations 1e8", lambda c: mw.detect(c.cube, seeds=1, permutations=10**8), "GiB", True),
        ("memory", "collapse resamples 1e10", lambda c: mw.collapse(c.cube, seeds=1, resamples=10**10), "GiB", True),
        ("controls", "unknown control", lambda c: mw.detect(c.cube, controls=["shuffle"], **fast), "unknown control", True),
        ("controls", "control with options", lambda c: mw.detect(c.cube, controls=[{"name": "random_subspace", "rank": 3}], **fast), "no options", True),
        ("labels", "labels holding None", lambda c: mw.detect(c.relabel([None, *labels(c)[1:]]), **fast), "1 missing", True),
        ("labels", "labels holding NaN", lambda c: mw.detect(c.relabel([np.nan, *labels(c)[1:].astype(float)]), **fast), "1 missing", True),
        ("labels", "labels of mixed types", lambda c: mw.detect(c.relabel(["a", *labels(c)[1:].tolist()]), **fast), "mixes value types", True),
        ("labels", "constant float label", lambda c: mw.detect(c.relabel(np.full(300, 0.5)), **fast), "constant", True),
        ("labels", "label with inf", lambda c: mw.detect(c.relabel([np.inf, *labels(c)[1:] + 0.5]), **fast), "inf", True),
        ("cube", "all-NaN cube", lambda c: mw.detect(nan_act(c), **fast), "all NaN", True),
        ("cube", "not a cube", lambda c: mw.detect({"act": 1}, **fast), "activation cube", True),
        ("cube", "no act variable", lambda c: mw.detect(c.cube.drop_vars("act"), **fast), "no 'act'", True),
        ("unseen", "extract an empty text", lambda c: mw.extract(c.model, ["", "the dog"]), "special tokens only", True),
        ("unseen", "extract a blank text", lambda c: mw.extract(c.model, ["the dog", " \t "]), "special tokens only", True),
        ("unseen", "extract an <unk> text", lambda c: mw.extract(c.model, ["the 🐶 near the cars"]), "outside the vocabulary", True),
        ("unseen", "extract only empty texts, excluded", lambda c: mw.extract(c.model, ["", ""], unseen="exclude"), "none of the", True),
        ("unseen", "extract unseen='skip'", lambda c: mw.extract(c.model, ["the dog"], unseen="skip"), "exclude", True),
        ("extract", "a string, not a list", lambda c: mw.extract(c.model, "the dog"), "list of texts", True),
        ("extract", "no texts", lambda c: mw.extract(c.model, []), "non-empty", True),
        ("extract", "layers ''", lambda c: mw.extract(c.model, ["the dog"], layers=""), "layers", True),
        ("extract", "batch_size 0", lambda c: mw.extract(c.model, ["the dog"], batch_size=0), "batch_size", True),
        ("extract", "not a model", lambda c: mw.extract("toy-grammar", ["the dog"]), "load_model", True),
        ("file", "Task.from_file empty csv", lambda c: mw.Task.from_file(c.file("e.csv", b"")), "is empty", True),
        ("file", "Task.from_file non-UTF-8", lambda c: mw.Task.from_file(c.file("l.csv", b"text,label\n\xe9,1\n")), "UTF-8", True),
        ("model", "unknown model", lambda c: mw.load_model("no-such-model-xyz"), "cannot load model", True),
        ("model", "a number", lambda c: mw.load_model(3), "model name", True),
        ("model", "folder without a checkpoint", lambda c: mw.load_model(str(c.root)), "cannot load", True),
        ("patch", "identical clean and corrupt", lambda c: mw.patch(c.model, clean=same_pairs(c), n=8), "the same in all", True),
        ("patch", "corrupt count differs", lambda c: mw.patch(c.model, clean=["the dog", "the cat"], corrupt=["the dogs"], behavior=mw.metrics.logit_diff("is", "are")), "corrupt", True),
    ]  # fmt: skip
    return [Case(f, n, "python", run, p, fast=fast_) for f, n, run, p, fast_ in table]


def _entry_point_cases() -> list[Case]:
    """Mistakes only a command line or a magic line can hold, and folder faults."""

    def out_config(target: Callable[[Context], Path]) -> Callable[[Context], Any]:
        def call(ctx: Context) -> Any:
            return cli("run", ctx.config("out", {**BASE}), "-o", target(ctx))()

        return call

    def read_only_cache(ctx: Context) -> Any:
        with env(MECHWIDGETS_CACHE=str(READ_ONLY / "mechwidgets-cache")):
            return cli("run", ctx.config("cache", {**BASE}))()

    def read_only_cache_python(ctx: Context) -> Any:
        import mechwidgets as mw

        with env(MECHWIDGETS_CACHE=str(READ_ONLY)):
            return mw.extract(ctx.model, ["the dog near the cars"], layers="0")

    def magic(line: str) -> Callable[[Context], Any]:
        return lambda ctx: ctx.shell.run_line_magic("mechinterp", line)

    lines = {
        "unterminated quote": ("detect --task 'subject_number", "close the quote"),
        "mistyped option": ("detect --permutatoins 5", "did you mean --permutations"),
        "layers ''": ("detect --layers ''", "layers is empty"),
        "controls ''": ("detect --controls ''", "empty list"),
        "permutations 2.5": ("detect --permutations 2.5", "invalid int"),
        "unknown action": ("detcet", "invalid choice"),
        "no action": ("", "needs an action"),
        "param typo for the action": ("compare --label tense", "did you mean 'labels'"),
        "memory": ("detect --permutations 1000000000 --layers 1", "GiB"),
    }
    cases = [Case("magic line", n, "magic", magic(line), p) for n, (line, p) in lines.items()]
    cases += [
        Case("cli line", "mistyped option", "cli", lambda c: cli("run", "x.yaml", "--permutatoins", "3")(), "unrecognized"),
        Case("cli line", "no subcommand", "cli", lambda c: cli()(), "required"),
        Case("cli line", "unknown subcommand", "cli", lambda c: cli("rnu", "x.yaml")(), "invalid choice"),
        Case("cli line", "missing config", "cli", lambda c: cli("run", c.root / "nope.yaml")(), "no such config"),
        Case("folders", "output folder read-only", "cli", out_config(lambda c: READ_ONLY / "out"), "not writable"),
        Case("folders", "output is a file", "cli", out_config(lambda c: c.file("afile", "x")), "is a file"),
        Case("folders", "output is the user's folder", "cli", out_config(lambda c: c.root), "not a mechwidgets bundle"),
        Case("folders", "cache folder read-only", "cli", read_only_cache, "not writable"),
        Case("folders", "cache folder read-only (extract)", "python", read_only_cache_python, "cache", fast=False),
        Case("rerun", "metrics.json missing", "cli", lambda c: cli("run", c.broken_bundle("nometrics", None))(), "missing", fast=False),
        Case("rerun", "metrics.json invalid", "cli", lambda c: cli("run", c.broken_bundle("badmetrics", "{not json"))(), "cannot be read", fast=False),
        Case("rerun", "metrics.json without a table", "cli", lambda c: cli("run", c.broken_bundle("notable", "{}"))(), "no 'table'", fast=False),
    ]  # fmt: skip
    return cases


def all_cases() -> list[Case]:
    """Every case of the table."""
    return _yaml_cases() + _data_cases() + _python_cases() + _entry_point_cases()


CASES = all_cases()


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Context:
    return Context(tmp_path_factory.mktemp("bad_input")).warm()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_that_says_what_to_do(case: Case, ctx: Context) -> None:
    got = outcome(case, ctx)
    assert got.kind == "one-line", f"{got.kind}: {got.message}"
    assert case.phrase.lower() in got.message.lower(), got.message
    assert ADVICE.search(got.message), f"no advice in: {got.message}"
    if case.fast:
        assert got.seconds < FAST_S, f"took {got.seconds:.2f} s: {got.message}"


def test_the_table_covers_every_entry_point_and_family() -> None:
    channels = {c.channel for c in CASES}
    assert channels == {"python", "cli", "magic"}
    by_family = {c.family for c in CASES}
    assert {"typo", "type", "range", "memory", "unseen", "labels", "file", "folders"} <= by_family
    assert len(CASES) >= 150


def test_a_bad_config_fails_before_any_model_loads(ctx: Context, monkeypatch) -> None:
    import mechwidgets.models.loading as loading

    def no_model(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded for a config that is wrong on parse")

    monkeypatch.setattr(loading, "load_model", no_model)
    for case in CASES:
        if case.channel == "python" and case.fast and case.family in {"typo", "type", "range"}:
            assert outcome(case, ctx).kind == "one-line", case.id


def test_console_script_prints_one_line_without_traceback(ctx: Context) -> None:
    import subprocess

    config = ctx.config("console", {**BASE, "permutations": 2.5})
    proc = subprocess.run(
        [sys.executable, "-m", "mechwidgets.cli", "run", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "mechinterp: error: bad value 2.5 for 'detect' parameter 'permutations': give a whole "
        "number of 1 or more, e.g. 200"
    ]


# --- what the checks let through, and how ----------------------------------------------


def test_float_zero_one_labels_are_classes_unless_r2_is_asked_for(ctx: Context) -> None:
    import mechwidgets as mw

    floats = ctx.relabel(ctx.cube["subject_number"].values.astype(float))
    fast = dict(seeds=1, permutations=20, resamples=100)
    assert mw.detect(floats, **fast).summary()["metric"] == "accuracy"
    assert mw.detect(floats, metric="r2", **fast).summary()["metric"] == "r2"


def test_no_controls_means_none_and_the_verdict_says_untested(ctx: Context) -> None:
    import mechwidgets as mw

    res = mw.detect(ctx.cube, controls=[], seeds=1, permutations=20, resamples=100)
    assert list(res.data["control"].values) == ["none"]
    assert "untested: no controls ran" in res.verdict()
    default = mw.detect(ctx.cube, seeds=1, permutations=20, resamples=100)
    assert "label_shuffle" in list(default.data["control"].values)


def test_excluded_texts_and_all_nan_slices_are_named_in_the_verdict(ctx: Context) -> None:
    import mechwidgets as mw

    task = mw.get_task("subject_number", n=300)
    task.texts[0], task.texts[1] = "the 🐶 near the cars", "   "
    cube = mw.extract(ctx.model, task, layers="0-1", components=["resid", "mlp"], unseen="exclude")
    assert cube.attrs["unseen_excluded"] == 2 and cube.sizes["sample"] == 298
    assert 0 not in cube["sample_id"].values and 1 not in cube["sample_id"].values
    act = cube["act"].load().copy()
    act.loc[{"layer": 1, "component": "mlp"}] = np.nan
    res = mw.detect(cube.assign(act=act), seeds=1, permutations=20, resamples=100)
    assert "2 text(s) the model cannot see were left out" in res.verdict()
    assert "skipped as all NaN: mlp layer 1" in res.verdict()


def test_the_memory_estimate_is_a_lower_bound_within_a_small_factor(ctx: Context) -> None:
    import tracemalloc

    import mechwidgets as mw
    from mechwidgets.core.budget import protocol_bytes

    cube = ctx.cube
    controls = ("label_shuffle", "random_subspace")
    estimate = protocol_bytes(
        n_samples=cube.sizes["sample"],
        n_test=int((cube["split"].values == "test").sum()),
        dim=cube.sizes["dim"],
        n_slices=cube.sizes["layer"] * cube.sizes["component"],
        controls=controls,
        seeds=2,
        permutations=2000,
        resamples=1000,
    )
    tracemalloc.start()
    try:
        mw.detect(cube, controls=list(controls), seeds=2, permutations=2000, resamples=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(estimate.values()) <= peak <= 3 * sum(estimate.values())


def test_tilde_in_an_output_folder_is_the_home_folder(ctx: Context, monkeypatch) -> None:
    from mechwidgets.runner import output_folder

    monkeypatch.setenv("HOME", str(ctx.root))
    assert output_folder("~/runs/x") == ctx.root / "runs" / "x"
