"""Linear probes: the probe engine (:mod:`.linear`), control baselines (:mod:`.controls`),
the probing protocol over every slice of a cube and its statistics (:mod:`.sweep`), and
synthetic cubes with labels planted at known layers (:mod:`.synthetic`).

>>> from mechwidgets.probes.synthetic import planted_cube
>>> from mechwidgets.probes.sweep import Protocol, aggregate, sweep, tidy_table
>>> protocol = Protocol(seeds=(0, 1))
>>> raw = sweep(planted_cube({"number": {2: 3.0}}), ["number"], protocol)
>>> tidy_table(aggregate(raw, protocol))
"""
