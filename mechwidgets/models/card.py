"""What loading a named checkpoint gives, recorded so a cached cube is found without it.

A cube's cache key holds the model's identity (its name, revision and a hash of its
weights as loaded), its tokenizer's hash and its dtype; the cube's layout needs its
sizes. Computing those means building the model: importing torch and transformers and
reading the weights, 3-4 s of CPU for the embedded toy model, for a call whose cube is
already cached. So :func:`mechwidgets.load_model` records them, the first time a zoo
model or a local checkpoint folder is loaded unedited, as a :class:`ModelCard` in the
cache folder (``models/<key>.json``), keyed by what fixes them: the checkpoint's files
(the zoo weights by content, every file of the folder by name, size and modification
time), the revision and dtype asked for, and the versions of mechwidgets, torch and
transformers. :func:`find_card` reads it back without importing torch: a checkpoint
changed since, another dtype or a library upgrade finds no card, and the model is loaded.

The card's identity is the one the loaded model gave, so a key computed from it is
exactly the key a normal extraction computes; the cube found still proves itself as
every cached cube does (:mod:`mechwidgets.extract.cache`). Hugging Face hub ids have no
card: their revision is resolved through the hub's cache, by transformers.

>>> card = find_card("toy-grammar")            # None until the model was loaded once
>>> card.identity, card.tokenizer_hash, card.shape
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from mechwidgets.core.components import ModelShape
from mechwidgets.models import zoo

#: bumped when what a card records, or how the identity is computed, changes
CARD_FORMAT = 1
#: the libraries whose versions decide what a load gives
LIBRARIES = ("torch", "transformers")


@dataclass(frozen=True)
class ModelCard:
    """A named model's cache-key facts, as its load gave them.

    ``identity``, ``tokenizer_hash`` and ``dtype`` enter the cube's cache key exactly as
    :class:`~mechwidgets.models.loading.Model` gives them; ``shape`` and ``d_model`` plan
    the extraction and lay out the cube.
    """

    name: str
    identity: str
    tokenizer_hash: str
    dtype: str
    shape: ModelShape
    d_model: int

    def to_json(self) -> str:
        """The card as one JSON object."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """A card from :meth:`to_json`'s text; ValueError/KeyError/TypeError when malformed."""
        data = json.loads(text)
        return cls(**{**data, "shape": ModelShape(**data["shape"])})


def checkpoint_folder(name: str) -> tuple[Path, bool] | None:
    """The folder a named model loads from offline and whether it is the zoo's; None for
    a Hugging Face id (as :func:`~mechwidgets.models.loading.load_model` resolves names)."""
    folder = zoo.model_dir(name) if name in zoo.list_models() else None
    if folder is not None:
        return folder, True
    path = Path(name).expanduser()
    return (path, False) if path.is_dir() else None


def zoo_revision(folder: Path) -> str:
    """A zoo model's revision: the hash of its weights file's bytes."""
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:16]


def folder_revision(path: Path) -> str:
    """A hash of the folder's file names, sizes and modification times: a folder has no
    commit, and hashing its bytes would read every weight of a large model again."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def source_of(name: str, folder: Path, in_zoo: bool) -> tuple[str, str]:
    """The ``zoo:``/``local:`` source a named checkpoint in ``folder`` loads as, and its
    revision."""
    if in_zoo:
        revision = zoo_revision(folder)
        return f"zoo:{name}@{revision}", revision
    revision = folder_revision(folder)
    return f"local:{folder.resolve()}@{revision}", revision


def card_path(name: str, revision: str | None, dtype: str) -> Path | None:
    """Where the card of ``name`` loaded at ``revision`` in ``dtype`` is kept; None for a
    model that has no card (a hub id)."""
    from mechwidgets import __version__
    from mechwidgets.extract.cache import CARDS, cache_dir, cache_key

    found = checkpoint_folder(name)
    if found is None:
        return None
    folder, in_zoo = found
    source, _ = source_of(name, folder, in_zoo)
    versions = {lib: _version(lib) for lib in LIBRARIES}
    key = cache_key(
        {
            "source": source,
            "files": folder_revision(folder),  # a zoo's tokenizer files too
            "revision": revision,
            "dtype": dtype,
            "mechwidgets": __version__,
            "libraries": versions,
            "format": CARD_FORMAT,
        }
    )
    return cache_dir() / CARDS / f"{key}.json"


def find_card(name: str, revision: str | None = None, dtype: str = "float32") -> ModelCard | None:
    """The card a load of ``name`` recorded, or None (never loaded so, changed since, a
    hub id, or an unreadable record). Reads files only: torch is not imported."""
    path = card_path(name, revision, dtype)
    if path is None:
        return None
    try:
        return ModelCard.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_card(path: Path, card: ModelCard) -> None:
    """Write ``card`` at ``path`` (under a temporary name renamed into place); a read-only
    cache folder keeps none."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(card.to_json())
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)


def _version(library: str) -> str:
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return ""
