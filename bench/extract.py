"""Extraction speed and memory against their targets (see BENCHMARKS.md, "Extraction").

On a random-weight model shaped like Pythia-70m (6 layers, d_model 512, 8 heads, d_mlp
2048, vocabulary 50304), all six layers x resid/attn/mlp, last token, at several sizes
(texts x tokens per batch, ``--sizes``):

- speed: CPU seconds (``time.process_time``; wall time on a shared machine is noise) per
  batch, every variant interleaved in each round, one torch thread:
  ``floor`` the base model's forward through the last block (no unembedding, the least
  any extraction of layer 5 pays); ``full`` the whole model's forward; ``extract``
  ``mw.extract(..., cache=False)`` end to end (tokenize, trace, slice; a cube of one
  batch, as here, is returned in memory, a larger one written to a temporary netCDF file
  and opened lazily; its trace passes ``use_cache=False``, so ``floor_nc`` is the floor
  without the KV cache); ``cold`` the same with the cache on, the cache folder emptied
  before each call (the cube is also written into the cache); ``hooks`` hand-written
  forward hooks that clone the last token of the 18 outputs and stop after the last
  block (no file); ``nnsight`` the same through an
  nnsight trace (no file); ``cached`` a second ``mw.extract`` of the same call with the
  cache on (no forward pass: key, lookup, open); ``outside`` ``extract`` with its traced
  pass replaced by that pass's stored result (everything else it does). Targets: extract
  <= 1.05x the floor at every size, cached < 0.05x the forward it skips (the floor).
- fixed: the same variants on a model of the same modules and tokenizer but width 64,
  whose forward is cheap: each one's excess over that floor in ms is the per-call cost
  that does not grow with the model (small against the load, unlike the ratios).
- memory: peak RSS while extracting 2,000 and 20,000 short texts (8 tokens), median of
  fresh processes; target: within 10% of each other (the cube streams to disk; held in
  memory, the 20,000-text cube alone would add 706 MB).
- TransformerLens 4 ``run_with_cache``, for comparison, when a throwaway venv at
  ``$TL_PYTHON`` (default /tmp/tlvenv/bin/python) has ``transformer_lens`` installed.

    python bench/extract.py --threads 1 --repeats 7 --sizes 32x128,16x64,16x16
    python bench/extract.py --threads 1 --parts fixed --repeats 15 --calls 20 --sizes 16x16
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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nnsight
import numpy as np
import torch
import transformers
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

import mechwidgets as mw
from mechwidgets.extract import extractor
from mechwidgets.models.loading import Model

VOCAB = 50304
BATCH = 32
#: each variant's target, as a ratio to the floor
TARGETS = {"extract": 1.05, "cold": 1.05, "cached": 0.05}
MEMORY_TARGET = 0.10
#: the model width at which ``--parts fixed`` measures per-call costs beside the forward
FIXED_WIDTH = 64
TL_PYTHON = os.environ.get("TL_PYTHON", "/tmp/tlvenv/bin/python")


def pythia70m_shaped(seed: int = 0, width: int = 512) -> Model:
    """A random-weight Pythia-70m-shaped model with a word-level tokenizer over its vocab;
    ``width`` narrower than 512 keeps its modules and tokenizer but makes its arithmetic
    negligible (d_mlp 4 x ``width``), so what a call costs beyond its forward shows."""
    torch.manual_seed(seed)
    config = transformers.GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=width,
        num_hidden_layers=6,
        num_attention_heads=8,
        intermediate_size=4 * width,
        max_position_embeddings=2048,
        rotary_pct=0.25,
        tie_word_embeddings=False,
    )
    hf = transformers.GPTNeoXForCausalLM(config).eval()
    specials = ["<unk>", "<pad>", "<eos>"]
    vocab = {w: i for i, w in enumerate(specials + [f"w{i}" for i in range(3, VOCAB)])}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    return mw.load_model(hf, tokenizer=tok)


def random_texts(n: int, length: int, seed: int = 0) -> list[str]:
    """``n`` texts of exactly ``length`` tokens each."""
    ids = np.random.default_rng(seed).integers(3, VOCAB, size=(n, length))
    return [" ".join(f"w{i}" for i in row) for row in ids]


def cpu_timed(fn: Callable[[], object], calls: int = 1) -> float:
    """CPU seconds per call of ``fn``, over ``calls`` calls in a row."""
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls


def _main(output: object) -> torch.Tensor:
    """A module's main output (attention modules return a tuple)."""
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value]


class _Stop(Exception):
    """Raised by the last hook: the hand-written way to skip the rest of the model."""


def hooked(model: Model, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The 18 last-token slices by plain forward hooks; stops after the last block."""
    out: list[torch.Tensor] = []
    last = model.shape.n_layers - 1

    def keep(stop: bool) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, _args: object, output: object) -> None:
            out.append(_main(output)[:, -1].clone())
            if stop:
                raise _Stop

        return hook

    handles = [
        model.module(site, layer).register_forward_hook(keep(site == "block" and layer == last))
        for layer in range(last + 1)
        for site in ("attn", "mlp", "block")
    ]
    try:
        with torch.no_grad():
            model.hf.base_model(**inputs)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return out


def traced(model: Model, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The same 18 slices through an nnsight trace that stops after the last block."""
    with torch.no_grad(), model.nn.trace(**inputs) as tracer:
        saved = nnsight.save([])
        for layer in range(model.shape.n_layers):
            for envoy in (model.attn(layer), model.mlp(layer), model.block(layer)):
                saved.append(_main(envoy.output)[:, -1].clone())
        tracer.stop()
    return list(saved)


def speed(
    model: Model, repeats: int, batch: int, seq: int, calls: int = 1
) -> dict[str, list[float]]:
    """CPU seconds per batch of each variant, repeated in interleaved rounds."""
    texts = random_texts(batch, seq, seed=seq)
    inputs = model.tokenize(texts)
    hf = model.hf
    assert inputs["input_ids"].shape == (batch, seq)
    kwargs = {"components": ["resid", "attn", "mlp"], "token": "last", "batch_size": batch}

    @torch.no_grad()
    def full() -> None:
        hf(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])

    @torch.no_grad()
    def floor() -> None:
        hf.base_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])

    @torch.no_grad()
    def floor_no_cache() -> None:
        """The floor without the KV cache (extract's trace passes ``use_cache=False``)."""
        hf.base_model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
        )

    def extract() -> None:
        mw.extract(model, texts, cache=False, progress=False, **kwargs).close()

    def cached() -> None:
        mw.extract(model, texts, cache=True, progress=False, **kwargs).close()

    cold_folder = Path(tempfile.mkdtemp(prefix="cold-"))

    def cold() -> None:
        """A first cached call: the cube is computed and written into the cache folder."""
        os.environ["MECHWIDGETS_CACHE"], cache = str(cold_folder), os.environ["MECHWIDGETS_CACHE"]
        try:
            mw.extract(model, texts, cache=True, progress=False, **kwargs).close()
        finally:
            os.environ["MECHWIDGETS_CACHE"] = cache

    traced_pass, first_result = extractor.run_batch, []

    def stored_pass(*args: Any) -> Any:
        if not first_result:  # the warm-up call runs the real pass once
            first_result.append(traced_pass(*args))
        return first_result[0]

    def outside() -> None:
        """extract with its traced pass replaced by that pass's result: all the rest."""
        extractor.run_batch = stored_pass
        try:
            extract()
        finally:
            extractor.run_batch = traced_pass

    variants = {
        "floor": floor,
        "floor_nc": floor_no_cache,
        "extract": extract,
        "outside": outside,
        "cold": cold,
        "hooks": lambda: hooked(model, inputs),
        "nnsight": lambda: traced(model, inputs),
        "cached": cached,
        "full": full,
    }
    for fn in variants.values():  # warm up; the cached variant's first call fills the cache
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            if name == "cold":  # every call cold: its cache folder emptied first, untimed
                per_call = []
                for _ in range(calls):
                    shutil.rmtree(cold_folder, ignore_errors=True)
                    per_call.append(cpu_timed(fn))
                times[name].append(statistics.mean(per_call))
            else:
                times[name].append(cpu_timed(fn, calls))
    return times


def memory_run(n: int, threads: int) -> dict[str, float]:
    """Peak RSS (MB) while extracting ``n`` 8-token texts, and its growth over the RSS
    before; run in a fresh process."""
    torch.set_num_threads(threads)
    model = pythia70m_shaped()
    texts = random_texts(n, 8, seed=1)
    kwargs = {"components": ["resid", "attn", "mlp"], "batch_size": BATCH, "cache": False}
    mw.extract(model, texts[:512], progress=False, **kwargs)  # allocator to steady state
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * page

    before, peak, done = rss(), [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.perf_counter()
    cube = mw.extract(model, texts, progress=False, **kwargs)
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    size = Path(cube.encoding["source"]).stat().st_size
    return {
        "n": n,
        "peak_mb": peak[0] / 2**20,
        "rss_growth_mb": (peak[0] - before) / 2**20,
        "seconds": seconds,
        "file_mb": size / 2**20,
    }


def memory_child(n: int, threads: int) -> dict[str, float]:
    """Run :func:`memory_run` in a fresh Python, so each measurement starts alike."""
    cmd = [sys.executable, __file__, "--memory", str(n), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def transformer_lens(model: Model, threads: int, repeats: int) -> dict[str, float] | None:
    """TransformerLens 4 timings from the throwaway venv, or None when it is not there."""
    if not Path(TL_PYTHON).exists():
        return None
    with tempfile.TemporaryDirectory() as folder:
        model.hf.save_pretrained(folder)
        model.tokenizer.save_pretrained(folder)
        script = str(Path(__file__).with_name("extract_tl.py"))
        cmd = [TL_PYTHON, script, folder, "--threads", str(threads), "--repeats", str(repeats)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        print(f"TransformerLens comparison failed: {run.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(run.stdout.strip().splitlines()[-1])


def report_speed(model: Model, args: argparse.Namespace) -> float | None:
    """Print each size's ratios to the floor; return the floor's median at 32 x 128 (the
    TransformerLens comparison's batch), None when that size was not timed."""
    tl_floor = None
    with tempfile.TemporaryDirectory() as folder:
        os.environ["MECHWIDGETS_CACHE"] = folder  # the cached variant's cube, not the user's
        for size in args.sizes.split(","):
            batch, seq = (int(v) for v in size.split("x"))
            times = speed(model, args.repeats, batch, seq, args.calls)
            if (batch, seq) == (32, 128):
                tl_floor = statistics.median(times["floor"])
            print(f"{batch} texts x {seq} tokens, load {os.getloadavg()[0]:.1f}:")
            for name, values in times.items():
                ratios = [v / f for v, f in zip(values, times["floor"], strict=True)]
                extra = [v - f for v, f in zip(values, times["floor"], strict=True)]
                target = TARGETS.get(name)
                verdict = ""
                if target is not None:
                    ok = statistics.median(ratios) <= target
                    verdict = f"  target <= {target}x  {'PASS' if ok else 'FAIL'}"
                print(
                    f"  {name:8s} {statistics.median(values) * 1e3:8.1f} ms CPU "
                    f"(min {min(values) * 1e3:.1f}, max {max(values) * 1e3:.1f})  "
                    f"{statistics.median(ratios):.3f}x the floor "
                    f"(per round {min(ratios):.3f}-{max(ratios):.3f}), "
                    f"{statistics.median(extra) * 1e3:+.2f} ms{verdict}"
                )
    return tl_floor


def report_fixed(args: argparse.Namespace) -> None:
    """The speed variants on a model of the same modules and tokenizer but width
    ``FIXED_WIDTH``: its forward is cheap, so each variant's excess over its floor is the
    per-call cost that does not grow with the model (tokenizing, tracing, the cube)."""
    print(f"fixed costs, the same model at width {FIXED_WIDTH} (its arithmetic negligible):")
    report_speed(pythia70m_shaped(width=FIXED_WIDTH), args)


def report_memory(args: argparse.Namespace) -> None:
    """Print peak RSS for 2,000 and 20,000 texts, medians over fresh processes."""
    peaks = {}
    for n in (2000, 20000):
        runs = [memory_child(n, args.threads) for _ in range(args.memory_repeats)]
        peaks[n] = statistics.median(r["peak_mb"] for r in runs)
        growth = ", ".join(f"{r['rss_growth_mb']:.0f}" for r in runs)
        print(
            f"memory n={n:>6}: peak RSS median {peaks[n]:.0f} MB (growth over the RSS before, "
            f"per run: {growth} MB), {statistics.median(r['seconds'] for r in runs):.0f} s, "
            f"cube file {runs[0]['file_mb']:.0f} MB"
        )
    change = peaks[20000] / peaks[2000] - 1
    print(
        f"peak RSS 20k vs 2k     : {change:+.1%}   target within +/-{MEMORY_TARGET:.0%}   "
        f"{'PASS' if abs(change) <= MEMORY_TARGET else 'FAIL'}"
    )


def report_transformer_lens(model: Model, args: argparse.Namespace, floor: float | None) -> None:
    """Print TransformerLens 4 timings next to its own forward (and our floor, if timed)."""
    tl = transformer_lens(model, args.threads, args.repeats)
    if tl is None:
        print(f"TransformerLens 4: no venv at {TL_PYTHON}; comparison skipped")
        return
    print(f"TransformerLens 4, eager HF forward     : {tl['forward']:.3f} s per batch")
    for name in ("run_with_cache", "run_with_cache_18"):
        ours = f", {tl[name] / floor:.2f}x our floor" if floor else ""
        print(
            f"TransformerLens 4, {name:20s}: {tl[name]:.3f} s = "
            f"{tl[name] / tl['forward']:.2f}x its forward{ours}"
        )
    print(f"TransformerLens 4 full cache: {tl['n_cached']} tensors, {tl['cache_mb']:.0f} MB/batch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=1, help="calls per timing (longer windows)")
    parser.add_argument("--sizes", default="32x128,16x64,16x16", help="texts x tokens, comma list")
    parser.add_argument("--memory-repeats", type=int, default=3, help="processes per size")
    parser.add_argument("--parts", default="speed,memory,tl", help="comma list of parts to run")
    parser.add_argument("--memory", type=int, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.memory:
        print(json.dumps(memory_run(args.memory, args.threads)))
        return
    parts = set(args.parts.split(","))
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, nnsight {nnsight.__version__}, {args.threads} thread(s)")
    model = pythia70m_shaped() if parts & {"speed", "tl"} else None
    floor = report_speed(model, args) if model is not None and "speed" in parts else None
    if "fixed" in parts:
        report_fixed(args)
    if "memory" in parts:
        report_memory(args)
    if model is not None and "tl" in parts:
        report_transformer_lens(model, args, floor)


if __name__ == "__main__":
    main()
