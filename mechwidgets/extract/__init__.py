"""Activation extraction: texts -> a cached, lazily opened activation cube.

>>> from mechwidgets.extract import extract
>>> cube = extract(model, task, layers="all", components=["resid", "attn", "mlp"])
"""

from mechwidgets.extract.extractor import extract as extract
