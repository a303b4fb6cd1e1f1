"""Prompts tokenized for intervening: right-padded, each with its own tokens and read token.

Every forward pass of the engine (:mod:`~mechwidgets.intervene.edits`) runs
:class:`Prompts`; a metric is bound to them (:func:`~mechwidgets.intervene.scoring.bind`)
because the words it scores and the tokens it reads are per prompt.

>>> prompts = Prompts.build(model, ["the dog near the cars"], positions=[-1])
>>> prompts.read, prompts.width
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from mechwidgets.core.errors import TaskError
from mechwidgets.data.positions import Position, resolve_positions

if TYPE_CHECKING:
    from mechwidgets.models.loading import Model


@dataclass(frozen=True)
class Prompts:
    """Texts tokenized for intervening (right-padded), and the token each is read at.

    Parameters
    ----------
    texts : the prompts.
    inputs : ``input_ids``, ``attention_mask``, ``position_ids`` from ``model.tokenize``.
    start : (n,) padded index of each text's first own token (after special tokens).
    length : (n,) own tokens per text.
    read : (n,) padded index of the read token (whose next-token prediction is scored),
        resolved by :func:`mechwidgets.data.positions.resolve_positions` like extraction.
    samples : (n,) index of each prompt in its source (a task's samples), for metrics
        that hold one word or mask row per sample.
    n_source : number of samples in the source.
    """

    texts: tuple[str, ...]
    inputs: dict[str, torch.Tensor]
    start: torch.Tensor
    length: torch.Tensor
    read: torch.Tensor
    samples: np.ndarray
    n_source: int

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def width(self) -> int:
        """Padded sequence length."""
        return int(self.inputs["input_ids"].shape[1])

    @classmethod
    def build(
        cls,
        model: Model,
        texts: Sequence[str],
        positions: Sequence[Position] | np.ndarray | None = None,
        samples: Sequence[int] | np.ndarray | None = None,
        n_source: int | None = None,
    ) -> Prompts:
        """Tokenize ``texts`` for ``model`` and locate each text's own tokens and read token.

        Parameters
        ----------
        positions : the read token per text, as extraction reads it
            (:mod:`mechwidgets.data.positions`: an int over the tokens as the tokenizer
            gives them, special tokens included, negative from the end; a marker such as
            ``"[MASK]"``; or a character span); a task's ``positions``. Default the last
            token.
        samples : index of each text in its source; default ``0..n-1``.
        n_source : size of the source; default ``len(texts)``.
        """
        texts = tuple(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TaskError("prompts must be a non-empty list of strings")
        inputs = model.tokenize(list(texts), padding_side="right")
        tok = model.tokenizer
        full = tok(list(texts))["input_ids"]
        own = tok(list(texts), add_special_tokens=False)["input_ids"]
        start = np.array([_offset(f, o, t) for f, o, t in zip(full, own, texts, strict=True)])
        length = np.array([len(o) for o in own])
        if (length == 0).any():
            i = int(np.flatnonzero(length == 0)[0])
            raise TaskError(f"prompt {i} ({texts[i]!r}) has no tokens; drop it")
        read = resolve_positions(tok, texts, positions).index  # right-padded: same index
        samples = np.arange(len(texts)) if samples is None else np.asarray(samples, int)
        device = inputs["input_ids"].device
        return cls(
            texts=texts,
            inputs=inputs,
            start=torch.as_tensor(start, device=device),
            length=torch.as_tensor(length, device=device),
            read=torch.as_tensor(read, device=device),
            samples=samples,
            n_source=len(texts) if n_source is None else int(n_source),
        )


def _offset(full: list[int], own: list[int], text: str) -> int:
    """Where a text's own tokens start among its tokens with specials (e.g. after <bos>)."""
    for k in range(len(full) - len(own) + 1):
        if full[k : k + len(own)] == own:
            return k
    raise TaskError(
        f"cannot find the tokens of {text!r} among its tokens with special tokens; "
        "use a tokenizer that only adds special tokens around the text"
    )
