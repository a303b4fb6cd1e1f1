"""The ``mechinterp`` command: one subcommand per registered :class:`Command`.

A subcommand is a name, a help line, a function that adds its arguments and a function
that runs it; :func:`register_command` adds one, so ``run`` and ``demo`` plug in beside
``cache`` without touching :func:`main`. Bad input (any ``MechError``) prints one line,
``mechinterp: error: ...``, and exits with status 2, never a traceback.

.. code-block:: bash

    mechinterp cache list
    mechinterp cache clear
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def build_parser() -> argparse.ArgumentParser:
    """The parser for every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="mechinterp", description="Mechanistic interpretability from the command line."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS.values():
        command.configure(sub.add_parser(command.name, help=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mechinterp``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args) or 0
    except MechError as exc:
        print(f"mechinterp: error: {exc}", file=sys.stderr)
        return 2


def _configure_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "clear"], help="list or delete cached cubes")


def _run_cache(args: argparse.Namespace) -> int:
    import pandas as pd

    from mechwidgets.extract.cache import cache_dir, clear_cache, list_cache

    if args.action == "clear":
        print(f"removed {clear_cache()} file(s) from {cache_dir()}")
        return 0
    entries = list_cache()
    if not entries:
        print(f"no cached cubes in {cache_dir()}")
        return 0
    table = pd.DataFrame(
        [(e.key, e.model, e.shape, _size(e.size), str(e.path)) for e in entries],
        columns=["key", "model", "shape", "size", "path"],
    )
    print(table.to_string(index=False, justify="left"))
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


register_command(
    Command("cache", "list or clear cached activation cubes", _configure_cache, _run_cache)
)

if __name__ == "__main__":
    sys.exit(main())
