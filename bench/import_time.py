"""How long ``import mechwidgets`` and ``%load_ext mechwidgets`` take, against ``import torch``.

Each measurement runs in a fresh interpreter under ``python -X importtime`` and reads the
cumulative microseconds of the top-level import; the median of ``--repeat`` runs is
reported (the machine may be shared). ``%load_ext`` is timed as the wall time of the
magic call in a fresh IPython shell. Asserts that none of torch, nnsight, transformers or
altair is in ``sys.modules`` afterwards, and that both take under the 1 s target.

    python bench/import_time.py              # 5 runs each
    python bench/import_time.py --repeat 9
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys

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
    for name in ("import mechwidgets", "%load_ext mechwidgets"):
        assert medians[name] < TARGET_S, f"{name} took {medians[name]:.2f} s"
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
