"""Which token of a text to read: the one position convention of the toolkit.

Every action that reads one token per text (extract, every behaviour metric, patch,
attribution_patch, localize, recovery) resolves its position here, so a position means
the same token everywhere. A position is one of:

- **an int**: an index into the text's tokens *as the model's tokenizer gives them,
  special tokens included* (``[CLS]`` is 0 for BERT, ``<bos>`` is 0 for a tokenizer that
  adds one). A negative int counts from the end of the same tokens, padding excluded and
  trailing special tokens included (``-1`` is BERT's ``[SEP]``, a decoder's last word):
  ``tokens[k]`` in Python.
- **a marker string**: the token equal to it, by its token string (``"[MASK]"``,
  ``"[CLS]"``) or by the text it covers, whitespace stripped (``"is"`` matches GPT-2's
  ``"Ġis"`` and Llama's ``"▁is"``). It must occur exactly once in the text; say which
  occurrence otherwise: ``"is@first"``, ``"is@last"`` or ``"is@k"`` (the k-th, from 0;
  negative from the end). A marker that is absent, or split over several tokens, is a
  one-line error naming the text.
- **a character span** ``(start, end)``: the last token overlapping characters
  ``text[start:end]`` (for a word split into pieces, its last piece: the first token that
  has seen all of it in a decoder). Needs a fast tokenizer (offset mappings).

>>> reads = resolve_positions(model.tokenizer, ["the [MASK] is red"], ["[MASK]"])
>>> reads.index, reads.token
(array([2]), array(['[MASK]'], dtype=object))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mechwidgets.core.errors import TaskError

#: a position as a user writes it: a token index, a marker string or a (start, end) span
Position = int | str | tuple[int, int]
#: occurrence words a marker may end in after ``@``
OCCURRENCE = {"first": 0, "last": -1}
#: texts tokenized per call (a fast tokenizer's encodings of a whole data set take far
#: more memory than the batches an extraction streams)
CHUNK = 512


def as_position(value: Any, where: str = "position") -> Position:
    """One position in canonical form (int, str or a tuple of two ints); TaskError if bad."""
    if isinstance(value, (bool, np.bool_)):
        raise TaskError(f"{where} is {value!r}: give an int, a marker string or a (start, end)")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)  # an int column with missing values reads as floats in pandas
    if isinstance(value, str):
        if not value.strip():
            raise TaskError(f"{where} is an empty marker; give the token to read, e.g. '[MASK]'")
        return value
    if isinstance(value, (tuple, list, np.ndarray)) and len(value) == 2:
        start, end = (as_position(v, where) for v in value)
        if isinstance(start, int) and isinstance(end, int):
            if not 0 <= start < end:
                raise TaskError(
                    f"{where} is the span {value!r}: use (start, end), 0 <= start < end"
                )
            return (start, end)
    raise TaskError(
        f"{where} is {value!r}: give a token index (int), a marker string such as '[MASK]' "
        "or a character span (start, end)"
    )


def as_positions(values: Any, n: int, what: str = "positions") -> np.ndarray:
    """``n`` positions as a 1-d array: int64 when all are ints, else object (markers, spans).

    A list of ``(start, end)`` spans stays one span per text (``np.asarray`` would make it
    an (n, 2) table).
    """
    scalar = isinstance(values, (str, tuple, dict)) or not hasattr(values, "__iter__")
    if scalar or (isinstance(values, np.ndarray) and values.ndim != 1):
        raise TaskError(f"{what} must be a list with one position per text ({n}), got {values!r}")
    items = [as_position(v, f"{what}[{i}]") for i, v in enumerate(values)]
    if len(items) != n:
        raise TaskError(f"{what} has {len(items)} values for {n} texts; give one per text")
    if all(isinstance(p, int) for p in items):
        return np.asarray(items, dtype=np.int64)
    out = np.empty(n, dtype=object)
    for i, item in enumerate(items):  # one by one: a slice assignment would unpack spans
        out[i] = item
    return out


def position_key(positions: np.ndarray) -> list[Any]:
    """JSON-serialisable positions, for cache keys and data fingerprints."""
    return [list(p) if isinstance(p, tuple) else p for p in positions.tolist()]


@dataclass(frozen=True)
class ReadTokens:
    """The token each text is read at.

    Parameters
    ----------
    index : (n,) index into each text's tokens, special tokens included, from 0.
    token : (n,) the token string read (as ``convert_ids_to_tokens`` writes it).
    length : (n,) tokens per text, special tokens included.
    """

    index: np.ndarray
    token: np.ndarray
    length: np.ndarray


def encode(
    tokenizer: Any, texts: Sequence[str], positions: Sequence[Any] | np.ndarray | None = None
) -> Any:
    """The tokenizer's encoding of ``texts`` (unpadded, special tokens included) as
    :func:`resolve_positions` reads it for ``positions``: with offset mappings when a
    position is a marker or a span and the tokenizer is fast.

    One pass for a call that needs the tokens several times: pass it back as
    ``encoded`` here, its ``input_ids`` to ``mechwidgets.extract.unseen.visible`` and to
    ``Model.tokenize`` (which pads them). Holds every text's encoding at once: for a
    batch, not a whole data set.
    """
    specs = _specs(positions, len(texts))
    return _encode(tokenizer, list(texts), _needs_offsets(specs))


def resolve_positions(
    tokenizer: Any,
    texts: Sequence[str],
    positions: Sequence[Any] | np.ndarray | None,
    encoded: Any = None,
) -> ReadTokens:
    """Resolve one position per text (see the module docstring) to a token index.

    Parameters
    ----------
    tokenizer : the model's tokenizer; texts are tokenized as the model reads them.
    texts : the texts.
    positions : one position per text; None reads each text's last token (``-1``).
    encoded : ``encode(tokenizer, texts, positions)``, when the caller has it: the texts
        are then not tokenized again.

    Raises
    ------
    TaskError
        One line naming the text: an index out of range, a marker absent, repeated
        without an occurrence, or a span that covers no token.
    """
    n = len(texts)
    specs = _specs(positions, n)
    needs_offsets = _needs_offsets(specs)
    index = np.zeros(n, dtype=np.int64)
    token = np.empty(n, dtype=object)
    length = np.zeros(n, dtype=np.int64)
    step = CHUNK if encoded is None else max(n, 1)
    for first in range(0, n, step):
        chunk = list(texts[first : first + step])
        enc = _encode(tokenizer, chunk, needs_offsets) if encoded is None else encoded
        for j, ids in enumerate(enc["input_ids"]):
            i = first + j
            offsets = enc["offset_mapping"][j] if "offset_mapping" in enc else None
            length[i] = len(ids)
            index[i] = _resolve(specs[i], texts[i], i, ids, offsets, tokenizer)
            token[i] = str(tokenizer.convert_ids_to_tokens(ids[index[i]]))
    return ReadTokens(index, token, length)


def _specs(positions: Sequence[Any] | np.ndarray | None, n: int) -> list[Any]:
    """The positions as a list (the last token of each text when None)."""
    return as_positions(np.full(n, -1) if positions is None else positions, n).tolist()


def _needs_offsets(specs: list[Any]) -> bool:
    """Whether any position is a marker or a span (read through offset mappings)."""
    return any(not isinstance(p, int) for p in specs)


def _encode(tokenizer: Any, texts: list[str], offsets: bool) -> Any:
    if offsets and getattr(tokenizer, "is_fast", False):
        return tokenizer(texts, return_offsets_mapping=True)
    return tokenizer(texts)


def _resolve(
    spec: Position,
    text: str,
    i: int,
    ids: list[int],
    offsets: list[tuple[int, int]] | None,
    tokenizer: Any,
) -> int:
    """The token index of one position in one text."""
    n = len(ids)
    if n == 0:
        raise TaskError(f"text {i} ({_short(text)}) has no tokens; drop it")
    if isinstance(spec, int):
        if not -n <= spec < n:
            raise TaskError(
                f"position {spec} is outside text {i} ({_short(text)}), which has {n} tokens "
                "counting special tokens; negative positions count from the end"
            )
        return spec % n
    if isinstance(spec, str):
        pieces = tokenizer.convert_ids_to_tokens(ids)
        return _marker(spec, text, i, pieces, offsets, tokenizer)
    if offsets is None:
        raise TaskError(
            "character-span positions need a fast tokenizer (offset mappings); load the "
            "model's fast tokenizer or give token indices or markers"
        )
    start, end = spec
    if end > len(text):
        raise TaskError(
            f"span ({start}, {end}) runs past the end of text {i} ({len(text)} characters)"
        )
    hits = [k for k, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
    if not hits:
        raise TaskError(
            f"characters {start}-{end} of text {i} ({text[start:end]!r}) cover no token; "
            "give a span over a word"
        )
    return hits[-1]


def _marker(
    spec: str,
    text: str,
    i: int,
    pieces: list[str],
    offsets: list[tuple[int, int]] | None,
    tokenizer: Any,
) -> int:
    marker, occurrence = _split_occurrence(spec)
    want = marker.strip()
    if offsets is not None:
        covered = [text[s:e].strip() for s, e in offsets]
    else:  # a slow tokenizer: the text a token stands for, from its string
        covered = [tokenizer.convert_tokens_to_string([p]).strip() for p in pieces]
    hits = [k for k, p in enumerate(pieces) if p == marker or covered[k] == want]
    if not hits:
        raise TaskError(
            f"marker {marker!r} is not a token of text {i} ({_short(text)}); its tokens are "
            f"{_listing(pieces)}: give one of them, an index or a (start, end) span"
        )
    if occurrence is None:
        if len(hits) > 1:
            raise TaskError(
                f"marker {marker!r} occurs {len(hits)} times in text {i} ({_short(text)}); "
                f"say which: '{marker}@first', '{marker}@last' or '{marker}@k'"
            )
        return hits[0]
    if not -len(hits) <= occurrence < len(hits):
        raise TaskError(
            f"'{spec}' asks for occurrence {occurrence} but {marker!r} occurs "
            f"{len(hits)} time(s) in text {i} ({_short(text)})"
        )
    return hits[occurrence]


def _split_occurrence(spec: str) -> tuple[str, int | None]:
    """``"is@last"`` -> ``("is", -1)``; a string without a valid ``@`` suffix is all marker."""
    marker, at, tail = spec.rpartition("@")
    if not at or not marker:
        return spec, None
    if tail in OCCURRENCE:
        return marker, OCCURRENCE[tail]
    try:
        return marker, int(tail)
    except ValueError:
        return spec, None


def _listing(pieces: list[str], limit: int = 12) -> str:
    """The first tokens of a text as a list, for error messages."""
    shown = ", ".join(map(repr, pieces[:limit]))
    return f"[{shown}{', ...' if len(pieces) > limit else ''}]"


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
