"""The notebook entry point: ``%load_ext mechwidgets`` registers the ``%mechinterp`` and
``%%mechinterp`` magics (:mod:`.magics`), which run an action from a cell.

>>> %load_ext mechwidgets
>>> %mechinterp detect --model toy-grammar --task subject_number --layers all -o res
"""
