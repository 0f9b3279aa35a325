"""A/B of the C++ CPU varlen attention (one SDPA call per sequence, no padding) against the
padded reference, on an idle CPU (numbers in bench/NOTES.md).

    python bench/ab_cpu_attention.py [--batches 1 8 15]

The benchmark's encoder (hidden 256, 4 heads, FFN 1024, 12 layers, fp32) over its pools (60
documents at 1/4 IMDB length, TREC MI depths, 3 pools), fixed depth and MI depths, each with
both attention implementations, interleaved. Prints samples/s and measured / ideal speed-up.
"""
import argparse
import statistics
import sys

import torch

sys.path.insert(0, "bench")
import benchlib  # noqa: E402
from adaptive_encoder import AdaptiveEncoder, attention  # noqa: E402
from adaptive_encoder.flops import encoder_flops  # noqa: E402

N, D, H, F, POOL = 12, 256, 4, 1024, 60


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 15])
    a = ap.parse_args()
    if not attention._HAS_CPP:
        sys.exit("the C++ extension lacks varlen_attention: rebuild it (pip install -e . --no-build-isolation)")
    enc = AdaptiveEncoder.from_model(benchlib.bert(N, D, H, F))
    for batch in a.batches:
        rows = []
        for ps in benchlib.POOL_SEEDS:
            fixed_docs = benchlib.make_pool("fixed", N, ps, POOL, 0.25)
            mi_docs = benchlib.make_pool("mi", N, ps, POOL, 0.25)
            gen = torch.Generator().manual_seed(ps)
            fx = [(d, m, torch.randn(*m.shape, D, generator=gen)) for d, m in benchlib.pool_batches(fixed_docs, batch)]
            mi = [(d, m, x) for (d, m), (_, _, x) in zip(benchlib.pool_batches(mi_docs, batch), fx)]
            ideal = sum(encoder_flops(d, m, N, D, F, adaptive=False) for d, m, _ in mi) / \
                sum(encoder_flops(d, m, N, D, F) for d, m, _ in mi)

            def run(batches, cpp):
                def go():
                    attention._HAS_CPP = cpp
                    try:
                        for d, m, x in batches:
                            enc(x, d, m)
                    finally:
                        attention._HAS_CPP = True
                return go

            t = benchlib.interleaved_medians({"fixed_ref": run(fx, False), "fixed_cpp": run(fx, True),
                                              "mi_ref": run(mi, False), "mi_cpp": run(mi, True)}, rounds=5, warmup=1)
            rows.append({k: POOL / v for k, v in t.items()} | {"ideal": ideal,
                        "ratio_ref": t["fixed_ref"] / t["mi_ref"] / ideal, "ratio_cpp": t["fixed_cpp"] / t["mi_cpp"] / ideal})
        mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
        print(f"batch {batch}: samples/s fixed {mean['fixed_ref']:.1f} (padded reference) -> {mean['fixed_cpp']:.1f} (C++), "
              f"MI {mean['mi_ref']:.1f} -> {mean['mi_cpp']:.1f}; measured/ideal {mean['ratio_ref']:.3f} -> "
              f"{mean['ratio_cpp']:.3f} (ideal {mean['ideal']:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
