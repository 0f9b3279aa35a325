"""Where a pool's time goes, full depth against adaptive depth: torch.profiler self CPU time
per op, and the ATen calls per layer. Numbers in bench/NOTES.md ("Two more CPU levers").

    python bench/profile_pool.py [--batch 8]

The suite's CPU shape (hidden 256, 12 layers, fp32), TREC MI depths, pool 0 of 60 documents at
1/4 IMDB length, inference mode.
"""
import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
import benchlib  # noqa: E402
from adaptive_encoder import AdaptiveEncoder  # noqa: E402

N = 12


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    enc = AdaptiveEncoder.from_model(benchlib.bert(N, 256, 4, 1024))
    bs, ideal = benchlib.cpu_pool(N, 0, a.batch)
    self_ms, calls = {}, {}
    with torch.inference_mode():
        for name, deep in (("full", True), ("adaptive", False)):
            run = lambda: [enc(x, torch.where(m, N, 0) if deep else d, m) for d, m, x in bs]  # noqa: E731
            run()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run()
            self_ms[name] = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
            top = [e for e in prof.events() if e.name.startswith(("aten::", "adaptive_encoder::"))
                   and (e.cpu_parent is None or not e.cpu_parent.name.startswith(("aten::", "adaptive_encoder::")))]
            layers = sum(int((torch.where(m, N, 0) if deep else d).amax()) for d, m, _ in bs)
            calls[name] = len(top) / layers
    f, ad = (sum(self_ms[k].values()) for k in ("full", "adaptive"))
    print(f"batch {a.batch}, ideal {ideal:.2f}x; total self time: full {f:.0f} ms, adaptive {ad:.0f} ms -> {f / ad:.2f}x")
    print(f"top-level ATen calls per layer run: full {calls['full']:.1f}, adaptive {calls['adaptive']:.1f}")
    for k in sorted(self_ms["full"], key=lambda k: -self_ms["full"][k])[:12]:
        x, y = self_ms["full"][k], self_ms["adaptive"].get(k, 0.0)
        print(f"{k:50s} full {x:8.1f} ms  adaptive {y:8.1f} ms  ratio {x / y if y else float('inf'):.2f}")


if __name__ == "__main__":
    main()
