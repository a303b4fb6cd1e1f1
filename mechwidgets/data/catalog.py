"""The built-in tasks by name, and clean/corrupt prompt pairs for patching.

Grammar tasks read the sentences of :mod:`mechwidgets.data.grammar` at the token where
toy-grammar needs the feature; ``induction`` reads the random-token sequences of
toy-induction. Every split draws its lexical items (nouns, adjectives, verbs; for
induction the token read) from its own pool, so test items are unseen in training and a
control task on word types measures something (Hewitt & Liang 2019).

===================  ==========================================  ========================
task                 text, read at the last token                label(s)
===================  ==========================================  ========================
subject_number       "the dog near the cars" (before the verb)   subject number
attractor_number     "the dog near the cars" (always attractor)  attractor number
animacy              "the dog near the cars is"                  subject animacy
sentiment            "the dog near the cars is happy"            adjective sentiment
tense                "the dog near the cars was happy"           tense
grammar_all          "the dog near the cars is happy"            all five, jointly balanced
induction            "t3 t17 ... t9" (16 tokens), read at a      next token repeats
                     random position
===================  ==========================================  ========================

>>> task = get_task("subject_number", n=2000, seed=0)
>>> pairs = get_task_pairs("subject_number", n=200)
>>> pairs.clean[0], pairs.corrupt[0], pairs.clean_answer[0], pairs.corrupt_answer[0]
"""

from __future__ import annotations

import difflib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mechwidgets.core.errors import TaskError
from mechwidgets.data import grammar, induction
from mechwidgets.data.grammar import Sentence
from mechwidgets.data.positions import Position, as_positions
from mechwidgets.data.splits import SPLIT_FRACTIONS, SPLITS, stratified_split
from mechwidgets.data.tasks import Task
from mechwidgets.intervene.metrics import LogitDiff, RepeatLogProb, logit_diff

#: label name -> (value of a sentence, id of the lexical item carrying it, names of those
#: ids); both are None for the attractor of a sentence without one
Getter = Callable[[Sentence], "int | None"]
GRAMMAR_LABELS: dict[str, tuple[Getter, Getter, tuple[str, ...]]] = {
    "subject_number": (lambda s: s.subject_plural, lambda s: s.subject, grammar.NOUN_NAMES),
    "attractor_number": (lambda s: s.attractor_plural, lambda s: s.attractor, grammar.NOUN_NAMES),
    "animacy": (lambda s: s.animate, lambda s: s.subject, grammar.NOUN_NAMES),
    "sentiment": (lambda s: s.positive, lambda s: s.adjective, grammar.ADJECTIVES),
    "tense": (lambda s: s.past, lambda s: s.verb, grammar.VERB_NAMES),
}


@dataclass(frozen=True)
class _GrammarTaskSpec:
    labels: tuple[str, ...]
    cut: str  # where the text ends: "prefix", "verb" or "adjective" (Sentence.cut)
    attractor_rate: float
    description: str


GRAMMAR_TASKS = {
    "subject_number": _GrammarTaskSpec(
        ("subject_number",), "prefix", 0.75,
        "Subject number read at the last token before the verb, where the model must "
        "choose is/are; 3 in 4 prefixes carry an attractor noun of either number.",
    ),
    "attractor_number": _GrammarTaskSpec(
        ("attractor_number",), "prefix", 1.0,
        "Number of the attractor noun (a distractor the model should ignore), read at "
        "the same pre-verb token as subject_number.",
    ),
    "animacy": _GrammarTaskSpec(
        ("animacy",), "verb", 0.75,
        "Subject animacy read at the verb, where the model must choose the adjective class.",
    ),
    "sentiment": _GrammarTaskSpec(
        ("sentiment",), "adjective", 0.75,
        "Sentiment of the adjective, read at it; the model needs it for 'and ADJ'.",
    ),
    "tense": _GrammarTaskSpec(
        ("tense",), "adjective", 0.75,
        "Tense read at the adjective after the verb, where the model needs it for the "
        "closing time word; verbs of the test split are unseen in training.",
    ),
    "grammar_all": _GrammarTaskSpec(
        tuple(GRAMMAR_LABELS), "adjective", 1.0,
        "All five features of the same sentences, read at the first adjective; the 32 "
        "label combinations are equally frequent, so no label predicts another.",
    ),
}  # fmt: skip
ALIASES = {"subject_number_agreement": "subject_number"}


def list_tasks() -> list[str]:
    """Names of the built-in tasks (aliases such as ``subject_number_agreement`` also load)."""
    return sorted([*GRAMMAR_TASKS, "induction"])


def get_task(name: str, n: int = 2000, seed: int = 0) -> Task:
    """A built-in task: ``n`` samples split 60/20/20, deterministic for ``seed``.

    Parameters
    ----------
    name : one of :func:`list_tasks` or an alias.
    n : number of samples over all splits.
    seed : seeds the lexical split and the sampling.

    Examples
    --------
    >>> task = get_task("animacy", n=500, seed=1)
    >>> task.classes("animacy")
    ('inanimate', 'animate')
    """
    _check_counts(n=n, seed=seed)
    key = ALIASES.get(name, name)
    if key == "induction":
        return _induction_task(n, seed)
    if key not in GRAMMAR_TASKS:
        close = difflib.get_close_matches(str(name), list_tasks(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise TaskError(f"unknown task '{name}'{hint}; choose one of {', '.join(list_tasks())}")
    spec = GRAMMAR_TASKS[key]
    sentences, split = _grammar_sample(
        key, spec.labels, n, seed, spec.attractor_rate, lambda s: s.cut(spec.cut)
    )
    task = Task(
        name=key,
        texts=[s.cut(spec.cut) for s in sentences],
        labels={k: np.array([GRAMMAR_LABELS[k][0](s) for s in sentences]) for k in spec.labels},
        split=split,
        positions=np.full(len(sentences), -1),
        word_types={k: np.array([GRAMMAR_LABELS[k][1](s) for s in sentences]) for k in spec.labels},
        metadata={
            "description": spec.description,
            "read_at": spec.cut,
            "classes": {k: grammar.CLASSES[k] for k in spec.labels},
            "word_type_names": {k: GRAMMAR_LABELS[k][2] for k in spec.labels},
            "factors": _factors(sentences),
            "seed": seed,
        },
    )
    if key == "subject_number":
        task.behavior = LogitDiff(
            correct=tuple(_be(s, s.subject_plural) for s in sentences),
            wrong=tuple(_be(s, 1 - s.subject_plural) for s in sentences),
        )
    return task


@dataclass
class PromptPairs:
    """Clean/corrupt prompts of equal token length that differ in one feature, for patching.

    Parameters
    ----------
    name : the feature flipped, e.g. ``"subject_number"``.
    clean, corrupt : prompt texts; ``corrupt[i]`` is ``clean[i]`` with the subject's
        number flipped, the same number of tokens.
    clean_answer, corrupt_answer : the correct next word after each prompt ("is" and
        "are"); each is the wrong answer for the other prompt.
    split : train/val/test per pair (lexical items held out as in the tasks).
    word_types : id of the subject noun of each pair.
    position : the token read in every prompt, as :mod:`mechwidgets.data.positions`
        defines (default -1: the last token, before the verb).
    metadata : ``classes`` and the ``factors`` of the clean sentences.
    """

    name: str
    clean: list[str]
    corrupt: list[str]
    clean_answer: list[str]
    corrupt_answer: list[str]
    split: np.ndarray
    word_types: np.ndarray
    position: Position = -1
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.clean)

    def __repr__(self) -> str:
        example = f"{self.clean[0]!r} -> {self.corrupt[0]!r}" if self.clean else "empty"
        return f"PromptPairs({self.name!r}, n={len(self)}, e.g. {example})"

    def to_task(self) -> Task:
        """The clean prompts as a Task: the factors that vary as labels, the read position,
        and the clean-minus-corrupt answer logit difference as its behaviour."""
        factors = self.metadata.get("factors", {})
        classes = self.metadata.get("classes", {})
        labels = {
            k: np.asarray(v)
            for k, v in factors.items()
            if k in classes and np.unique(v).size > 1 and min(v) >= 0
        }
        return Task(
            name=self.name,
            texts=list(self.clean),
            labels=labels,
            split=self.split,
            positions=as_positions([self.position] * len(self), len(self)),
            behavior=logit_diff(correct=self.clean_answer, wrong=self.corrupt_answer),
            metadata={"classes": {k: classes[k] for k in labels}},
        )


def get_task_pairs(name: str = "subject_number", n: int = 500, seed: int = 0) -> PromptPairs:
    """Clean/corrupt prompt pairs that differ only in subject number.

    Every prompt carries an attractor ("the dog near the cars"), so all have the same
    length; subject number, attractor number and tense (is/are or was/were answers) are
    balanced jointly.

    Examples
    --------
    >>> pairs = get_task_pairs(n=100)
    >>> pairs.clean[0], pairs.corrupt[0]
    ('the dog near the cars', 'the dogs near the cars')
    """
    _check_counts(n=n, seed=seed)
    if ALIASES.get(name, name) != "subject_number":
        raise TaskError(f"no prompt pairs for '{name}'; pairs exist for: subject_number")
    labels = ("subject_number", "attractor_number", "tense")
    sentences, split = _grammar_sample("pairs", labels, n, seed, 1.0, lambda s: (s.prefix, s.past))
    sentences = [replace(s, verb=0) for s in sentences]  # answers are is/are or was/were
    flipped = [s.with_subject_plural(1 - s.subject_plural) for s in sentences]
    return PromptPairs(
        name="subject_number",
        clean=[s.prefix for s in sentences],
        corrupt=[s.prefix for s in flipped],
        clean_answer=[s.verb_form for s in sentences],
        corrupt_answer=[s.verb_form for s in flipped],
        split=split,
        word_types=np.array([s.subject for s in sentences]),
        metadata={
            "classes": {k: grammar.CLASSES[k] for k in labels},
            "factors": _factors(sentences),
        },
    )


def _check_counts(**counts: Any) -> None:
    """``n`` and ``seed`` are whole numbers (``n`` positive): a one-line TaskError if not."""
    for what, value in counts.items():
        if not isinstance(value, int | np.integer) or isinstance(value, bool):
            raise TaskError(
                f"{what} must be a whole number, got {value!r} ({type(value).__name__}); "
                f"e.g. get_task('subject_number', {what}=100)"
            )
    if counts["n"] < 1:
        raise TaskError(f"n must be 1 or more samples, got {counts['n']}")


def _be(sentence: Sentence, plural: int) -> str:
    """The copula in the sentence's tense for a subject of number ``plural``."""
    return grammar.VERBS[0][2 * sentence.past + plural]


def _factors(sentences: list[Sentence]) -> dict[str, np.ndarray]:
    """Every ground-truth factor per sentence; -1 where the sentence lacks it."""
    out = {
        k: np.array([-1 if f(s) is None else f(s) for s in sentences])
        for k, (f, _, _) in GRAMMAR_LABELS.items()
    }
    out["has_attractor"] = np.array([s.attractor is not None for s in sentences], dtype=int)
    return out


def _strata(counts: int, n_strata: int, rng: np.random.Generator) -> np.ndarray:
    """``counts`` split over ``n_strata`` as evenly as possible, the remainder at random."""
    out = np.full(n_strata, counts // n_strata)
    out[rng.permutation(n_strata)[: counts % n_strata]] += 1
    return out


def _grammar_sample(
    task: str,
    labels: tuple[str, ...],
    n: int,
    seed: int,
    attractor_rate: float,
    key: Callable[[Sentence], Any],
) -> tuple[list[Sentence], np.ndarray]:
    """Distinct sentences, split by lexical pools and balanced over the label combinations.

    Each split draws from its own :func:`grammar.split_lexicon` pool; within a split
    every combination of label values gets an equal share, and no two sentences share
    ``key`` (their text). Returns the sentences in seeded random order and their splits.
    """
    n_strata = 2 ** len(labels)
    sizes = [round(f * n) for f in SPLIT_FRACTIONS[1:]]
    sizes = [n - sum(sizes), *sizes]
    if min(sizes) < n_strata:
        need = int(np.ceil(n_strata / min(SPLIT_FRACTIONS)))
        raise TaskError(f"n={n} is too small for task '{task}': use n >= {need}")
    rng = np.random.default_rng([seed, 13, zlib.crc32(task.encode())])
    pools = grammar.split_lexicon(seed)
    sentences: list[Sentence] = []
    split: list[str] = []
    for name, size in zip(SPLITS, sizes, strict=True):
        wanted = _strata(size, n_strata, rng)
        seen: set[Any] = set()
        for _ in range(100):
            if not wanted.any():
                break
            for s in grammar.sample_sentences(
                rng, 2 * int(wanted.sum()), pools[name], attractor_rate
            ):
                values = [GRAMMAR_LABELS[k][0](s) for k in labels]
                if None in values:  # a label the sentence lacks (no attractor)
                    continue
                stratum = sum((v or 0) << i for i, v in enumerate(values))
                if wanted[stratum] and key(s) not in seen:
                    seen.add(key(s))
                    wanted[stratum] -= 1
                    sentences.append(s)
                    split.append(name)
        if wanted.any():
            raise TaskError(
                f"n={n} asks for more distinct '{task}' texts than the {name} pool holds; "
                "use a smaller n"
            )
    order = rng.permutation(len(sentences))
    return [sentences[i] for i in order], np.array(split)[order]


def _induction_task(n: int, seed: int) -> Task:
    """Repeated-segment sequences read at a random token, half inside the second copy."""
    if n < 20:
        raise TaskError(f"n={n} is too small for task 'induction': use n >= 20")
    rng = np.random.default_rng([seed, 17])
    token_split = stratified_split(np.zeros(induction.VOCAB, dtype=int), seed, what="token")
    labels = np.arange(n) % 2
    splits = stratified_split(labels, seed, what="in_repeat")
    tokens = np.zeros((n, induction.LENGTH), dtype=np.int64)
    lengths = np.zeros(n, dtype=int)
    positions = np.zeros(n, dtype=int)
    pos = np.arange(induction.LENGTH)
    for i, name in enumerate(splits):
        while True:
            seq, k = induction.repeated_sequences(rng, 1)
            in_repeat = (pos >= induction.LENGTH - k[0]) & (pos < induction.LENGTH - 1)
            first = pos < induction.LENGTH - k[0]
            ok = np.flatnonzero((in_repeat if labels[i] else first) & (token_split[seq[0]] == name))
            if len(ok):
                tokens[i], lengths[i], positions[i] = seq[0], k[0], rng.choice(ok)
                break
    return Task(
        name="induction",
        texts=[induction.words(t) for t in tokens],
        labels={"in_repeat": labels},
        split=splits,
        positions=positions - induction.LENGTH,
        word_types={"in_repeat": tokens[np.arange(n), positions]},
        behavior=RepeatLogProb(mask=induction.repeat_mask(lengths)),
        metadata={
            "description": (
                "Random tokens ending in a segment (length 4..8) and its repeat, for "
                "toy-induction. in_repeat = 1 when the token after the read one is "
                "predictable by copying (the read token is in the second copy)."
            ),
            "read_at": "a random token (positions)",
            "classes": {"in_repeat": ("first_part", "second_copy")},
            "word_type_names": {"in_repeat": tuple(f"t{i}" for i in range(induction.VOCAB))},
            "factors": {"repeat_length": lengths, "tokens": tokens},
            "seed": seed,
        },
    )
