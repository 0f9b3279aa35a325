"""A/B of a rejected CPU lever: every projection GEMM of the encoder (fused q/k/v, output,
FFN) with the weight stored transposed (torch.addmm(b, x, W^T), W^T cached) against F.linear. Numbers in bench/NOTES.md ("Two more
CPU levers"); the lever is not in the library (it needs a second copy of every weight).

    python bench/ab_transposed_weights.py

Same protocol as bench/ab_module_calls.py: hidden 256, 12 layers, fp32, TREC MI pools of 60
documents at 1/4 IMDB length, batch 1 and 8, adaptive and full depth interleaved; prints
measured speed-up over the FLOP ideal for each arm.
"""
import os
import statistics
import sys
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(__file__))
import benchlib  # noqa: E402
import adaptive_encoder.encoder as E  # noqa: E402
from adaptive_encoder import AdaptiveEncoder  # noqa: E402

N = 12


def main():
    enc = AdaptiveEncoder.from_model(benchlib.bert(N, 256, 4, 1024))
    plain_linear = torch.nn.functional.linear
    for batch in (1, 8):
        res = {"plain": [], "transposed": []}
        for ps in benchlib.POOL_SEEDS:
            bs, ideal = benchlib.cpu_pool(N, ps, batch)
            # every projection goes through torch.nn.functional.linear (encoder.F)
            transposed = lambda x, w, b, _p=plain_linear: _transposed_or(x, w, b, _p)  # noqa: E731
            m = benchlib.ab_full_adaptive(enc, bs, {"plain": partial(setattr, E.F, "linear", plain_linear),
                                                    "transposed": partial(setattr, E.F, "linear", transposed)},
                                          rounds=4)
            E.F.linear = plain_linear
            for p in res:
                res[p].append(m[(p, 1)] / m[(p, 0)] / ideal)
            print(f"batch {batch} pool {ps}: ideal {ideal:.2f}; " + "; ".join(
                f"{p}: adaptive {m[(p, 0)]:.3f}s full {m[(p, 1)]:.3f}s" for p in res), flush=True)
        print(f"batch {batch}: measured/ideal plain {statistics.mean(res['plain']):.3f} "
              f"transposed {statistics.mean(res['transposed']):.3f}", flush=True)


_WT: dict = {}


def _transposed_or(x, w, b, plain):
    """addmm with a cached W^T for 2-D inputs with a bias; anything else as F.linear."""
    if x.dim() != 2 or b is None:
        return plain(x, w, b)
    wt = _WT.get(id(w))
    if wt is None or wt[0] is not w:
        wt = _WT[id(w)] = (w, w.t().contiguous())
    return torch.addmm(b, x, wt[1])


if __name__ == "__main__":
    main()
