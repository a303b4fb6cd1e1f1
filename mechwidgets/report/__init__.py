"""What a run leaves behind: the bundle folder (:mod:`.bundle`: ``artifacts.json`` with the
RunSpec and hashes, metrics, predictions, charts), its offline ``report.html``
(:mod:`.html`) and compact text tables (:mod:`.text`).

>>> from mechwidgets.report.bundle import read_artifacts, write_bundle
>>> write_bundle(result, "runs/demo")
>>> read_artifacts("runs/demo")["spec"]["action"]["name"]
"""
