"""TransformerLens 4 side of bench/extract.py; runs in a throwaway venv, not in ours.

Loads the HF folder that bench/extract.py saved, wraps it in a ``TransformerBridge`` and
times ``run_with_cache`` on one 32 x 128 batch: with every hook cached (its default), and
with only the 18 hooks our extraction reads. ``stop_at_layer`` stops *before* a block, so
it cannot skip the unembedding while keeping the last block; both variants run it.
Prints one JSON line of median seconds per batch and the full cache size.

    /tmp/tlvenv/bin/python bench/extract_tl.py FOLDER --threads 1 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import transformers
from transformer_lens.model_bridge import TransformerBridge


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf = transformers.AutoModelForCausalLM.from_pretrained(args.folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(args.folder)
    bridge = TransformerBridge.boot_transformers(args.folder, hf_model=hf, tokenizer=tok)
    n_layers = hf.config.num_hidden_layers
    ids = torch.randint(
        3, hf.config.vocab_size, (32, 128), generator=torch.Generator().manual_seed(0)
    )
    wanted = {
        f"blocks.{i}.{h}"
        for i in range(n_layers)
        for h in ("hook_resid_post", "hook_attn_out", "hook_mlp_out")
    }

    @torch.no_grad()
    def forward() -> None:
        hf(input_ids=ids)  # eager attention: boot_transformers switched the model to it

    @torch.no_grad()
    def cache_all() -> None:
        bridge.run_with_cache(ids)

    @torch.no_grad()
    def cache_ours() -> None:
        _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in wanted)
        assert len(cache) == len(wanted), sorted(cache.keys())[:5]

    variants = {"forward": forward, "run_with_cache": cache_all, "run_with_cache_18": cache_ours}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        fn()
    for _ in range(args.repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids)
    size = sum(t.numel() * t.element_size() for t in cache.values())
    out = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({**out, "cache_mb": size / 2**20, "n_cached": len(cache)}))


if __name__ == "__main__":
    main()
