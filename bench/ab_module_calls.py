"""A/B: the layers' closing blocks as functional calls (direct) or through the transformers
modules (what a hook on a block's module forces). Run on an idle CPU; numbers in bench/NOTES.md.

    python bench/ab_module_calls.py [--pool 60] [--rounds 5]

Two measurements, both interleaved A, B, A, B, ...:
1. Host overhead: a tiny encoder (hidden 32, 12 layers, 8 tokens, batch 1) where the arithmetic
   is negligible, so the time per layer is what Python and the dispatcher cost.
2. The benchmark's CPU shape (hidden 256, 12 layers, fp32, TREC MI depths, pools of 60
   documents at 1/4 IMDB length, batch 1 and 8): measured speed-up over the FLOP ideal, as
   in the suite (adaptive against full depth), for each path.
"""
import argparse
import os
import statistics
import sys
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(__file__))
import benchlib  # noqa: E402
from adaptive_encoder import AdaptiveEncoder  # noqa: E402
from adaptive_encoder.families import family_of  # noqa: E402

N = 12


def _hooks(bert, on: bool, handles: list):
    """A no-op forward hook on every layer's FFN output module: the encoder then calls the modules."""
    while handles:
        handles.pop().remove()
    if on:
        fam = family_of(bert.config)
        for layer in bert.encoder.layer:
            handles.append(fam.parts(layer).containers[-1].register_forward_hook(lambda *a: None))


def host_overhead(rounds: int):
    bert = benchlib.bert(N, 32, 2, 64)
    enc = AdaptiveEncoder.from_model(bert)
    x = torch.randn(1, 8, 32)
    mask = torch.ones(1, 8, dtype=torch.bool)
    depths = torch.tensor([[12, 3, 5, 12, 1, 7, 9, 2]])
    handles, t = [], {"modules": [], "direct": []}
    with torch.inference_mode():
        for _ in range(rounds * 4):
            for name in t:
                _hooks(bert, name == "modules", handles)
                enc(x, depths, mask)  # warm
                t[name].append(min(benchlib.time_call(lambda: enc(x, depths, mask)) for _ in range(20)))
    _hooks(bert, False, handles)
    layers = int((depths > torch.arange(N)[:, None, None]).any(-1).sum())  # layers that run
    us = {k: statistics.median(v) / layers * 1e6 for k, v in t.items()}
    print(f"host overhead (hidden 32, 8 tokens, {layers} layers run): modules {us['modules']:.1f} us/layer, "
          f"direct {us['direct']:.1f} us/layer ({us['modules'] / us['direct']:.2f}x)", flush=True)


def pools(pool: int, rounds: int):
    bert = benchlib.bert(N, 256, 4, 1024)
    enc = AdaptiveEncoder.from_model(bert)
    handles = []
    for batch in (1, 8):
        res = {"modules": [], "direct": []}
        for ps in benchlib.POOL_SEEDS:
            bs, ideal = benchlib.cpu_pool(N, ps, batch, size=pool)
            m = benchlib.ab_full_adaptive(enc, bs, {p: partial(_hooks, bert, p == "modules", handles) for p in res},
                                          rounds)
            for p in res:
                res[p].append((m[(p, 1)] / m[(p, 0)] / ideal, m[(p, 0)], m[(p, 1)]))
            print(f"batch {batch} pool {ps}: ideal {ideal:.2f}x; " + "; ".join(
                f"{p}: adaptive {m[(p, 0)]:.3f}s full {m[(p, 1)]:.3f}s" for p in res), flush=True)
        _hooks(bert, False, handles)
        print(f"batch {batch}: measured/ideal modules {statistics.mean(r[0] for r in res['modules']):.3f}, "
              f"direct {statistics.mean(r[0] for r in res['direct']):.3f}; adaptive time direct/modules "
              f"{statistics.mean(d[1] / mo[1] for d, mo in zip(res['direct'], res['modules'])):.3f}", flush=True)


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--pool", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    host_overhead(a.rounds)
    pools(a.pool, a.rounds)


if __name__ == "__main__":
    main()
