"""Where a pool's time goes, full depth against adaptive depth, by phase of the forward: the
plan, gathers, scatters, and inside the layers attention, the two closing blocks (projection,
residual, LayerNorm), the activation and the rest (q/k/v projections, FFN-in GEMM, reshapes).
Wall-clock time of each phase, taken by wrapping the encoder's own functions (no copy of its
code); the wrappers add about a microsecond per call. Numbers in bench/NOTES.md ("What this
CPU allows").

    python bench/phases_cpu.py [--batches 1 8]

The suite's CPU shape (hidden 256, 12 layers, fp32), TREC MI depths, pool 0 of 60 documents at
1/4 IMDB length, inference mode, 3 timed rounds after one warm-up.
"""
import argparse
import os
import sys
import time
from collections import Counter

import torch

sys.path.insert(0, os.path.dirname(__file__))
import benchlib  # noqa: E402
import adaptive_encoder.encoder as E  # noqa: E402
from adaptive_encoder import AdaptiveEncoder, ops  # noqa: E402

N = 12
ROUNDS = 3


def _timed(name: str, fn, acc: Counter):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[name] += time.perf_counter() - t
    return wrapper


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    a = ap.parse_args()
    enc = AdaptiveEncoder.from_model(benchlib.bert(N, 256, 4, 1024))
    acc: Counter = Counter()
    originals = {(E, "make_plan"): E.make_plan, (ops, "gather"): ops.gather, (ops, "scatter_"): ops.scatter_,
                 (E, "varlen_attention"): E.varlen_attention, (E, "_close"): E._close,
                 (E, "_activate"): E._activate, (E.AdaptiveEncoder, "_layer"): E.AdaptiveEncoder._layer}
    names = {"make_plan": "plan", "gather": "gather", "scatter_": "scatter", "varlen_attention": "attention",
             "_close": "closing blocks", "_activate": "activation", "_layer": "layer"}
    for (owner, attr), fn in originals.items():
        setattr(owner, attr, _timed(names[attr], fn, acc))
    try:
        for batch in a.batches:
            bs, _ = benchlib.cpu_pool(N, 0, batch)
            ms = {}
            with torch.inference_mode():
                for name, deep in (("full", True), ("adaptive", False)):
                    run = lambda: [enc(x, torch.where(m, N, 0) if deep else d, m) for d, m, x in bs]  # noqa: E731
                    run()
                    acc.clear()
                    t = time.perf_counter()
                    for _ in range(ROUNDS):
                        run()
                    total = (time.perf_counter() - t) / ROUNDS
                    p = {k: v / ROUNDS for k, v in acc.items()}
                    inner = sum(p.get(k, 0.0) for k in ("attention", "closing blocks", "activation"))
                    p["projections, FFN-in GEMM, rest of the layer"] = p.pop("layer", 0.0) - inner
                    p["outside the layers (Python, state copy)"] = total - sum(p.values())
                    p["total"] = total
                    ms[name] = p
            print(f"batch {batch}: ms per pool, full / adaptive (ratio)")
            for k in ms["full"]:
                f, ad = ms["full"][k] * 1e3, ms["adaptive"].get(k, 0.0) * 1e3
                print(f"  {k:45s} {f:7.1f} / {ad:7.1f}" + (f"  ({f / ad:.2f}x)" if ad > 0.05 else ""))
    finally:
        for (owner, attr), fn in originals.items():
            setattr(owner, attr, fn)


if __name__ == "__main__":
    main()
