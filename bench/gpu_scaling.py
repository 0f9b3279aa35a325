"""Adaptive vs full depth as the batch grows: where the GPU stops being launch-bound.

    python bench/gpu_scaling.py [--batches 1 16 64 256] [--pool 256] [--rounds 3] [--N 12] [ARM FLAGS] [--out DIR]

ARM FLAGS each add models (ARMS below; `--help` lists every one with what it adds): --graphs,
--auto, --devplan, --host1, --stack, --flash, --dense, --eager-dense, --cudanorm, --unfused,
--dispatcher (described below, after the overview).

The suite's batch sweep stops at 15 (the paper's Figure 4). On a GPU, BERT-base over 1..15
IMDB-length documents is host-bound: the forward takes as long to issue as to run, so a model
that computes half the token-layers but launches more kernels (plan, gather, scatter) cannot
be faster. This script times the same pool of documents (benchlib's IMDB-like lengths, TREC
and MR depth sources, BERT-base in bf16 on a GPU, the suite's CPU shape otherwise) at larger
batches, all models interleaved in one run, and reports for each:

    samples/s, speed-up over `fixed` (our encoder at full depth), the FLOP-counted ideal,
    measured/ideal, and host/GPU: the time to issue the forward (Python and launches, no
    sync) over the time until the GPU is done. Near 1: launch-bound; well below 1: GPU-bound.
    Then that time to return per forward in ms (host ms: for a model whose plan is made on the
    device it includes the plan's wait for the GPU, once per forward; with a host-side plan it
    is the pure issue time), the first pass over the pool, timed alone (graph mode captures its
    layer graphs there), and for graph mode the graphs that pass captured.

--graphs adds mi+host (depths and mask given on the CPU: the plan is made on the host and the
forward never waits for the GPU) and fixed+graphs, mi+graphs (the same, with one CUDA graph
per layer: adaptive_encoder/graphs.py), against the eager runs in the same rounds. The timed
rounds replay the graphs the first pass captured (the same pool every round).
--devplan adds MI in graph mode with depths and mask on the GPU, as a patched model gets them:
mi+graphs-dev (graph mode copies them to the host in one transfer and plans there, the default)
and mi+graphs-devplan (planned on the GPU, ~45 launches and two waits: graphs.device_plan()).
--dense adds mi+graphs-dense: mi+graphs with every layer that has halted tokens run on the whole
compact state, its active rows written back (graphs.dense_layers(); a full-depth layer's
kernels). Where it beats mi+graphs, the GEMMs cost no less on fewer rows: that batch size
bounds graphs.DENSE_ROWS.
--eager-dense adds mi+dense: eager MI with the same dense layers (encoder.dense_layers(): full
depth's kernels, no gather, one q/k/v GEMM). Where it beats mi, the launches saved are worth more
than the rows computed for nothing: that batch size bounds encoder.DENSE_ROWS.
--unfused and --dispatcher add fixed and MI eager without one host-time cut each: torch's add and
LayerNorm instead of the fused kernel (norm.unfused()), and every kernel called through torch's
dispatcher (ops.via_dispatcher(); by default eager calls reach the kernels directly).
--cudanorm adds fixed+cudanorm, mi+cudanorm and mi+graphs-cudanorm: the fused add + LayerNorm by
the C++ CUDA kernel (norm.cuda_cpp(); eager at every size, where the Triton one runs from
norm.EAGER_ROWS real tokens only) against `fixed`, `mi` and `mi+graphs`.

Prints a table; with --out writes gpu_scaling.json there, rewritten after every batch size (a
run cut short keeps the batch sizes it finished).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import benchlib  # noqa: E402
import test_speed  # noqa: E402  (the suite's models and pool runner: the same thing is timed)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def host_fraction(run, repeats: int = 2) -> tuple:
    """Medians over repeats of (time to return from run() without a sync) / (time until done),
    and of that time to return itself (seconds)."""
    fracs, hosts = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            _sync()
            t0 = time.perf_counter()
            run()
            t_host = time.perf_counter() - t0
            _sync()
            fracs.append(t_host / (time.perf_counter() - t0))
            hosts.append(t_host)
    return statistics.median(fracs), statistics.median(hosts)


def _cache(N: int):
    """The graph cache of the suite's encoder of depth N (graph mode): captures, capture_errors."""
    from adaptive_encoder import graphs

    return graphs.cache_for(test_speed._stack(N)[1], benchlib.device())


# The optional arms: flag -> (models it adds, what they are).
G = test_speed.GRAPHS
ARMS = {
    "graphs": (["mi" + test_speed.HOST, "fixed" + G, "mi" + G],
               "MI with the plan on the host, fixed and MI in graph mode with it (adaptive_encoder/graphs.py)"),
    "auto": (["fixed" + test_speed.AUTO, "mi" + test_speed.AUTO],
             "fixed and MI with cuda_graphs=\"auto\" (graph mode up to graphs.AUTO_ROWS active rows per layer, "
             "eager above), depths and mask given on the GPU"),
    "devplan": (["mi" + G + "-dev", "mi" + G + "-devplan"],
                "MI in graph mode with depths and mask given on the GPU: copied to the host and planned there "
                "(the default), and planned on the GPU"),
    "host1": (["mi" + test_speed.HOST + "1", "mi" + G + "-host1"],
              "MI eager with the plan on the host, and MI in graph mode (which plans there), with torch on one CPU "
              "thread (is the host plan's loss at batch 16-128 contention from intra-op threads?)"),
    "stack": (["fixed" + G + "-layers"], "full depth in graph mode with one graph per layer (graphs.per_layer()) instead of "
                                         "one for the whole stack"),
    "flash": (["fixed" + test_speed.FLASH, "mi" + test_speed.FLASH, "mi" + G + "-flash"],
              "fixed and MI eager, and MI in graph mode, with PyTorch's FlashAttention-2 for attention (attention.FLASH)"),
    "dense": (["mi" + G + "-dense"], "MI in graph mode with dense layers (every layer with halted tokens on the whole "
                                     "state, active rows written back; graphs.DENSE_ROWS)"),
    "eager-dense": (["mi" + test_speed.DENSE], "MI eager with dense layers (encoder.DENSE_ROWS)"),
    "cudanorm": (["fixed" + test_speed.CUDANORM, "mi" + test_speed.CUDANORM, "mi" + G + "-cudanorm"],
                 "fixed and MI eager, and MI in graph mode, with the C++ CUDA add + LayerNorm instead of the Triton "
                 "kernel, eager at every size (norm.CUDA_CPP)"),
    "unfused": (["fixed" + test_speed.UNFUSED, "mi" + test_speed.UNFUSED],
                "fixed and MI eager with torch's add and LayerNorm instead of the fused kernel (adaptive_encoder/norm.py)"),
    "dispatcher": (["fixed" + test_speed.DISPATCHED, "mi" + test_speed.DISPATCHED],
                   "fixed and MI eager with every kernel called through torch's dispatcher, as before ops.DIRECT "
                   "(adaptive_encoder/ops.py)"),
}


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--models", nargs="+", default=["fixed", "mi", "mr_mi", "reconstruction", "hf_sdpa"])
    ap.add_argument("--pool", type=int, default=256, help="documents per pool (the same for every batch)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--N", type=int, nargs="+", default=[12], help="encoder depths (each its own table)")
    for flag, (models, what) in ARMS.items():
        ap.add_argument(f"--{flag}", action="store_true", help=f"also {', '.join(models)}: {what}")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    extra = [m for flag, (models, _) in ARMS.items() if getattr(a, flag.replace("-", "_")) for m in models]
    a.models += [m for m in extra if m not in a.models]
    rows = []
    print(f"device {benchlib.device()}, {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}; "
          f"shape {test_speed.SHAPE}; pool {a.pool} documents")
    for N in a.N:
        print(f"N = {N}")
        print(f"{'batch':>5} {'model':>18} {'samples/s':>10} {'speed-up':>8} {'ideal':>6} {'meas/ideal':>10} "
              f"{'host/GPU':>8} {'host ms':>7} {'active':>7} {'1st pass':>8} {'graphs':>6}")
        for batch in a.batches:
            rows += _batch_rows(a, N, batch)
            _write(a.out, rows)  # after every batch: a run cut by its time limit keeps what it measured


def _batch_rows(a, N: int, batch: int) -> list:
    """Every model of a.models on the pool at this N and batch size, timed interleaved: the rows."""
    runs, stats, rows = {}, {}, []
    for m in a.models:
        run, flops, full, real, depth_sum = test_speed._pool_run(m, N, batch, 0, a.pool)
        runs[m] = run
        stats[m] = dict(ideal=full / flops, active=depth_sum / (real * N), real=real)
    first, before = {}, _cache(N).captures  # the first pass over the pool, timed alone: graph mode captures there
    for m, run in runs.items():
        with torch.inference_mode():
            _sync()
            t0 = time.perf_counter()
            run()
            _sync()
            first[m] = time.perf_counter() - t0
    captures = _cache(N).captures - before  # by both graph-mode models (one encoder)
    med = benchlib.interleaved_medians(runs, rounds=a.rounds, warmup=0)
    forwards = -(-a.pool // batch)
    for m in a.models:
        host_over_gpu, host_s = host_fraction(runs[m])
        row = dict(batch=batch, model=m, N=N, pool=a.pool, seconds=med[m], samples_per_s=a.pool / med[m],
                   speedup=med["fixed"] / med[m] if "fixed" in med else float("nan"),
                   ideal=stats[m]["ideal"], active=stats[m]["active"], host_over_gpu=host_over_gpu,
                   host_ms_per_forward=host_s / forwards * 1e3, first_pass_s=first[m],
                   tokens_per_forward=stats[m]["real"] / forwards)  # K, the real tokens (graph mode's state rows)
        if test_speed._variant(m)[1]:
            row["graphs_captured"] = captures
            row["capture_errors"] = _cache(N).capture_errors[:3]  # keys that run eagerly instead
        row["measured_over_ideal"] = row["speedup"] / row["ideal"]
        rows.append(row)
        print(f"{batch:>5} {m:>18} {row['samples_per_s']:>10.1f} {row['speedup']:>8.2f} {row['ideal']:>6.2f} "
              f"{row['measured_over_ideal']:>10.2f} {row['host_over_gpu']:>8.2f} {row['host_ms_per_forward']:>7.2f} "
              f"{row['active']:>7.1%} "
              f"{row['first_pass_s']:>8.2f}" + (f" {captures:>6}" if test_speed._variant(m)[1] else ""),
              flush=True)
    if _cache(N).capture_errors:
        print(f"graph captures that failed (those layers ran eagerly): {len(_cache(N).capture_errors)}, "
              f"first: {_cache(N).capture_errors[0]}", flush=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


def _write(out, rows: list) -> None:
    if not out:
        return
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gpu_scaling.json"), "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                       command=" ".join(sys.argv), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
