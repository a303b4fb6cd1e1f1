"""``%mechinterp`` and ``%%mechinterp``: the five actions from a notebook cell.

The line magic takes argparse-style options, the cell magic a YAML RunSpec body; both
build the same RunSpec the CLI reads and call the same runner, and return the result
object so it displays inline. Bad input is a one-line ``UsageError``, never a traceback.

>>> %load_ext mechwidgets
>>> %mechinterp detect --model toy-grammar --task subject_number --layers all -o res
>>> %%mechinterp
... action: collapse
... model: toy-grammar
... task: subject_number
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from mechwidgets.core.errors import MechError
from mechwidgets.core.registry import list_actions
from mechwidgets.core.specs import ACTION_ALIASES, RunSpec


class _Parser(argparse.ArgumentParser):
    """argparse that raises a one-line UsageError instead of exiting."""

    def error(self, message: str) -> Any:
        from mechwidgets.cli import usage_message  # not at import: `python -m` runs the CLI

        raise UsageError(f"{self.prog}: {usage_message(self, message)}")


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("empty list: give comma-separated names")
    return items


def _controls(text: str) -> list[str]:
    """``--controls a,b``; ``--controls none`` runs no controls."""
    return [] if text.strip().lower() == "none" else _csv(text)


def build_parser() -> _Parser:
    """The parser behind ``%mechinterp``; ``%mechinterp ACTION --help`` prints its options."""
    from mechwidgets.data.catalog import list_tasks
    from mechwidgets.models.zoo import list_models

    parser = _Parser(
        prog="%mechinterp",
        description="Run a mechwidgets action; `%mechinterp ACTION --help` lists its options.",
        epilog=(
            f"models: {', '.join(list_models())}, or any Hugging Face model id\n"
            f"tasks: {', '.join(list_tasks())}, or a CSV/JSONL/Parquet file\n"
            "cell magic: %%mechinterp [VAR] with a YAML RunSpec as the cell body, e.g.\n"
            "  %%mechinterp res\n  action: detect\n  model: toy-grammar\n"
            "  task: subject_number"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    run = sub.add_parser("run", help="run a YAML config or a bundle's artifacts.json")
    run.add_argument("config", help="path to a YAML RunSpec or an artifacts.json")
    run.add_argument("-o", "--out-var", help="store the result in this notebook variable")
    for name in list_actions():
        action = sub.add_parser(name, help=f"run the {name} action")
        action.add_argument("--model", default="toy-grammar", help="zoo name or HF model id")
        action.add_argument(
            "--task",
            default="subject_number",
            help="built-in task or file path; compare across tasks: a,b (one label per task)",
        )
        action.add_argument("--layers", default="all", help="'all', '3', '0-5' or '1,3'")
        action.add_argument(
            "--components", type=_csv, default=None, help="comma list: resid,attn,mlp,head"
        )
        action.add_argument("--label", help="label to probe (default: the task's first)")
        action.add_argument("--labels", type=_csv, help="comma list of labels (compare, ...)")
        action.add_argument(
            "--controls", type=_controls, help="label_shuffle,random_subspace,... or none"
        )
        action.add_argument("--seeds", type=int, help="probe seeds")
        action.add_argument("--permutations", type=int, help="label permutations for p-values")
        action.add_argument("--resamples", type=int, help="bootstrap resamples for intervals")
        action.add_argument("--top-k", type=int, help="candidates to intervene on (localize)")
        action.add_argument("--n", type=int, help="samples to draw from a built-in task")
        action.add_argument("--batch-size", type=int, help="texts per forward pass")
        action.add_argument(
            "--unseen",
            choices=["error", "exclude"],
            help="texts the model cannot see (empty, blank, <unk>): error (default) or exclude",
        )
        action.add_argument("--seed", type=int, default=0, help="run seed")
        action.add_argument("--out-dir", help="write the artifact bundle here")
        action.add_argument("-o", "--out-var", help="store the result in this notebook variable")
    return parser


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flat RunSpec dict that a parsed ``%mechinterp ACTION ...`` line stands for."""
    spec: dict[str, Any] = {
        "action": args.action,
        "model": args.model,
        "task": args.task,
        "layers": args.layers,
        "seed": args.seed,
    }
    optional = {
        "components": args.components,
        "label": args.label,
        "labels": args.labels,
        "controls": args.controls,
        "seeds": args.seeds,
        "permutations": args.permutations,
        "resamples": args.resamples,
        "batch_size": args.batch_size,
        "unseen": args.unseen,
        "top_k": args.top_k,
        "n": args.n,
        "output_dir": args.out_dir,
    }
    spec.update({k: v for k, v in optional.items() if v is not None})
    return spec


@magics_class
class MechMagics(Magics):
    """The ``mechinterp`` line and cell magic."""

    @line_cell_magic
    def mechinterp(self, line: str, cell: str | None = None) -> Any:
        """Run an action: ``%mechinterp ACTION [options]`` or ``%%mechinterp`` + YAML body."""
        try:
            if cell is not None:
                return self._store(_run(RunSpec.from_yaml(cell)), line.strip() or None)
            try:
                argv = shlex.split(line)
            except ValueError as exc:  # an unterminated quote
                raise UsageError(
                    f"%mechinterp: cannot split the line ({exc}); close the quote"
                ) from None
            if argv and argv[0] in ACTION_ALIASES:
                argv[0] = ACTION_ALIASES[argv[0]]
            try:
                args = build_parser().parse_args(argv)
            except SystemExit:  # --help printed its text; nothing to run
                return None
            if args.action is None:
                raise UsageError(
                    f"%mechinterp needs an action: choose one of run, {', '.join(list_actions())}"
                )
            source = (
                args.config if args.action == "run" else RunSpec.from_dict(spec_from_args(args))
            )
            return self._store(_run(source), args.out_var)
        except MechError as exc:
            raise UsageError(str(exc)) from None
        except FileNotFoundError as exc:
            raise UsageError(f"no such file: {exc.filename}; check the path") from None

    def _store(self, result: Any, name: str | None) -> Any:
        if name:
            assert self.shell is not None  # set when %load_ext registers the magics
            self.shell.user_ns[name] = result
        return result


def _run(source: RunSpec | str) -> Any:
    """Run a parsed spec (or a config path): the runner, and with it torch and the actions,
    is imported only now, so a bad spec fails before anything heavy loads."""
    from mechwidgets.runner import run_spec

    return run_spec(source)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext mechwidgets``: register the magics (idempotent)."""
    ipython.register_magics(MechMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """Nothing to free: magics are re-registered on the next load."""
