"""A synthetic English grammar whose ground truth is known, for toy-grammar and its tasks.

Every sentence has the shape::

    the SUBJECT [PREP the ATTRACTOR] VERB ADJ [and ADJ] [TIME]

e.g. "the dog near the cars is happy and kind today". Each part carries one feature
the model must use to predict what follows, so each is a real feature of the model:

- subject number (singular/plural) decides the verb form (is/are, seems/seem; was/were);
  the attractor noun of either number sits between them as a distractor;
- tense (present/past) decides the verb form and the closing time word (today/yesterday);
- subject animacy decides the adjective class (animate: happy, cruel; inanimate: shiny,
  rusty);
- sentiment decides the second adjective, which always shares the first one's sentiment.

Sampling is deterministic given a seed, and :class:`Lexicon` pools let task splits hold
out lexical items (test nouns unseen in training). Prefixes "the N PREP the N" whose
hash falls in one eighth are never in the model's training corpus; the agreement
evaluation uses only those (:func:`is_heldout_prefix`).

>>> rng = np.random.default_rng(0)
>>> sentence = sample_sentences(rng, 1, Lexicon.full())[0]
>>> sentence.text, sentence.prefix, sentence.subject_plural
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from mechwidgets.data.splits import SPLITS, stratified_split

#: (singular, plural) of animate nouns, then inanimate nouns: 24 each
ANIMATE_NOUNS = (
    ("dog", "dogs"), ("cat", "cats"), ("horse", "horses"), ("bird", "birds"),
    ("rabbit", "rabbits"), ("mouse", "mice"), ("wolf", "wolves"), ("fox", "foxes"),
    ("teacher", "teachers"), ("doctor", "doctors"), ("farmer", "farmers"),
    ("student", "students"), ("nurse", "nurses"), ("pilot", "pilots"), ("singer", "singers"),
    ("lawyer", "lawyers"), ("baker", "bakers"), ("soldier", "soldiers"),
    ("writer", "writers"), ("painter", "painters"), ("driver", "drivers"),
    ("child", "children"), ("woman", "women"), ("king", "kings"),
)  # fmt: skip
INANIMATE_NOUNS = (
    ("table", "tables"), ("car", "cars"), ("rock", "rocks"), ("chair", "chairs"),
    ("book", "books"), ("lamp", "lamps"), ("box", "boxes"), ("door", "doors"),
    ("window", "windows"), ("bottle", "bottles"), ("cup", "cups"), ("house", "houses"),
    ("road", "roads"), ("bridge", "bridges"), ("wall", "walls"), ("clock", "clocks"),
    ("phone", "phones"), ("shoe", "shoes"), ("coat", "coats"), ("bag", "bags"),
    ("boat", "boats"), ("desk", "desks"), ("knife", "knives"), ("glass", "glasses"),
)  # fmt: skip
NOUNS = ANIMATE_NOUNS + INANIMATE_NOUNS
NOUN_NAMES = tuple(singular for singular, _ in NOUNS)
#: animacy per noun id (1 animate, 0 inanimate)
NOUN_ANIMATE = np.array([1] * len(ANIMATE_NOUNS) + [0] * len(INANIMATE_NOUNS))

#: adjectives by (animate, positive); an adjective's id is its index in ADJECTIVES
ADJECTIVE_GROUPS = {
    (1, 1): ("happy", "kind", "friendly", "cheerful", "brave",
             "gentle", "clever", "calm", "polite", "honest"),
    (1, 0): ("sad", "cruel", "angry", "rude", "lazy",
             "nervous", "selfish", "grumpy", "lonely", "jealous"),
    (0, 1): ("clean", "shiny", "sturdy", "new", "elegant",
             "useful", "smooth", "spotless", "solid", "neat"),
    (0, 0): ("dirty", "broken", "rusty", "cracked", "dusty",
             "flimsy", "worn", "useless", "filthy", "damaged"),
}  # fmt: skip
ADJECTIVES = tuple(word for group in ADJECTIVE_GROUPS.values() for word in group)
ADJECTIVE_ANIMATE = np.array([a for (a, _), g in ADJECTIVE_GROUPS.items() for _ in g])
ADJECTIVE_POSITIVE = np.array([p for (_, p), g in ADJECTIVE_GROUPS.items() for _ in g])

#: verb lemma -> (present singular, present plural, past singular, past plural)
VERBS = (
    ("is", "are", "was", "were"),
    ("seems", "seem", "seemed", "seemed"),
    ("looks", "look", "looked", "looked"),
    ("feels", "feel", "felt", "felt"),
    ("becomes", "become", "became", "became"),
    ("remains", "remain", "remained", "remained"),
    ("stays", "stay", "stayed", "stayed"),
)
VERB_NAMES = ("be", "seem", "look", "feel", "become", "remain", "stay")
PREPOSITIONS = ("near", "behind", "beside", "under", "above", "with", "by", "around")
#: closing time words by tense (0 present, 1 past)
TIME_WORDS = (("today", "now"), ("yesterday", "then"))
FUNCTION_WORDS = ("the", "and")

#: class names of each binary feature, indexed by label value
CLASSES = {
    "subject_number": ("singular", "plural"),
    "attractor_number": ("singular", "plural"),
    "animacy": ("inanimate", "animate"),
    "sentiment": ("negative", "positive"),
    "tense": ("present", "past"),
}
HELDOUT_MODULUS = 8


def vocabulary() -> list[str]:
    """Every word the grammar can produce, in a fixed order (the tokenizer's vocabulary)."""
    words = [*FUNCTION_WORDS, *PREPOSITIONS, *(w for n in NOUNS for w in n)]
    words += [*(w for v in VERBS for w in v), *ADJECTIVES, *(w for t in TIME_WORDS for w in t)]
    return list(dict.fromkeys(words))


def is_heldout_prefix(prefix: str) -> bool:
    """Whether a prefix with an attractor is reserved for evaluation (never trained on)."""
    return zlib.crc32(prefix.encode()) % HELDOUT_MODULUS == 0


@dataclass(frozen=True)
class Lexicon:
    """The lexical items a sample may draw from (ids into NOUNS, ADJECTIVES, VERBS)."""

    nouns: tuple[int, ...]
    adjectives: tuple[int, ...]
    verbs: tuple[int, ...]

    @classmethod
    def full(cls) -> Lexicon:
        """All lexical items of the grammar."""
        return cls(
            tuple(range(len(NOUNS))), tuple(range(len(ADJECTIVES))), tuple(range(len(VERBS)))
        )


def split_lexicon(seed: int) -> dict[str, Lexicon]:
    """Partition the lexicon into disjoint train/val/test pools (60/20/20), balanced per class.

    Nouns are split within each animacy class and adjectives within each (animacy,
    sentiment) group, so every pool can express every label value; verbs split 5/1/1.

    Returns
    -------
    split name -> :class:`Lexicon`.
    """
    nouns = stratified_split(NOUN_ANIMATE, seed, what="noun animacy")
    adjectives = stratified_split(
        ADJECTIVE_ANIMATE * 2 + ADJECTIVE_POSITIVE, seed, what="adjective group"
    )
    verbs = stratified_split(np.zeros(len(VERBS), dtype=int), seed, what="verb")
    return {
        s: Lexicon(
            tuple(np.flatnonzero(nouns == s).tolist()),
            tuple(np.flatnonzero(adjectives == s).tolist()),
            tuple(np.flatnonzero(verbs == s).tolist()),
        )
        for s in SPLITS
    }


@dataclass(frozen=True)
class Sentence:
    """One sentence as lexical choices; its words follow from them."""

    subject: int
    subject_plural: int
    verb: int
    past: int
    adjective: int
    preposition: int | None = None
    attractor: int | None = None
    attractor_plural: int | None = None
    second_adjective: int | None = None
    time_word: int | None = None

    @property
    def prefix_words(self) -> list[str]:
        """The words before the verb."""
        words = ["the", NOUNS[self.subject][self.subject_plural]]
        if self.attractor is not None:
            assert self.preposition is not None and self.attractor_plural is not None
            attractor = NOUNS[self.attractor][self.attractor_plural]
            words += [PREPOSITIONS[self.preposition], "the", attractor]
        return words

    @property
    def verb_form(self) -> str:
        return VERBS[self.verb][2 * self.past + self.subject_plural]

    @property
    def wrong_verb_form(self) -> str:
        """The verb form of the other number (equal to verb_form for number-neutral pasts)."""
        return VERBS[self.verb][2 * self.past + 1 - self.subject_plural]

    @property
    def words(self) -> list[str]:
        words = [*self.prefix_words, self.verb_form, ADJECTIVES[self.adjective]]
        if self.second_adjective is not None:
            words += ["and", ADJECTIVES[self.second_adjective]]
        if self.time_word is not None:
            words.append(TIME_WORDS[self.past][self.time_word])
        return words

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def prefix(self) -> str:
        """The text up to, not including, the verb."""
        return " ".join(self.prefix_words)

    def cut(self, end: str) -> str:
        """The text up to ``end``: ``"prefix"`` (before the verb), ``"verb"``,
        ``"adjective"`` (the first one) or ``"sentence"`` (all of it)."""
        ends = {"prefix": 0, "verb": 1, "adjective": 2}
        if end == "sentence":
            return self.text
        return " ".join(self.words[: len(self.prefix_words) + ends[end]])

    @property
    def animate(self) -> int:
        return int(NOUN_ANIMATE[self.subject])

    @property
    def positive(self) -> int:
        return int(ADJECTIVE_POSITIVE[self.adjective])

    def with_subject_plural(self, plural: int) -> Sentence:
        """The same sentence with the subject's number set to ``plural``."""
        return replace(self, subject_plural=plural)


def _balanced(rng: np.random.Generator, n: int, share: float = 0.5) -> np.ndarray:
    """``n`` zeros and ones, ``round(share * n)`` of them ones, in random order."""
    return rng.permutation(np.arange(n) < round(share * n)).astype(int)


def sample_sentences(
    rng: np.random.Generator,
    n: int,
    lexicon: Lexicon,
    attractor_rate: float = 0.75,
    be_rate: float = 0.5,
    continuation_rate: float = 0.4,
) -> list[Sentence]:
    """Draw ``n`` sentences with every binary feature exactly balanced.

    Subject number, attractor number, animacy, sentiment and tense are each split
    half and half (in independent random orders), so any one of them is stratified.

    Parameters
    ----------
    rng : the random generator (the only source of randomness).
    n : how many sentences.
    lexicon : the nouns, adjectives and verbs to draw from.
    attractor_rate : share of sentences with a prepositional phrase and attractor noun.
    be_rate : share using the copula (is/are/was/were) when the lexicon has it.
    continuation_rate : chance of "and ADJ" and, independently, of a closing time word.
    """
    nouns = np.array(lexicon.nouns)
    adjectives = np.array(lexicon.adjectives)
    by_animacy = {a: nouns[NOUN_ANIMATE[nouns] == a] for a in (0, 1)}
    by_group = {
        (a, p): adjectives[
            (ADJECTIVE_ANIMATE[adjectives] == a) & (ADJECTIVE_POSITIVE[adjectives] == p)
        ]
        for a in (0, 1)
        for p in (0, 1)
    }
    verbs = [v for v in lexicon.verbs if v != 0]
    be = 0 in lexicon.verbs
    columns = {
        k: _balanced(rng, n) for k in ("plural", "att_plural", "animate", "positive", "past")
    }
    has_attractor = _balanced(rng, n, attractor_rate)
    out = []
    for i in range(n):
        animate, positive = columns["animate"][i], columns["positive"][i]
        group = by_group[(animate, positive)]
        first = int(rng.choice(group))
        use_be = be and (not verbs or rng.random() < be_rate)
        sentence = Sentence(
            subject=int(rng.choice(by_animacy[animate])),
            subject_plural=int(columns["plural"][i]),
            verb=0 if use_be else int(rng.choice(verbs)),
            past=int(columns["past"][i]),
            adjective=first,
        )
        if has_attractor[i]:
            sentence = replace(
                sentence,
                preposition=int(rng.integers(len(PREPOSITIONS))),
                attractor=int(rng.choice(nouns)),
                attractor_plural=int(columns["att_plural"][i]),
            )
        if rng.random() < continuation_rate and len(group) > 1:
            second = int(rng.choice(group[group != first]))
            sentence = replace(sentence, second_adjective=second)
        if rng.random() < continuation_rate:
            sentence = replace(sentence, time_word=int(rng.integers(2)))
        out.append(sentence)
    return out


def _draw(
    rng: np.random.Generator, n: int, keep: Callable[[Sentence], bool], attractor_rate: float
) -> list[Sentence]:
    """``n`` sentences from the full lexicon that pass ``keep``."""
    out: list[Sentence] = []
    while len(out) < n:
        batch = sample_sentences(rng, max(n - len(out), 1000), Lexicon.full(), attractor_rate)
        out += [s for s in batch if keep(s)]
    return out[:n]


def training_corpus(n: int, seed: int) -> list[Sentence]:
    """``n`` sentences for training toy-grammar: all lexical items, no held-out prefix."""

    def trainable(s: Sentence) -> bool:
        return s.attractor is None or not is_heldout_prefix(s.prefix)

    return _draw(np.random.default_rng([seed, 1]), n, trainable, attractor_rate=0.75)


def heldout_sentences(n: int, seed: int = 0) -> list[Sentence]:
    """``n`` sentences whose attractor prefix toy-grammar never saw, for evaluation."""

    def heldout(s: Sentence) -> bool:
        return s.attractor is not None and is_heldout_prefix(s.prefix)

    return _draw(np.random.default_rng([seed, 3]), n, heldout, attractor_rate=1.0)


def agreement_eval_set(n: int | None = None, seed: int = 0) -> list[Sentence]:
    """Held-out prefixes whose attractor has the opposite number of the subject.

    Every such prefix of the grammar (about 9,200) with the copula in both tenses, or a
    seeded random subset of ``n`` of them.

    Returns
    -------
    Sentences whose ``prefix`` ends just before the verb; ``verb_form`` is the correct
    continuation and ``wrong_verb_form`` the number-flipped one.
    """
    out = [
        Sentence(
            subject=s,
            subject_plural=sp,
            verb=0,
            past=past,
            adjective=0,
            preposition=p,
            attractor=a,
            attractor_plural=1 - sp,
        )
        for s in range(len(NOUNS))
        for sp in (0, 1)
        for p in range(len(PREPOSITIONS))
        for a in range(len(NOUNS))
        for past in (0, 1)
    ]
    out = [s for s in out if is_heldout_prefix(s.prefix)]
    if n is not None and n < len(out):
        rng = np.random.default_rng([seed, 2])
        out = [out[i] for i in sorted(rng.choice(len(out), n, replace=False))]
    return out
