"""Where the gap between measured and FLOP-ideal adaptive speed-up comes from on this machine.
Four arms over the same pools, interleaved:

    full          AdaptiveEncoder at full depth
    adaptive      AdaptiveEncoder with TREC MI depths
    layers_only   the adaptive layers' own work (the same GEMMs and attention) on inputs gathered
                  beforehand: no plan, gather or scatter (bench/benchlib.py layer_inputs)
    active_only   each layer a dense layer on its active tokens alone (keys = queries; the K/V
                  of halted tokens not computed): less work than the exact forward, the least
                  any compaction scheme could do per layer

full / layers_only against full / adaptive is what the bookkeeping costs; the FLOP ideal
against full / layers_only is the same work running at a lower rate on fewer rows; full /
active_only is a ceiling for any scheme on this machine. Numbers in bench/NOTES.md ("What this
CPU allows").

    python bench/attainable_cpu.py [--batches 1 8 15]

Protocol of bench/ab_module_calls.py: hidden 256, 12 layers, fp32, TREC MI pools of 60
documents at 1/4 IMDB length, 3 pools, 5 rounds (the first dropped).
"""
import argparse
import os
import statistics
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
    for batch in a.batches:
        res = {k: [] for k in ("ideal", "adaptive", "layers_only", "active_only")}
        for ps in benchlib.POOL_SEEDS:
            bs, ideal = benchlib.cpu_pool(N, ps, batch)
            res["ideal"].append(ideal)
            exact = [benchlib.layer_inputs(enc, d, m, x) for d, m, x in bs]
            least = [benchlib.layer_inputs(enc, d, m, x, active_keys_only=True) for d, m, x in bs]
            runs = {
                "full": lambda: [enc(x, torch.where(m, N, 0), m) for d, m, x in bs],
                "adaptive": lambda: [enc(x, d, m) for d, m, x in bs],
                "layers_only": lambda: [benchlib.run_layers(enc, i) for i in exact],
                "active_only": lambda: [benchlib.run_layers(enc, i) for i in least],
            }
            s = benchlib.interleaved_medians(runs, rounds=4, warmup=1)
            for k in ("adaptive", "layers_only", "active_only"):
                res[k].append(s["full"] / s[k])
            print(f"batch {batch} pool {ps}: FLOP ideal {res['ideal'][-1]:.2f}x; full {s['full']:.3f}s; " + ", ".join(
                f"{k} {s[k]:.3f}s ({res[k][-1]:.2f}x)" for k in ("adaptive", "layers_only", "active_only")), flush=True)
        m = {k: statistics.mean(v) for k, v in res.items()}
        print(f"batch {batch}: speed-up over full depth: FLOP ideal {m['ideal']:.2f}x, adaptive {m['adaptive']:.2f}x, "
              f"layers only {m['layers_only']:.2f}x, active only {m['active_only']:.2f}x; adaptive / layers only "
              f"{m['adaptive'] / m['layers_only']:.2f}, layers only / ideal {m['layers_only'] / m['ideal']:.2f}",
              flush=True)


if __name__ == "__main__":
    main()
