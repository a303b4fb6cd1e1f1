"""Count how bad input ends, over the case table of ``tests/test_bad_input.py``.

Each case (a family of bad input through Python, the ``mechinterp`` CLI or the
``%mechinterp`` magic) ends in a one-line error, a traceback (an exception that is not a
MechError, or the CLI's "internal error") or silence (no error at all). Prints the counts
per family and entry point, then every case that is not a one-line error with advice.

    python bench/bad_inputs.py                  # all cases
    python bench/bad_inputs.py -v               # also every one-line message
    python bench/bad_inputs.py --skip memory    # leave a family out (e.g. on old code,
                                                # where it exhausts the machine's memory)
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an unknown model id fails at once, offline

ROOT = Path(__file__).resolve().parents[1]


def _table() -> object:
    spec = importlib.util.spec_from_file_location("bad_input", ROOT / "tests/test_bad_input.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["bad_input"] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def main() -> int:
    verbose = "-v" in sys.argv
    skip = set(sys.argv[sys.argv.index("--skip") + 1 :: 2]) if "--skip" in sys.argv else set()
    table = _table()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MECHWIDGETS_CACHE"] = str(Path(tmp) / "cache")
        ctx = table.Context(Path(tmp)).warm()
        rows = []
        for case in (c for c in table.CASES if c.family not in skip):
            got = table.outcome(case, ctx)
            advice = bool(table.ADVICE.search(got.message))
            kind = got.kind if got.kind != "one-line" or advice else "one-line, no advice"
            rows.append((case, got, kind))
            if verbose or kind != "one-line":
                message = " ".join(got.message.split())[:300]
                print(f"{kind:>20}  {case.id}  ({got.seconds:.2f} s): {message}", flush=True)
    total = Counter(kind for _, _, kind in rows)
    print(f"\n{len(rows)} cases: " + ", ".join(f"{n} {k}" for k, n in total.most_common()))
    by = Counter((case.family, case.channel, kind) for case, _, kind in rows)
    print(f"\n{'family':<12} {'entry':<7} {'one-line':>8} {'traceback':>9} {'silent':>6}")
    for family in sorted({c.family for c, _, _ in rows}):
        for channel in ("python", "cli", "magic"):
            counts = [by[(family, channel, k)] for k in ("one-line", "traceback", "silent")]
            if sum(counts) or by[(family, channel, "one-line, no advice")]:
                print(f"{family:<12} {channel:<7} {counts[0]:>8} {counts[1]:>9} {counts[2]:>6}")
    slow = [(c.id, g.seconds) for c, g, _ in rows if c.fast and g.seconds >= table.FAST_S]
    print(f"\nparse-level cases over {table.FAST_S} s: {slow or 'none'}")
    return 0 if total["one-line"] == len(rows) and not slow else 1


if __name__ == "__main__":
    sys.exit(main())
