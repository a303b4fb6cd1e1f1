"""What the rest stands on, importing nothing heavy: the RunSpec and its checks
(:mod:`.specs`), the one component vocabulary and its selectors (:mod:`.components`), every
action's typed parameters (:mod:`.params`) and their registration (:mod:`.registry`),
one-line errors (:mod:`.errors`), the memory budget (:mod:`.budget`) and file locks
(:mod:`.locks`).

>>> from mechwidgets.core.components import ModelShape, parse_selector
>>> parse_selector("head:3.2").expand(ModelShape(n_layers=6, n_heads=8, d_mlp=2048))
"""
