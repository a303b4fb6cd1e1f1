"""The embedded model zoo: small models the project trains itself and ships.

Each model is a folder beside this file holding an HF-format checkpoint
(``config.json``, ``model.safetensors``, tokenizer files) and a model card
(``card.json`` and ``CARD.md``). ``load_model("toy-grammar")`` resolves here first.

>>> list_models()
['toy-grammar', 'toy-induction']
"""

from __future__ import annotations

from pathlib import Path

ZOO_DIR = Path(__file__).parent


def _folder(name: str) -> str:
    return name.replace("-", "_")


def list_models() -> list[str]:
    """Names of the embedded models shipped in the package."""
    return sorted(
        p.name.replace("_", "-") for p in ZOO_DIR.iterdir() if (p / "config.json").is_file()
    )


def model_dir(name: str) -> Path | None:
    """The folder of embedded model ``name``, or None when it is not in the zoo."""
    path = ZOO_DIR / _folder(name)
    return path if (path / "config.json").is_file() else None
