"""Activation extraction: texts -> a cached, lazily opened activation cube.

>>> from mechwidgets.extract import extract
>>> cube = extract(model, task, layers="all", components=["resid", "attn", "mlp"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mechwidgets.extract.extractor import extract as extract


def __getattr__(name: str) -> Any:
    # imported on first use: a dask worker that only reads cubes (mechwidgets.cluster)
    # then never loads torch (about 250 MB of its memory)
    if name == "extract":
        from mechwidgets.extract.extractor import extract

        return extract
    raise AttributeError(f"module 'mechwidgets.extract' has no attribute {name!r}")
