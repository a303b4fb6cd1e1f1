"""The synthetic grammar: lexicon sizes, agreement, determinism, held-out prefixes, splits."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mechwidgets.data import grammar
from mechwidgets.data.grammar import Lexicon, Sentence


def test_lexicon_is_large_and_balanced_enough_to_hold_out_items() -> None:
    assert len(grammar.NOUNS) >= 30
    assert grammar.NOUN_ANIMATE.sum() * 2 == len(grammar.NOUNS)
    for positive in (0, 1):
        assert list(grammar.ADJECTIVE_POSITIVE).count(positive) >= 16
    assert len(set(grammar.vocabulary())) == len(grammar.vocabulary())
    forms = [w for n in grammar.NOUNS for w in n]
    assert len(set(forms)) == len(forms), "a noun form must tell its number"


def test_verb_agrees_with_subject_not_attractor() -> None:
    s = Sentence(
        subject=0, subject_plural=0, verb=0, past=0, adjective=0,
        preposition=0, attractor=25, attractor_plural=1,
    )  # fmt: skip
    assert s.text == "the dog near the cars is happy"
    assert (s.verb_form, s.wrong_verb_form) == ("is", "are")
    plural_past = replace(s.with_subject_plural(1), past=1)
    assert plural_past.cut("verb") == "the dogs near the cars were"
    assert s.cut("prefix") == s.prefix == "the dog near the cars"
    assert s.cut("adjective") == "the dog near the cars is happy"


def test_sampling_is_deterministic_and_balanced() -> None:
    def draw(seed: int) -> list[str]:
        return [
            s.text
            for s in grammar.sample_sentences(np.random.default_rng(seed), 200, Lexicon.full())
        ]

    assert draw(4) == draw(4)
    assert draw(4) != draw(5)
    sentences = grammar.sample_sentences(np.random.default_rng(0), 200, Lexicon.full())
    for feature in ("subject_plural", "past", "animate", "positive"):
        assert sum(getattr(s, feature) for s in sentences) == 100
    assert sum(s.attractor is not None for s in sentences) == 150
    vocab = set(grammar.vocabulary())
    assert all(set(s.words) <= vocab for s in sentences)


def test_sentences_follow_the_ground_truth_rules() -> None:
    for s in grammar.sample_sentences(np.random.default_rng(1), 500, Lexicon.full()):
        assert grammar.ADJECTIVE_ANIMATE[s.adjective] == s.animate  # animacy -> adjective class
        if s.second_adjective is not None:  # sentiment -> second adjective
            assert grammar.ADJECTIVE_POSITIVE[s.second_adjective] == s.positive
            assert s.second_adjective != s.adjective
        if s.time_word is not None:  # tense -> time word
            assert s.words[-1] in grammar.TIME_WORDS[s.past]
        assert s.verb_form == grammar.VERBS[s.verb][2 * s.past + s.subject_plural]


def test_split_lexicon_is_a_disjoint_cover_with_every_class_in_every_split() -> None:
    pools = grammar.split_lexicon(seed=3)
    for part in ("nouns", "adjectives", "verbs"):
        items = [i for p in pools.values() for i in getattr(p, part)]
        assert len(items) == len(set(items)) == len(getattr(Lexicon.full(), part))
    for pool in pools.values():
        assert set(grammar.NOUN_ANIMATE[list(pool.nouns)]) == {0, 1}
        groups = grammar.ADJECTIVE_ANIMATE[list(pool.adjectives)] * 2
        assert set(groups + grammar.ADJECTIVE_POSITIVE[list(pool.adjectives)]) == {0, 1, 2, 3}
    assert grammar.split_lexicon(3) == pools
    assert grammar.split_lexicon(4) != pools


def test_training_corpus_never_contains_an_evaluation_prefix() -> None:
    corpus = grammar.training_corpus(3000, seed=0)
    assert len(corpus) == 3000
    assert not any(s.attractor is not None and grammar.is_heldout_prefix(s.prefix) for s in corpus)
    evaluation = grammar.agreement_eval_set()
    assert len(evaluation) > 5000
    assert {s.prefix for s in evaluation}.isdisjoint({s.prefix for s in corpus})
    assert all(s.attractor_plural != s.subject_plural and s.verb == 0 for s in evaluation)
    held = grammar.heldout_sentences(200, seed=1)
    assert len(held) == 200 and all(grammar.is_heldout_prefix(s.prefix) for s in held)
    subset = grammar.agreement_eval_set(n=100, seed=1)
    assert len(subset) == 100 and subset == grammar.agreement_eval_set(n=100, seed=1)
