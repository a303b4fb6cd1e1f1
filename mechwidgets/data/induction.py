"""Random-token sequences with a repeated segment: the data of toy-induction.

A sequence is a random prefix, a segment of random length (4..8) and the same segment
again, 16 tokens in all (the two-layer setting of Olsson et al. 2022). A random length
keeps a layer-0 head from solving the task by position alone. Tokens are written as
words ``t0`` .. ``t31`` so they pass through a word-level tokenizer one to one.

>>> tokens, lengths = repeated_sequences(np.random.default_rng(0), 4)
>>> words(tokens[0]), repeat_mask(lengths)[0]
"""

from __future__ import annotations

import numpy as np

VOCAB = 32
LENGTH = 16
MIN_REPEAT, MAX_REPEAT = 4, 8


def repeated_sequences(
    rng: np.random.Generator, n: int, vocab: int = VOCAB, length: int = LENGTH
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences of random tokens that end with a segment repeated once.

    Returns
    -------
    tokens : int array (n, length) of token ids in ``[0, vocab)``.
    repeat_lengths : int array (n,), the segment length of each sequence.
    """
    tokens = rng.integers(0, vocab, size=(n, length))
    repeat_lengths = rng.integers(MIN_REPEAT, MAX_REPEAT + 1, size=n)
    pos = np.arange(length)[None, :]
    second = pos >= length - repeat_lengths[:, None]
    source = np.where(second, pos - repeat_lengths[:, None], pos)
    return np.take_along_axis(tokens, source, axis=1), repeat_lengths


def repeat_mask(repeat_lengths: np.ndarray, length: int = LENGTH) -> np.ndarray:
    """Bool (n, length): positions whose token induction can predict from the one before.

    These are the tokens of the second copy after its first one (the first token of the
    second copy follows the first copy's end, which predicts nothing).
    """
    pos = np.arange(length)[None, :]
    return pos > length - np.asarray(repeat_lengths)[:, None]


def first_half_mask(repeat_lengths: np.ndarray, length: int = LENGTH) -> np.ndarray:
    """Bool (n, length): targets in the prefix and first copy (position 0 predicts nothing)."""
    pos = np.arange(length)[None, :]
    return (pos >= 1) & (pos < length - np.asarray(repeat_lengths)[:, None])


def words(tokens: np.ndarray) -> str:
    """Token ids as the space-separated words ``t<id>`` of toy-induction's tokenizer."""
    return " ".join(f"t{int(t)}" for t in tokens)
