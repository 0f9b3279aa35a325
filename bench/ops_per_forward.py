"""Ops per forward and time per pool of the encoder in this checkout (CPU, inference).

    PYTHONPATH=<checkout> python bench/ops_per_forward.py
    TRITON_INTERPRET=1 python bench/ops_per_forward.py --backend triton [--unfused] [--dense] [--graphs]   (counts only)

On a GPU's launch-bound regime (bench/NOTES.md: every batch below ~30 IMDB documents on the
H200) the forward's time follows its op count, which this counts on CPU with a dispatch mode
(views, reshapes and slices left out: they launch nothing). 12 layers, hidden 256, FFN 1024,
fp32, `benchlib.cpu_pool` pool 0 (60 documents at a quarter of IMDB length), full depth and
TREC MI depths, batch 1 and 8; pool seconds the best of 3. To compare two versions, run it
in each checkout (with PYTHONPATH set to it), alternating, and read the spread between runs.
Prints one JSON line.
"""
import argparse
import contextlib
import json
import os
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(__file__))
import benchlib  # noqa: E402
import adaptive_encoder  # noqa: E402
from adaptive_encoder import AdaptiveEncoder  # noqa: E402

FREE = {"view", "reshape", "slice", "select", "chunk", "split", "_unsafe_view", "t", "transpose", "expand",
        "alias", "unsqueeze", "squeeze"}


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace != "aten" or func.__name__.split(".")[0] not in FREE:
            self.count += 1
        return func(*args, **(kwargs or {}))


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--backend", default=None,
                    help="the encoder's backend; 'triton' counts what a GPU runs (the Triton attention and the "
                         "fused add + LayerNorm; here through the interpreter: counts only, no times)")
    ap.add_argument("--unfused", action="store_true", help="with torch's add and LayerNorm (norm.unfused())")
    ap.add_argument("--dense", action="store_true",
                    help="with dense layers (encoder.dense_layers(); with --graphs, graphs.dense_layers())")
    ap.add_argument("--graphs", action="store_true",
                    help="graph mode (cuda_graphs=True): on CPU the graphs' stand-in replays the captured steps, so "
                         "the count is the kernels one forward's graphs hold (what a GPU runs per forward)")
    a = ap.parse_args()
    if a.backend == "triton" and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        ap.error("--backend triton on CPU: run with TRITON_INTERPRET=1 (read when triton is first imported)")
    from adaptive_encoder import encoder, graphs, norm

    enc = AdaptiveEncoder.from_model(benchlib.bert(12, 256, 4, 1024), backend=a.backend).eval()
    out = {"package": os.path.dirname(adaptive_encoder.__file__), "backend": a.backend or "default",
           "fused_norm": not a.unfused, "dense_layers": a.dense, "graphs": a.graphs}
    dense = graphs.dense_layers if a.graphs else encoder.dense_layers
    with norm.unfused() if a.unfused else contextlib.nullcontext(), \
            dense() if a.dense else contextlib.nullcontext():
        _count(enc, out, timed=a.backend != "triton", graphed=a.graphs)
    print(json.dumps(out))


def _count(enc, out: dict, timed: bool, graphed: bool = False) -> None:
    for batch in (1, 8):
        pool, _ = benchlib.cpu_pool(12, 0, batch)
        for name in ("fixed", "mi"):
            items = [(None if name == "fixed" else d, m, x) for d, m, x in pool]  # fixed: no depths
            with torch.inference_mode():
                counter = CountOps()
                for d, m, x in items[:3] if graphed else ():  # the captures (first calls) before counting
                    enc(x, d, m, cuda_graphs=True)
                with counter:
                    for d, m, x in items[:3]:
                        enc(x, d, m, cuda_graphs=graphed)
                times = []
                for _ in range(4 if timed else 0):  # the first round warms up
                    t0 = time.perf_counter()
                    for d, m, x in items:
                        enc(x, d, m, cuda_graphs=graphed)
                    times.append(time.perf_counter() - t0)
            out[f"{name} batch {batch}"] = dict(ops_per_forward=round(counter.count / 3, 1),
                                                pool_s=round(min(times[1:]), 4) if timed else None)


if __name__ == "__main__":
    main()
