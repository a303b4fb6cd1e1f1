"""How long ``import mechwidgets`` and ``%load_ext mechwidgets`` take, against ``import torch``,
and how long ``mechinterp run`` takes to refuse a config with a bad action parameter.

Each measurement runs in a fresh interpreter under ``python -X importtime`` and reads the
cumulative microseconds of the top-level import; the median of ``--repeat`` runs is
reported (the machine may be shared). ``%load_ext`` is timed as the wall time of the
magic call in a fresh IPython shell. ``mechinterp run bad.yaml`` (a misspelt parameter,
``permutatoins: 100``, and an out-of-range one, ``level: 1.5``) is timed as the whole
process, wall and CPU seconds (CPU is what a loaded machine does not inflate). Asserts that
none of torch, nnsight, transformers or altair is in ``sys.modules`` afterwards, that the
bad configs fail with the one-line error, and that each takes under the 1 s target (the
bad configs in CPU time).

    python bench/import_time.py              # 5 runs each
    python bench/import_time.py --repeat 9
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "nnsight", "transformers", "altair")
TARGET_S = 1.0
LOAD_EXT = f"""
import json, sys, time
from IPython.testing.globalipapp import start_ipython
ip = start_ipython()
start = time.perf_counter()
ip.run_line_magic("load_ext", "mechwidgets")
took = time.perf_counter() - start
assert "mechinterp" in ip.magics_manager.magics["line"], "the magic was not registered"
print(json.dumps({{"s": took, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def import_seconds(module: str) -> tuple[float, list[str]]:
    """Cumulative import time of ``module`` in a fresh interpreter, and the heavy modules
    loaded with it."""
    code = f"import {module}, sys; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    line = re.search(rf"\|\s*(\d+)\s*\|\s*{re.escape(module)}\s*$", out.stderr, re.M)
    assert line, f"no importtime line for {module}"
    return int(line.group(1)) / 1e6, eval(out.stdout.strip())  # noqa: S307 (our own print)


def load_ext_seconds() -> tuple[float, list[str]]:
    """Wall time of ``%load_ext mechwidgets`` in a fresh IPython shell, and heavy modules."""
    out = subprocess.run(
        [sys.executable, "-c", LOAD_EXT], capture_output=True, text=True, check=True
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return float(found["s"]), list(found["heavy"])


#: a bad config for ``mechinterp run``: (name, its action.params, the start of the error)
BAD_CONFIGS = (
    ("misspelt", "permutatoins: 100", "unknown parameter 'permutatoins' for detect"),
    ("out of range", "level: 1.5", "bad value 1.5 for 'detect' parameter 'level'"),
)
BAD_RUN = f"""
import contextlib, io, json, sys
from mechwidgets.cli import main
err = io.StringIO()
with contextlib.redirect_stderr(err):
    status = main(["run", sys.argv[1]])
print(json.dumps({{"status": status, "err": err.getvalue(),
                  "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def bad_config_seconds(params: str, expected: str, folder: Path) -> tuple[float, float, list[str]]:
    """Wall and CPU seconds of a fresh ``mechinterp run`` of a detect config holding the
    action parameters ``params``, and the heavy modules it loaded; checks the one-line error."""
    config = folder / "bad.yaml"
    config.write_text(
        f"action: {{name: detect, params: {{{params}}}}}\nmodel: toy-grammar\n"
        "task: subject_number\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", BAD_RUN, str(config)], capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    lines = found["err"].splitlines()
    assert found["status"] == 2 and len(lines) == 1, found
    assert lines[0].startswith(f"mechinterp: error: {expected}"), lines[0]
    return wall, cpu, list(found["heavy"])


def main() -> int:
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 5
    rows = {
        "import torch": lambda: import_seconds("torch"),
        "import mechwidgets": lambda: import_seconds("mechwidgets"),
        "%load_ext mechwidgets": load_ext_seconds,
    }
    medians = {}
    for name, measure in rows.items():
        runs = [measure() for _ in range(repeat)]
        medians[name] = statistics.median(s for s, _ in runs)
        heavy = sorted({m for _, loaded in runs for m in loaded})
        ratio = medians[name] / TARGET_S
        print(
            f"{name:24s} median {medians[name]:6.3f} s over {repeat} runs "
            f"({ratio:5.2f}x the {TARGET_S:.0f} s target); heavy modules loaded: {heavy or 'none'}"
        )
        if name != "import torch":
            assert not heavy, f"{name} loaded {heavy}"
    print(
        f"import mechwidgets takes {medians['import mechwidgets'] / medians['import torch']:.3f}"
        " of import torch"
    )
    with tempfile.TemporaryDirectory() as folder:
        for name, params, expected in BAD_CONFIGS:
            runs = [bad_config_seconds(params, expected, Path(folder)) for _ in range(repeat)]
            wall = statistics.median(w for w, _, _ in runs)
            cpu = statistics.median(c for _, c, _ in runs)
            heavy = sorted({m for _, _, loaded in runs for m in loaded})
            print(
                f"mechinterp run bad.yaml ({name}, {params}): median {wall:6.3f} s wall, "
                f"{cpu:6.3f} s CPU over {repeat} runs ({cpu / TARGET_S:5.2f}x the "
                f"{TARGET_S:.0f} s target, CPU); heavy modules loaded: {heavy or 'none'}"
            )
            assert not heavy, f"a bad config ({name}) loaded {heavy}"
            medians[f"bad config ({name}), CPU"] = cpu
    print(f"load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for name, seconds in medians.items():
        if name != "import torch":
            assert seconds < TARGET_S, f"{name} took {seconds:.2f} s"
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
