"""Time to first display: a fresh IPython, ``%load_ext mechwidgets``, ``%mechinterp detect``
on the toy model with its cube already cached, then the result's rich display.

Each run is a fresh interpreter (a new kernel) with a private cache folder that a warm-up
run filled, so the extraction is a cache hit and no forward pass runs: the cube is found
from the toy model's card (``models/``), so torch and transformers are not imported, and
the chart's fallback PNG is read from ``charts/``; ``--draw`` removes ``charts/`` before
each run, so the PNG is drawn by vl-convert as on a chart's first display. Modules load
from bytecode compiled by the warm-up run into a private folder (``PYTHONPYCACHEPREFIX``),
as in any installed package, even where ``PYTHONDONTWRITEBYTECODE`` is set (it is on the
development machine, where every import of a mechwidgets module otherwise compiles it:
0.2-0.3 s of CPU); ``--no-bytecode`` keeps the environment as it is. Times are CPU
seconds of the process (user + system, ``resource.getrusage``: on a shared machine wall
time is mostly waiting) and wall seconds, per stage, from just before ``%load_ext`` to the
end of the display; starting the interpreter and IPython is not counted. The display is
what Jupyter asks of the result (``_ipython_display_``: verdict, chart widget with its PNG
fallback, tables), through IPython's display formatter. Target: under 3 s CPU.

    python bench/first_display.py --runs 3
    python bench/first_display.py --runs 3 --importtime   # also the slowest imports
    python bench/first_display.py --runs 3 --draw         # the chart's PNG drawn each run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TARGET_S = 3.0
CHILD = """
import json, resource, sys, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
from IPython.testing.globalipapp import start_ipython
ip = start_ipython()
marks = [(cpu(), time.perf_counter())]
ip.run_line_magic("load_ext", "mechwidgets")
marks.append((cpu(), time.perf_counter()))
res = ip.run_line_magic("mechinterp", "detect")
marks.append((cpu(), time.perf_counter()))
ip.display_formatter.format(res)
marks.append((cpu(), time.perf_counter()))
stages = ["load_ext", "detect", "display"]
out = {s: [c1 - c0, w1 - w0] for s, (c0, w0), (c1, w1) in zip(stages, marks, marks[1:])}
print(json.dumps(out))
"""


def run_once(
    cache: str, importtime: bool, draw: bool = False, bytecode: bool = True
) -> tuple[dict[str, list[float]], str]:
    """One fresh process: stage -> [CPU s, wall s], and its ``-X importtime`` log; with
    ``draw``, the cached chart images are removed first; with ``bytecode``, modules load
    from (and are compiled into) ``<cache>/pycache``."""
    if draw:
        shutil.rmtree(Path(cache) / "charts", ignore_errors=True)
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", CHILD]
    env = {**os.environ, "MECHWIDGETS_CACHE": cache}
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(Path(cache) / "pycache")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def slowest_imports(log: str, top: int = 15) -> list[tuple[float, str]]:
    """The top-level imports (as ``-X importtime`` nests them) with the largest cumulative
    time, in seconds (wall time, as the interpreter reports it)."""
    rows = []
    for line in log.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        if not name.startswith("   "):  # not nested under another import
            rows.append((int(cumulative) / 1e6, name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--importtime", action="store_true")
    parser.add_argument("--draw", action="store_true", help="draw the chart's PNG each run")
    parser.add_argument(
        "--no-bytecode", action="store_true", help="compile modules as the environment says"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        bytecode = not args.no_bytecode
        run_once(cache, False, bytecode=bytecode)  # warm-up: the cube, card, PNG, bytecode
        runs = [run_once(cache, args.importtime, args.draw, bytecode) for _ in range(args.runs)]
    print(
        f"{args.runs} fresh processes, load {os.getloadavg()[0]:.1f}, "
        f"{'bytecode cached' if bytecode else 'as the environment compiles'}"
        f"{', PNG drawn' if args.draw else ''}; CPU s (wall s):"
    )
    totals = []
    for stage in ("load_ext", "detect", "display"):
        cpu = [r[stage][0] for r, _ in runs]
        wall = [r[stage][1] for r, _ in runs]
        print(
            f"  {stage:9s} {statistics.median(cpu):6.2f} ({statistics.median(wall):6.2f})  "
            f"per run {', '.join(f'{c:.2f}' for c in cpu)}"
        )
    totals = [sum(r[s][0] for s in r) for r, _ in runs]
    total = statistics.median(totals)
    print(
        f"  first display, CPU: {total:.2f} s (per run {', '.join(f'{t:.2f}' for t in totals)})"
        f"   target < {TARGET_S} s   {'PASS' if total < TARGET_S else 'FAIL'}"
    )
    if args.importtime:
        print("slowest top-level imports in the last run (wall s, cumulative):")
        for seconds, name in slowest_imports(runs[-1][1]):
            print(f"  {seconds:6.2f}  {name}")


if __name__ == "__main__":
    main()
