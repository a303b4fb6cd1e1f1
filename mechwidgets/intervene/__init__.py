"""The intervention engine: edit activations inside a traced forward pass and score the run.

Read it bottom up: :mod:`.sites` (where a component's activation lives in the model, in
forward order), :mod:`.prompts` (texts tokenized for intervening, with their read
token), :mod:`.metrics` (behaviour metrics as frozen values; ``mw.metrics``) and
:mod:`.scoring` (a metric bound to prompts), :mod:`.sources` (what replaces an
activation: another run's, or a zero, mean or resample ablation), :mod:`.edits` (many
edits batched into few forward passes), then the uses: :mod:`.pairs` (clean/corrupt
prompt pairs), :mod:`.grid` (the patching grid and its statistics), :mod:`.attribution`
(the first-order estimate of every cell) and :mod:`.readouts` (recovery's patched
residual streams). The registered actions that use it (``patch``,
``attribution_patch``, ``recovery``, ``localize``) are in :mod:`mechwidgets.actions`;
nothing here imports them.

>>> from mechwidgets.intervene import edits, sources
>>> source = sources.ablation_source("mean", prompts)
>>> values, _ = edits.run_cells(model, prompts, cells, source, [scorer])
"""
