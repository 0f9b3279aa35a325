"""A/B of a rejected CPU lever: every projection GEMM of the encoder (fused q/k/v, output, FFN)
with MKL's packed GEMM (the weight packed once by cblas_sgemm_pack through
torch.ops.mkl._mkl_reorder_linear_weight, then cblas_sgemm_compute through
torch.ops.mkl._mkl_linear) against F.linear. Numbers in bench/NOTES.md ("What this CPU
allows"); the lever is not in the library (a packed copy of every weight, for ~5 % at batch 1
and nothing on measured / ideal). PyTorch uses a pack only for the row count it was packed
for; this script relies on MKL's packed B serving any row count, checked against F.linear.

    python bench/ab_packed_weights.py [--batches 1 8 15]

Same protocol as bench/ab_module_calls.py: hidden 256, 12 layers, fp32, TREC MI pools of 60
documents at 1/4 IMDB length, adaptive and full depth of both arms interleaved, 5 rounds (the
first dropped) per pool; prints seconds per pool and measured speed-up over the FLOP ideal.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import benchlib  # noqa: E402
from adaptive_encoder import AdaptiveEncoder  # noqa: E402

N = 12


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 15])
    a = ap.parse_args()
    enc = AdaptiveEncoder.from_model(benchlib.bert(N, 256, 4, 1024))
    plain = torch.nn.functional.linear
    arms = {"plain": plain, "packed": lambda x, w, b=None: _packed_or(x, w, b, plain)}
    with torch.inference_mode():  # the pack gives F.linear's numbers for any row count
        x, w, b = torch.randn(37, 256), torch.randn(1024, 256), torch.randn(1024)
        torch.testing.assert_close(_packed_or(x, w, b, plain), plain(x, w, b), rtol=1e-4, atol=1e-4)
    benchlib.ab_linears(enc, arms, a.batches)


_PACKS: dict = {}


def _packed_or(x, w, b, plain):
    """The packed GEMM for 2-D float32 inputs of 1..256 rows (above that the plain one is as
    fast); anything else as F.linear. Packs are cached by weight identity."""
    if x.dim() != 2 or x.dtype != torch.float32 or not 0 < x.shape[0] <= 256:
        return plain(x, w, b)
    hit = _PACKS.get(id(w))
    if hit is None or hit[0] is not w:
        hit = _PACKS[id(w)] = (w, torch.ops.mkl._mkl_reorder_linear_weight(w.contiguous(), 64))
    return torch.ops.mkl._mkl_linear(x, hit[1], w, b, x.shape[0])


if __name__ == "__main__":
    main()
