"""A/B of a rejected CPU lever: every projection GEMM of the encoder (fused q/k/v, output,
FFN) with the weight stored transposed (torch.addmm(b, x, W^T), W^T cached) against F.linear. Numbers in bench/NOTES.md ("Two more
CPU levers"); the lever is not in the library (it needs a second copy of every weight).

    python bench/ab_transposed_weights.py

Same protocol as bench/ab_module_calls.py: hidden 256, 12 layers, fp32, TREC MI pools of 60
documents at 1/4 IMDB length, batch 1 and 8, adaptive and full depth interleaved; prints
measured speed-up over the FLOP ideal for each arm.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import benchlib  # noqa: E402
from adaptive_encoder import AdaptiveEncoder  # noqa: E402

N = 12


def main():
    enc = AdaptiveEncoder.from_model(benchlib.bert(N, 256, 4, 1024))
    plain = torch.nn.functional.linear
    benchlib.ab_linears(enc, {"plain": plain, "transposed": lambda x, w, b=None: _transposed_or(x, w, b, plain)},
                        batches=(1, 8))


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
