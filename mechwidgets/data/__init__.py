"""Tasks: the built-in ones by name and clean/corrupt prompt pairs (:mod:`.catalog`),
:class:`~mechwidgets.data.tasks.Task` (texts, labels, splits and the token to read), the toy
grammar (:mod:`.grammar`) and induction sequences (:mod:`.induction`), read positions
(:mod:`.positions`) and stratified splits (:mod:`.splits`).

>>> from mechwidgets.data.catalog import get_task, get_task_pairs
>>> task = get_task("subject_number", n=2000, seed=0)
>>> pairs = get_task_pairs("subject_number", n=200)
"""
