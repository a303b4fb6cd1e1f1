"""Statistics over probe results: scores, bootstrap intervals, permutation p-values and
multiple-testing corrections (:mod:`.statistics`), layer-to-layer similarity (:mod:`.geometry`:
CKA) and how strongly each neuron loads on each feature (:mod:`.neurons`).

>>> import numpy as np
>>> from mechwidgets.analysis.statistics import adjust_pvalues
>>> adjust_pvalues(np.array([0.001, 0.02, 0.4]), "holm")
"""
