"""What every result shows in Jupyter: chart, table and verdict; plain text that never varies."""

from __future__ import annotations

import html
import re

import pytest

import mechwidgets as mw
from mechwidgets.probes.synthetic import planted_cube


@pytest.fixture(scope="module")
def result():
    cube = planted_cube({"number": {(1, "resid"): 3.0}}, n_samples=400, n_layers=3, seed=2)
    return mw.detect(cube, label="number", seeds=1, permutations=50, resamples=200)


def test_rich_display_holds_chart_table_and_verdict(result):
    bundle = result._repr_mimebundle_()
    assert bundle["text/plain"] == repr(result)
    page = bundle["text/html"]
    assert "<svg" in page  # rendered here, so it shows offline and in any frontend
    assert "<table" in page
    assert result.verdict() in html.unescape(page)
    assert "rich display failed" not in page


def test_plain_repr_is_deterministic_and_free_of_addresses(result):
    text = repr(result)
    assert text == repr(result)
    assert text.startswith("DetectResult(detect): " + result.verdict())
    assert not re.search(r"0x[0-9a-f]{6,}", text)


def test_a_failing_chart_falls_back_to_text_and_shows_the_error(result, monkeypatch):
    def broken():
        raise ValueError("no chart for you")

    monkeypatch.setattr(result, "chart", broken)
    bundle = result._repr_mimebundle_()
    assert bundle["text/plain"] == repr(result)
    assert "rich display failed: ValueError: no chart for you" in bundle["text/html"]


def test_verdict_says_when_permutations_are_too_few_to_reach_significance(result):
    # 50 permutations x 1 seed: p >= 1/51, and Holm over 9 slices lifts that above 0.05
    assert result.summary()["n_significant"] == 0
    assert "too few permutations to tell" in result.verdict()
