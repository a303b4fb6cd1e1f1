"""Activation patching over a full grid against attribution patching of the same grid.

On a random-weight model shaped like Pythia-70m (6 layers, d_model 512, 8 heads, d_mlp
2048, vocabulary 50304; ``bench/extract.py`` builds it), clean/corrupt pairs of 16 random
tokens that differ in one token, metric: a logit difference at the last token. The grid:
the residual stream (embeddings and every block), attention and MLP writes at every
position (19 x 16 = 304 cells), and every head over all positions (6 x 8 = 48 cells).

- activation patching: ``mw.patch(..., attribution=False)``, one edited run per cell, the
  cells stacked into batched passes;
- the floor of those passes: the same stacked inputs (the same chunks of cells, plus the
  source prompts) through the plain HF base model, the output head run only at the read
  token of the edited rows; no edits, no tracing: what any stacked patching must pay;
- a hand-written hook loop (the strongest alternative without stacking): the source
  activations cached by one hooked pass, then per cell one pass of the base prompts
  with a forward hook that writes the cell's slice, unembedding only the read token;
- one cell per traced pass (``run_cells`` with one cell), timed on a sample of cells and
  extrapolated: what stacking saves inside this package;
- attribution patching: ``mw.attribution_patch``, one source pass, one forward and one
  backward pass for the whole grid.

Patching, the floor and the hook loop run interleaved (``--rounds``, order alternating);
CPU seconds are the steadier figure on a shared machine. Prints one JSON object with the
ratios to the floor (target <= 1.05) and to the hook loop, and the agreement (Pearson,
Spearman) of activation and attribution patching over the grid.

    python bench/patching.py --threads 1 --pairs 8 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from extract import pythia70m_shaped, random_texts  # noqa: E402  (the shared bench model)

import mechwidgets as mw  # noqa: E402
from mechwidgets.actions.patching import PatchResult  # noqa: E402
from mechwidgets.intervene.edits import (  # noqa: E402
    MAX_LOGITS,
    MAX_ROWS,
    READ,
    Cell,
    run_cells,
)
from mechwidgets.intervene.grid import agreement, plan_patching  # noqa: E402
from mechwidgets.intervene.sources import Source  # noqa: E402

SEQ = 16
T = TypeVar("T")
#: (grid, components) of the two halves of the full grid
GRIDS = (
    (("layer", "component", "position"), ["resid", "attn", "mlp"]),
    (("layer", "component"), ["head"]),
)


def pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Clean texts of SEQ tokens and corrupt ones with token 3 replaced."""
    clean = random_texts(n, SEQ, seed)
    swap = random_texts(n, 1, seed + 1)
    corrupt = [
        " ".join([*c.split()[:3], s, *c.split()[4:]]) for c, s in zip(clean, swap, strict=True)
    ]
    return clean, corrupt


def timed(fn: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """``fn()`` and its wall-clock and CPU seconds (CPU time is steadier on a shared machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, {
        "wall": round(time.perf_counter() - wall, 3),
        "cpu": round(time.process_time() - cpu, 3),
    }


def head_at_read(model, hidden: torch.Tensor, scorer, rows: int) -> torch.Tensor:
    """The scorer's metric from final hidden states: the output head at its positions only."""
    at = hidden[
        torch.arange(rows)[:, None], scorer.positions.repeat(rows // len(scorer.positions), 1)
    ]
    return scorer.score_at(model.hf.get_output_embeddings()(at))


def floor(model, plan) -> list[torch.Tensor]:
    """The forward passes ``run_cells`` makes, without edits or tracing: the same chunks of
    stacked prompts plus the source prompts, base model then the head at the read token."""
    n, scorer = len(plan.base), plan.pairs.scorer
    per_pass = max(1, min(MAX_ROWS // n, MAX_LOGITS // (n * model.hf.config.vocab_size)))
    out = []
    with torch.no_grad():
        for first in range(0, len(plan.cells), per_pass):
            k = len(plan.cells[first : first + per_pass])
            inputs = {
                name: torch.cat([t.repeat(k, 1), plan.source.inputs[name]])
                for name, t in plan.base.inputs.items()
            }
            hidden = model.hf.base_model(**inputs).last_hidden_state
            out.append(head_at_read(model, hidden[: k * n], scorer, k * n))
    return out


def site_module(model, cell: Cell) -> tuple[torch.nn.Module, bool, slice]:
    """The HF module a cell edits, whether its *input* holds the site, and its columns."""
    net, comp = model.hf.gpt_neox, cell.component
    if comp.kind == "resid" and comp.layer < 0:
        return net.layers[0], True, slice(None)
    block = net.layers[comp.layer]
    if comp.kind == "head":
        d = model.d_head
        return block.attention.dense, True, slice(comp.head * d, (comp.head + 1) * d)
    return (
        {"resid": block, "attn": block.attention, "mlp": block.mlp}[comp.kind],
        False,
        slice(None),
    )


def hook_loop(model, plan) -> torch.Tensor:
    """Per cell, one hooked pass of the base prompts with that cell patched from the
    source pass (cached once with hooks), unembedding only the read token."""
    n, scorer = len(plan.base), plan.pairs.scorer
    sites = {site_module(model, c)[:2] for c in plan.cells}
    cache: dict[int, torch.Tensor] = {}

    def keeper(module, is_input):
        def keep(mod, args, output=None):
            x = args[0] if is_input else output
            cache[id(mod), is_input] = (x[0] if isinstance(x, tuple) else x).clone()

        return keep

    def writer(module, is_input, cell):
        src = cache[id(module), is_input]
        at = slice(None) if cell.position is None else cell.position
        _, _, cols = site_module(model, cell)

        def write(x):
            x[:, at, cols] = src[:, at, cols]

        def pre(mod, args):
            write(args[0])

        def post(mod, args, output):
            write(output[0] if isinstance(output, tuple) else output)

        return pre if is_input else post

    values = []
    with torch.no_grad():
        handles = [
            m.register_forward_pre_hook(keeper(m, True))
            if inp
            else m.register_forward_hook(keeper(m, False))
            for m, inp in sites
        ]
        model.hf.base_model(**plan.source.inputs)
        for h in handles:
            h.remove()
        for cell in plan.cells:
            assert cell.position != READ
            module, inp, _ = site_module(model, cell)
            hook = writer(module, inp, cell)
            handle = (
                module.register_forward_pre_hook(hook)
                if inp
                else module.register_forward_hook(hook)
            )
            hidden = model.hf.base_model(**plan.base.inputs).last_hidden_state
            handle.remove()
            values.append(head_at_read(model, hidden, scorer, n))
    return torch.stack(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of attribution")
    parser.add_argument("--naive-sample", type=int, default=24, help="cells timed one per pass")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = pythia70m_shaped()
    clean, corrupt = pairs(args.pairs)
    metric = mw.metrics.logit_diff("w10", "w11")
    kw = {"behavior": metric, "resamples": 200}
    plans = [plan_patching(model, clean, corrupt, metric, g, c, "denoise", None) for g, c in GRIDS]

    def activation() -> list[PatchResult]:
        return [
            mw.patch(model, clean, corrupt, grid=g, components=c, attribution=False, **kw)
            for g, c in GRIDS
        ]

    def attribution() -> list[PatchResult]:
        return [
            mw.attribution_patch(model, clean, corrupt, grid=g, components=c, **kw)
            for g, c in GRIDS
        ]

    def floor_all() -> list:
        # the two unpatched passes mw.patch makes per grid, then its stacked passes
        with torch.no_grad():
            for plan in plans:
                for prompts in (plan.base, plan.source):
                    hidden = model.hf.base_model(**prompts.inputs).last_hidden_state
                    head_at_read(model, hidden, plan.pairs.scorer, len(prompts))
        return [floor(model, plan) for plan in plans]

    sides = {
        "activation": activation,
        "floor": floor_all,
        "hook_loop": lambda: [hook_loop(model, plan) for plan in plans],
    }
    attribution()  # warm-up
    times: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    outs: dict[str, object] = {}
    for r in range(args.rounds):
        for name in list(sides)[:: 1 if r % 2 == 0 else -1]:
            outs[name], spent = timed(sides[name])
            times[name].append(spent)
    med = {
        k: {u: statistics.median(t[u] for t in v) for u in ("wall", "cpu")}
        for k, v in times.items()
    }
    act = outs["activation"]
    runs = [timed(attribution) for _ in range(args.repeats)]
    atp = runs[0][0]
    atp_s = {k: statistics.median(r[1][k] for r in runs) for k in ("wall", "cpu")}

    # one traced pass per cell, on a sample of the cells, extrapolated to the grid
    plan = plans[0]
    sample = np.random.default_rng(0).choice(len(plan.cells), args.naive_sample, replace=False)
    _, one_s = timed(
        lambda: [
            run_cells(model, plan.base, [plan.cells[i]], Source(plan.source), [plan.pairs.scorer])
            for i in sample
        ]
    )
    cells = sum(len(r.table) for r in act)
    one_s = {k: round(v * cells / args.naive_sample, 2) for k, v in one_s.items()}

    # the hook loop computes the same patched metric values as the stacked passes
    stacked = run_cells(model, plan.base, plan.cells[:8], Source(plan.source), [plan.pairs.scorer])
    hooked = outs["hook_loop"][0][:8]
    a = np.concatenate([r.table["effect"].to_numpy() for r in act])
    b = np.concatenate([r.table["effect"].to_numpy() for r in atp])
    ratio = {
        f"activation / {k}": [
            round(x["cpu"] / y["cpu"], 3)
            for x, y in zip(times["activation"], times[k], strict=True)
        ]
        for k in ("floor", "hook_loop")
    }
    print(
        json.dumps(
            {
                "pairs": args.pairs,
                "tokens": SEQ,
                "cells": cells,
                "threads": args.threads,
                "rounds": args.rounds,
                "load_average": os.getloadavg(),
                "seconds_per_round": times,
                "median_s": med,
                "activation_over_floor_cpu": round(
                    med["activation"]["cpu"] / med["floor"]["cpu"], 3
                ),
                "hook_loop_over_activation_cpu": round(
                    med["hook_loop"]["cpu"] / med["activation"]["cpu"], 3
                ),
                "per_round_cpu_ratios": ratio,
                "floor_target": 1.05,
                "hook_loop_vs_stacked_max_abs": float((stacked[0][0] - hooked).abs().max()),
                "attribution_s": atp_s,
                "activation_over_attribution": {
                    k: round(med["activation"][k] / atp_s[k], 1) for k in atp_s
                },
                "one_pass_per_cell_s": one_s,
                "stacking_speedup": {k: round(one_s[k] / med["activation"][k], 2) for k in one_s},
                "agreement": agreement(a, b),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
