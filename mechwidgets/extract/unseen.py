"""Texts the model cannot see, found from the tokenizer before any forward pass.

A text that tokenizes to nothing but special tokens (an empty or blank text becomes a
lone ``<bos>``) gives the activations of that special token, whatever the text was; a
word outside the vocabulary becomes ``<unk>``, so on a word-level model "the 🐶 near the
cars" and "the xylophone near the cars" read identically. Probing such texts gives a
verdict about inputs the model never saw. By default they are an error; with
``unseen="exclude"`` they are left out and counted (the cube's ``unseen_excluded``
attribute, which the verdict reports).

>>> keep = visible(model.tokenizer, ["the dog", ""], unseen="exclude")   # [True, False]
>>> visible(model.tokenizer, ["the dog", ""])                            # raises TaskError
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from mechwidgets.core.errors import SpecError, TaskError

Unseen = Literal["error", "exclude"]
UNSEEN = ("error", "exclude")
#: texts tokenized at a time: a fast tokenizer's encodings of a whole data set are large
CHUNK = 512


def visible(
    tokenizer: Any,
    texts: Sequence[str],
    unseen: Unseen = "error",
    input_ids: Sequence[Sequence[int]] | None = None,
) -> np.ndarray | None:
    """Which texts the model can see; None when all of them can.

    Parameters
    ----------
    tokenizer : the model's tokenizer.
    texts : the texts to run.
    unseen : ``"error"`` raises a one-line TaskError naming the first unseen text;
        ``"exclude"`` returns the mask of texts to keep (an error when none is left).
    input_ids : the texts' token ids (unpadded, special tokens included), when the
        caller has them: the texts are then not tokenized again.

    Returns
    -------
    A boolean mask over ``texts``, or None when every text is seen.
    """
    if unseen not in UNSEEN:
        raise SpecError(f"unseen must be 'error' or 'exclude', got {unseen!r}")
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    unk = getattr(tokenizer, "unk_token_id", None)
    empty, unknown = [], []
    for start in range(0, len(texts), CHUNK):
        chunk = (
            tokenizer(list(texts[start : start + CHUNK]))["input_ids"]
            if input_ids is None
            else input_ids[start : start + CHUNK]
        )
        for i, ids in enumerate(chunk):
            if all(t in special for t in ids):
                empty.append(start + i)
            elif unk is not None and unk in ids:
                unknown.append(start + i)
    if not empty and not unknown:
        return None
    keep = np.ones(len(texts), bool)
    keep[empty + unknown] = False
    counts = f"{len(empty) + len(unknown)} of {len(texts)} texts"
    if unseen == "exclude" and keep.any():
        return keep
    if unseen == "exclude":
        raise TaskError(
            f"none of the {len(texts)} texts is visible to the model (empty, blank or "
            "outside its vocabulary); give texts the tokenizer can read"
        )
    first = min(empty + unknown)
    why = (
        "tokenizes to special tokens only (it is empty or blank)"
        if first in empty
        else f"holds {_unknown_words(tokenizer, texts[first])}, outside the vocabulary "
        f"(the tokenizer reads <unk>)"
    )
    raise TaskError(
        f"text {first} ({_short(texts[first])}) {why}, so the model cannot see it ({counts} "
        "are like it); fix or drop them, or pass unseen='exclude' to leave them out, counted"
    )


def _unknown_words(tokenizer: Any, text: str) -> str:
    """The characters of ``text`` the tokenizer read as ``<unk>``, where it can say."""
    try:
        enc = tokenizer(text, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):  # slow tokenizers have no offsets
        return "a word"
    words = [
        repr(text[a:b])
        for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        if t == tokenizer.unk_token_id
    ]
    return ", ".join(words[:3]) or "a word"


def _short(text: str, width: int = 40) -> str:
    return repr(text if len(text) <= width else text[: width - 3] + "...")
