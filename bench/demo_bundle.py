"""The bundle's share of ``mechinterp demo``: the whole command against its bundle writing.

Each run is a fresh process running ``mechinterp demo --out DIR`` (the CLI's own
``main``), with ``write_bundle`` and its costliest parts timed from inside: the charts'
SVG and PNG (vl-convert) and the inlined Vega script (built once per vl-convert version
and cache folder, then read back). CPU seconds of the process (user + system) and wall
seconds. ``cold``: a fresh cache folder (the cube is extracted, the Vega script built);
``warm``: the same folder again (the cube and the script are reused). Target: the bundle
under 20% of the command.

    python bench/demo_bundle.py --runs 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

TARGET = 0.20
CHILD = """
import contextlib, io, json, resource, sys, tempfile, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
start = (cpu(), time.perf_counter())
import vl_convert
import mechwidgets.report.bundle as bundle
import mechwidgets.report.html as page
spent = {}
def timed(owner, name):
    fn = getattr(owner, name)
    def wrapper(*args, **kwargs):
        c, w = cpu(), time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            was = spent.get(name, [0.0, 0.0])
            spent[name] = [was[0] + cpu() - c, was[1] + time.perf_counter() - w]
    setattr(owner, name, wrapper)
for owner, name in [(bundle, "write_bundle"), (page, "vega_script"),
                    (vl_convert, "vegalite_to_svg"), (vl_convert, "vegalite_to_png")]:
    timed(owner, name)
from mechwidgets.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    main(["demo", "--out", tempfile.mkdtemp() + "/demo"])
spent["demo"] = [cpu() - start[0], time.perf_counter() - start[1]]
print(json.dumps(spent))
"""


def run_once(cache: str) -> dict[str, list[float]]:
    """One fresh ``mechinterp demo``: name -> [CPU s, wall s]."""
    env = {**os.environ, "MECHWIDGETS_CACHE": cache}
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(kind: str, runs: list[dict[str, list[float]]]) -> None:
    """Median CPU (wall) of the command and its parts, and the bundle's share."""
    parts = ["demo", "write_bundle", "vega_script", "vegalite_to_svg", "vegalite_to_png"]
    cells = []
    for part in parts:
        cpu = statistics.median(r.get(part, [0.0, 0.0])[0] for r in runs)
        wall = statistics.median(r.get(part, [0.0, 0.0])[1] for r in runs)
        cells.append(f"{part} {cpu:.2f} ({wall:.2f})")
    shares = [r["write_bundle"][0] / r["demo"][0] for r in runs]
    share = statistics.median(shares)
    print(f"{kind}: " + ", ".join(cells))
    print(
        f"  bundle share of CPU: {share:.1%} (per run "
        f"{', '.join(f'{s:.1%}' for s in shares)})   target < {TARGET:.0%}   "
        f"{'PASS' if share < TARGET else 'FAIL'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    cold, warm = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(run_once(cache))
            warm.append(run_once(cache))
    print(
        f"mechinterp demo, {args.runs} run(s) each, load {os.getloadavg()[0]:.1f}; CPU s (wall s)"
    )
    report("cold (fresh cache folder)", cold)
    report("warm (cube and Vega script cached)", warm)


if __name__ == "__main__":
    main()
