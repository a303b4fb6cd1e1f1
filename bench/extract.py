"""Extraction speed and memory against their targets (see BENCHMARKS.md, "Extraction").

On a random-weight model shaped like Pythia-70m (6 layers, d_model 512, 8 heads, d_mlp
2048, vocabulary 50304), batches of 32 texts x 128 tokens, all six layers x resid/attn/mlp,
last token:

- speed: ``mw.extract`` per batch (tokenize, trace, slice, write) against a plain HF
  forward of the full model and against the base model's forward through the last block
  (the floor); target <= 1.10x the floor.
- memory: peak RSS while extracting 2,000 and 20,000 short texts (8 tokens), median of
  fresh processes; target: within 10% of each other (the cube streams to disk; held in
  memory, the 20,000-text cube alone would add 706 MB).
- TransformerLens 4 ``run_with_cache``, for comparison, when a throwaway venv at
  ``$TL_PYTHON`` (default /tmp/tlvenv/bin/python) has ``transformer_lens`` installed.

    python bench/extract.py --threads 1 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

import mechwidgets as mw
from mechwidgets.models.loading import Model

VOCAB = 50304
BATCH, SEQ = 32, 128
SPEED_TARGET = 1.10
MEMORY_TARGET = 0.10
TL_PYTHON = os.environ.get("TL_PYTHON", "/tmp/tlvenv/bin/python")


def pythia70m_shaped(seed: int = 0) -> Model:
    """A random-weight Pythia-70m-shaped model with a word-level tokenizer over its vocab."""
    torch.manual_seed(seed)
    config = transformers.GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=512,
        num_hidden_layers=6,
        num_attention_heads=8,
        intermediate_size=2048,
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


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def speed(model: Model, repeats: int, batches: int) -> dict[str, list[float]]:
    """Seconds per batch of each variant, repeated in interleaved rounds."""
    texts = random_texts(BATCH * batches, SEQ)
    inputs = model.tokenize(texts[:BATCH])
    hf = model.hf
    assert inputs["input_ids"].shape == (BATCH, SEQ)

    @torch.no_grad()
    def full() -> None:
        for _ in range(batches):
            hf(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])

    @torch.no_grad()
    def floor() -> None:
        for _ in range(batches):
            hf.base_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])

    def extract() -> None:
        mw.extract(
            model,
            texts,
            components=["resid", "attn", "mlp"],
            token="last",
            batch_size=BATCH,
            cache=False,
            progress=False,
        )

    variants = {"full": full, "floor": floor, "extract": extract}
    for fn in variants.values():  # warm up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn) / batches)
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


def summary(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f})"
    )


def report_speed(model: Model, args: argparse.Namespace) -> float:
    """Print the speed ratios; return the floor's median seconds per batch."""
    times = speed(model, args.repeats, args.batches)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, values in times.items():
        print(f"{name:8s} per batch: {summary(values)}")
    vs_floor = med["extract"] / med["floor"]
    ratios = [e / f for e, f in zip(times["extract"], times["floor"], strict=True)]
    print(f"extract / full forward : {med['extract'] / med['full']:.3f}x")
    print(
        f"extract / floor        : {vs_floor:.3f}x (per-round {min(ratios):.3f}-"
        f"{max(ratios):.3f})   target <= {SPEED_TARGET:.2f}x   "
        f"{'PASS' if vs_floor <= SPEED_TARGET else 'FAIL'}"
    )
    return med["floor"]


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
    parser.add_argument("--batches", type=int, default=4, help="batches per timed call")
    parser.add_argument("--memory-repeats", type=int, default=3, help="processes per size")
    parser.add_argument("--parts", default="speed,memory,tl", help="comma list of parts to run")
    parser.add_argument("--memory", type=int, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.memory:
        print(json.dumps(memory_run(args.memory, args.threads)))
        return
    parts = set(args.parts.split(","))
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {BATCH} x {SEQ} tokens")
    model = pythia70m_shaped()
    floor = report_speed(model, args) if "speed" in parts else None
    if "memory" in parts:
        report_memory(args)
    if "tl" in parts:
        report_transformer_lens(model, args, floor)


if __name__ == "__main__":
    main()
