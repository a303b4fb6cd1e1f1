"""What a remote model's traces send back, against the hidden states they read.

On a random-weight model shaped like Pythia-70m (``bench/extract.py`` builds it; 6
layers, d_model 512), run through nnsight's ``remote="local"`` backend, which serialises
each trace exactly as for NDIF and runs it here with this package hidden:

- ``extract``: 256 texts of 64 tokens, batches of 32, the embedding output and
  resid / attn / mlp of every block (19 sites), read at the last token;
- ``patch``: 16 clean/corrupt pairs of 16 tokens, logit difference at the last token,
  the layer x component grid (resid, attn, mlp of every block), with attribution.

For every remote trace the bytes of the tensors it saved (what NDIF would return, less
pickling overhead) are summed; "full" is the size of the hidden states the same pass
reads, at every token, float32. Also the wall time of the remote path against the same
calls on the local model.

    python bench/remote.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from extract import pythia70m_shaped, random_texts  # noqa: E402  (the shared bench model)

import mechwidgets as mw  # noqa: E402
from mechwidgets.models.remote import recorded_traces, returned_bytes  # noqa: E402


def timed(fn):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with recorded_traces() as traces:
        print(json.dumps(measure(traces), indent=1))


def measure(traces: list[list[object]]) -> dict[str, dict]:
    """Extraction and patching, local against remote="local", with what each trace saved."""
    local = pythia70m_shaped()
    twin = pythia70m_shaped()  # same seed, same weights, its own nnsight wrapper
    remote = mw.load_model(twin.hf, tokenizer=twin.tokenizer, remote="local")
    d, layers = local.d_model, local.shape.n_layers

    texts, batch, seq = random_texts(256, 64, seed=1), 32, 64
    kw = dict(layers="embed,all", components=["resid", "attn", "mlp"], batch_size=batch)
    a, local_s = timed(lambda: mw.extract(local, texts, cache=False, **kw)["act"].values)
    b, remote_s = timed(lambda: mw.extract(remote, texts, cache=False, **kw)["act"].values)
    sites = 1 + 3 * layers
    extract = {
        "batches": len(traces),
        "returned_bytes_per_batch": int(np.median([returned_bytes(t) for t in traces])),
        "full_hidden_bytes_per_batch": batch * seq * sites * d * 4,
        "max_abs_diff": float(np.nanmax(np.abs(a - b))),
        "local_s": round(local_s, 2),
        "remote_local_s": round(remote_s, 2),
    }
    extract["ratio"] = extract["returned_bytes_per_batch"] / extract["full_hidden_bytes_per_batch"]

    traces.clear()
    clean = random_texts(16, 16, seed=2)
    corrupt = [" ".join(["w3", *t.split()[1:]]) for t in clean]
    words = clean[0].split()
    behavior = mw.metrics.logit_diff(correct=words[1], wrong=words[2])
    pk = dict(behavior=behavior, grid=("layer", "component"), components=("resid", "attn", "mlp"))
    pa, p_local_s = timed(lambda: mw.patch(local, clean, corrupt, resamples=100, **pk).table)
    pb, p_remote_s = timed(lambda: mw.patch(remote, clean, corrupt, resamples=100, **pk).table)
    per_trace = [returned_bytes(t) for t in traces]
    patch = {
        "traces": len(per_trace),
        "returned_bytes_per_trace": per_trace,
        "full_hidden_bytes_per_pass": 16 * 16 * sites * d * 4,
        "max_abs_diff_effect": float(np.abs(pa["effect"] - pb["effect"]).max()),
        "local_s": round(p_local_s, 2),
        "remote_local_s": round(p_remote_s, 2),
    }
    return {"extract": extract, "patch": patch}


if __name__ == "__main__":
    main()
