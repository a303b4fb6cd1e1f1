"""The ``mechinterp`` command: one subcommand per registered :class:`Command`.

A subcommand is a name, a help line, a function that adds its arguments and a function
that runs it; :func:`register_command` adds one, so ``run`` and ``demo`` plug in beside
``cache`` without touching :func:`main`. Bad input (any ``MechError``, or a usage
mistake, with a guess for a mistyped option) prints one line, ``mechinterp: error: ...``,
and exits with status 2, never a traceback; a bug prints one ``internal error`` line and
exits with status 1 (``MECHWIDGETS_TRACEBACK=1`` shows its traceback).

.. code-block:: bash

    mechinterp cache list
    mechinterp cache clear
    mechinterp demo
    mechinterp run configs/feature_detection_toy.yaml -o runs/x
    mechinterp run runs/x/artifacts.json

>>> main(["run", "configs/feature_detection_toy.yaml", "-o", "runs/x"])  # the exit status
0
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechwidgets.core.errors import MechError


@dataclass(frozen=True)
class Command:
    """One ``mechinterp`` subcommand.

    Parameters
    ----------
    name : what the user types after ``mechinterp``.
    help : one line for ``mechinterp --help``.
    configure : adds the subcommand's arguments to its parser.
    run : does the work; returns the exit status (None means 0).
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


COMMANDS: dict[str, Command] = {}


def register_command(command: Command) -> Command:
    """Make ``command`` available as ``mechinterp <command.name>``."""
    COMMANDS[command.name] = command
    return command


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, with a guess for a mistyped option."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {usage_message(self, message)}\n")


def usage_message(parser: argparse.ArgumentParser, message: str) -> str:
    """argparse's ``message`` with the closest known option for an unrecognized one.

    argparse reports unknown options from the top parser, which does not know its
    subcommands' options, so the guess looks through every subparser too.
    """
    unknown = re.findall(r"(--?[\w-]+)", message.partition("unrecognized arguments:")[2])
    if unknown:
        known = _option_strings(parser)
        close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.6)
        if close:
            message += f" (did you mean {close[0]}?)"
    return f"{message} (see {parser.prog} --help)"


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for action in parser._actions:  # argparse keeps no public list of its options
        out += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _option_strings(sub)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The parser for every registered subcommand."""
    parser = _Parser(
        prog="mechinterp", description="Mechanistic interpretability from the command line."
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    for command in COMMANDS.values():
        command.configure(sub.add_parser(command.name, help=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mechinterp``; returns the exit status.

    Bad input (a ``MechError``) prints ``mechinterp: error: ...`` and returns 2. Anything
    else is a bug: one line ``mechinterp: internal error: ...`` and status 1, with the
    traceback only when ``MECHWIDGETS_TRACEBACK=1`` is set, to paste into a bug report.
    """
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args) or 0
    except MechError as exc:
        print(f"mechinterp: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("mechinterp: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("MECHWIDGETS_TRACEBACK") == "1":
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(
            f"mechinterp: internal error: {type(exc).__name__}: {first}; this is a bug: "
            "set MECHWIDGETS_TRACEBACK=1 for the traceback and report it",
            file=sys.stderr,
        )
        return 1


def _configure_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["list", "clear"],
        help="list cached cubes, quarantined cubes and temporary files (with their age), "
        "or delete them all except those of extractions still running",
    )


def _run_cache(args: argparse.Namespace) -> int:
    import pandas as pd

    from mechwidgets.extract.cache import cache_dir, clear_cache, list_cache

    if args.action == "clear":
        cleared = clear_cache()
        running = (
            f"; left {cleared.in_progress} file(s) of extractions in progress"
            if cleared.in_progress
            else ""
        )
        print(f"removed {cleared.removed} file(s) from {cache_dir()}{running}")
        return 0
    entries = list_cache()
    if not entries:
        print(f"no cached cubes in {cache_dir()}")
        return 0
    table = pd.DataFrame(
        [
            (e.key, e.status, e.model, e.shape, _size(e.size), _age(e.age), str(e.path))
            for e in entries
        ],
        columns=["key", "status", "model", "shape", "size", "age", "path"],
    )
    print(table.to_string(index=False, justify="left"))
    return 0


def _age(seconds: float) -> str:
    for unit, scale in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def _size(n: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


register_command(
    Command("cache", "list or clear cached activation cubes", _configure_cache, _run_cache)
)


def _configure_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a YAML RunSpec, or a bundle's artifacts.json to re-run")
    parser.add_argument(
        "-o", "--out", help="bundle folder (default: the config's output_dir; BUNDLE-rerun)"
    )


def _run_run(args: argparse.Namespace) -> int:
    from mechwidgets.core.specs import RunSpec

    if Path(args.config).suffix in (".yaml", ".yml"):  # checked before the runner loads torch
        spec = RunSpec.from_file(args.config)
        from mechwidgets.runner import run_spec

        _print_result(run_spec(spec, output_dir=args.out))
        return 0
    from mechwidgets.runner import (
        bundle_folder,
        is_bundle_source,
        metrics_difference,
        read_metrics,
        run_bundle,
        run_spec,
    )

    if not is_bundle_source(args.config):  # a JSON config
        _print_result(run_spec(args.config, output_dir=args.out))
        return 0
    read_metrics(args.config)  # the numbers to compare with, checked before the re-run
    result = run_bundle(args.config, output_dir=args.out)
    _print_result(result)
    gap = metrics_difference(result, args.config)
    original = bundle_folder(args.config)
    print(
        f"reproduced: same numbers as {original}"
        if gap == 0
        else f"NOT reproduced: largest difference from {original} is {gap:.3g}"
    )
    return 0 if gap == 0 else 1


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="bundle folder (default: runs/demo)")


def _run_demo(args: argparse.Namespace) -> int:
    from mechwidgets.runner import DEMO_SPEC, run_spec

    spec = DEMO_SPEC
    print(f"detect '{spec['action']['params']['label']}' in {spec['extraction']['model_name']}:")
    print(
        "read at the verb, tokens after the subject; embedding + every layer x "
        f"resid/attn/mlp, controls: {', '.join(spec['controls'])}"
    )
    _print_result(run_spec(spec, output_dir=args.out))
    return 0


def _print_result(result: Any) -> None:
    from mechwidgets.report.text import compact_frame

    print(compact_frame(result.table).to_string(index=False))  # any action's table
    print(f"\nverdict: {result.verdict()}")
    out = (result.spec or {}).get("output_dir")
    if out:
        print(f"bundle: {out} (open {str(out).rstrip('/')}/report.html)")


register_command(
    Command(
        "run", "run a YAML config, or re-run a bundle's artifacts.json", _configure_run, _run_run
    )
)
register_command(
    Command("demo", "detect subject animacy in the embedded toy model", _configure_demo, _run_demo)
)

if __name__ == "__main__":
    sys.exit(main())
