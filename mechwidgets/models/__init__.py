"""Models: :func:`~mechwidgets.models.loading.load_model` and
:class:`~mechwidgets.models.loading.Model` (:mod:`.loading`), where each architecture family
keeps its components (:mod:`.adapters`), what a checkpoint's first load records so a cached
cube is found without building the model (:mod:`.card`), models run remotely
(:mod:`.remote`) and the embedded zoo of small trained models (:mod:`.zoo`).

>>> from mechwidgets.models.loading import load_model
>>> model = load_model("toy-grammar")
>>> model.shape.n_layers, model.d_model
"""
