"""The registered actions: the five research questions (:mod:`.detect`, :mod:`.compare`,
:mod:`.collapse`, :mod:`.polysemantic`, :mod:`.localize`), patching and attribution
patching (:mod:`.patching`) and recovery (:mod:`.recovery`). Each is registered by name,
with its typed parameters, in :mod:`mechwidgets.core.registry`, which imports a module
here only when its action first runs.

>>> import mechwidgets as mw
>>> res = mw.detect(cube, label="subject_number")   # each action is mw.<name> too
>>> res.verdict(), res.table, res.chart()
"""
