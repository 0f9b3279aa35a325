"""Host work of a graph-mode forward, measured on CPU: everything but the layers' own kernels.

    python bench/graph_host_cpu.py [--rounds 5] [--count] [--batch B] [--dense] [--stack]

A tiny encoder (hidden 32, 12 layers, 8 tokens, batch 1) where the arithmetic is negligible.
Graph mode runs with a stand-in graph whose replay does nothing, so its time is what a GPU
host would spend per forward besides launching the graphs: the plan, the seal checks, the
table building and copies. Printed beside the eager forward, which does the same layers'
work through ~15 ops each. Both interleaved, best of `--rounds` x 300 calls.

--count also prints how many layer graphs gpu_scaling.py's pool (128 IMDB-length documents,
TREC MI and full depth, N = 12) needs at batch 1, 16, 64 and 128: the captures of its first
pass, counted from the plans' buckets (nothing runs), and the Triton attention programs per
forward (BERT-base: 12 heads, 64-row blocks) in graph mode, in eager mode and in the
sequences' own query blocks (the rest exit at once).
"""
import argparse
import os
import sys
import timeit

import torch

sys.path.insert(0, os.path.dirname(__file__))
import benchlib  # noqa: E402
from adaptive_encoder import AdaptiveEncoder, graphs  # noqa: E402


class _NoReplay:
    """A graph that runs the layer once (the capture call) and whose replay does nothing."""

    def run_and_capture(self, fn, pool=None, stream=None):
        fn()

    def replay(self):
        pass


def count_graphs(N: int = 12, pool: int = 128, heads: int = 12, block: int = 64) -> None:
    blocks = lambda n: -(-n // block)  # noqa: E731
    for batch in (1, 16, 64, 128):
        keys, forwards, programs = set(), 0, {"graph mode": 0, "eager": 0, "own blocks": 0}
        for model in ("fixed", "mi"):
            for depths, mask in benchlib.pool_batches(benchlib.make_pool(model, N, 0, pool, 1.0), batch):
                forwards += 1
                per_seq = [((depths > n) & mask).sum(1).tolist() for n in range(N)]
                counts = [sum(c) for c in per_seq if sum(c)]
                sizes = graphs.layer_sizes(counts, int(mask.sum()), *mask.shape)
                if graphs.STACK and all(s[0] in ("all", "dense") for s in sizes):  # one graph for the stack
                    keys.add(("stack", len(sizes), *sizes[0][1:]))
                else:
                    keys.update((n, *s) for n, s in enumerate(sizes))
                for s, seqs in zip(sizes, per_seq):  # grids: (blocks of max_q, sequences, heads)
                    programs["graph mode"] += blocks(s[3]) * s[2] * heads
                    programs["eager"] += blocks(max(seqs)) * len(seqs) * heads
                    programs["own blocks"] += sum(blocks(c) for c in seqs) * heads
        print(f"batch {batch}: {len(keys)} graphs (layers and stacks) for {forwards} forwards (fixed and MI, {pool} documents); "
              "attention programs per forward: "
              + ", ".join(f"{k} {v // forwards}" for k, v in programs.items()))


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--count", action="store_true", help="also count the graphs of gpu_scaling.py's pool")
    ap.add_argument("--batch", type=int, default=0,
                    help="graph mode only, on a batch of B IMDB-length documents with TREC MI depths "
                         "(default: one 8-token sequence, beside eager)")
    ap.add_argument("--dense", action="store_true",
                    help="also graph mode with dense layers (graphs.dense_layers(): every layer on the whole state)")
    ap.add_argument("--stack", action="store_true",
                    help="also full depth in graph mode, one graph for the stack (graphs.STACK) and one per layer "
                         "(graphs.per_layer())")
    a = ap.parse_args()
    enc = AdaptiveEncoder.from_model(benchlib.bert(12, 32, 2, 64))
    if a.batch:
        depths, mask = benchlib.make_batch("mi", 12, a.batch, seed=a.batch, scale=1.0)
    else:
        depths = torch.tensor([[12, 3, 5, 12, 1, 7, 9, 2]])
        mask = torch.ones(1, 8, dtype=torch.bool)
    x = torch.randn(*depths.shape, 32)
    graphs.cache_for(enc, x.device).graph_cls = _NoReplay
    best = {"graph mode, replays skipped": []} if a.batch else {"eager": [], "graph mode, replays skipped": []}
    if a.dense:
        best["graph mode, dense layers, replays skipped"] = []
    if a.stack:
        best["full depth, graph mode, one graph per stack, replays skipped"] = []
        best["full depth, graph mode, one graph per layer, replays skipped"] = []
    number = 20 if a.batch else 300

    def graphed():
        return enc(x, depths, mask, cuda_graphs=True)

    def dense():
        with graphs.dense_layers():
            return enc(x, depths, mask, cuda_graphs=True)

    def full_depth():
        return enc(x, None, mask, cuda_graphs=True)

    def full_depth_per_layer():
        with graphs.per_layer():
            return enc(x, None, mask, cuda_graphs=True)

    fns = {"eager": lambda: enc(x, depths, mask), "dense": dense, "per stack": full_depth,
           "per layer": full_depth_per_layer}
    with torch.inference_mode():
        graphed(), a.dense and dense(), a.stack and (full_depth(), full_depth_per_layer())  # captures
        for _ in range(a.rounds):
            for name in best:
                fn = next((f for key, f in fns.items() if key in name), graphed)
                best[name].append(min(timeit.repeat(fn, number=number, repeat=1)) / number)
    where = f"batch {a.batch}, {int(mask.sum())} tokens" if a.batch else "8 tokens"
    for name, times in best.items():
        print(f"{name}: {min(times) * 1e6:.0f} us per 12-layer forward ({where})")
    seal = graphs.cache_for(enc, x.device).seals[0]
    t = min(timeit.repeat(lambda: seal.holds(enc.layer[0]), number=3000, repeat=a.rounds)) / 3000
    print(f"seal check: {t * 1e6:.1f} us per layer")
    if a.count:
        count_graphs()


if __name__ == "__main__":
    main()
