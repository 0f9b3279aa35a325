"""Where the host time of a forward goes: torch.profiler's self CPU time per op, per model.

    python bench/gpu_host_profile.py [--batches 1 16] [--forwards 20] [--models ...] [--out DIR]

Below ~30 IMDB documents a GPU forward is launch-bound (bench/NOTES.md, run 4: ~0.45 ms of
host work per layer, our full depth 6.2 ms per forward at batch 16 against transformers' 4.1).
This says where that host time goes, on the machine that has it: for each batch size and
model (bench/test_speed.py's definitions, BERT-base shapes, TREC MI depths on IMDB-like
lengths, N = 12), measured without the profiler: host ms (time to return, no sync) and total
ms (until the GPU is done) per forward; then under the profiler, per forward: kernel and graph
launches, host-device syncs, and the ops with the most self CPU time (microseconds); with
--kernels K, also the GPU time per forward and its K longest kernels.
Writes host_profile.txt (and prints it) and host_profile.json: per (batch, model) the times,
launches, syncs, GPU kernel time and the forward's counted FLOPs (full depth's too), from which
bench/targets.py splits an adaptive model's share of its FLOP ideal into the GPU kernels' share
and the time the GPU waits. On CPU the same with the suite's CPU shape.
"""
import argparse
import json
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
import test_speed  # noqa: E402
from adaptive_encoder.flops import encoder_flops  # noqa: E402

# Runtime calls that launch GPU work, and calls that wait for the GPU (as the profiler names them).
LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, forwards: int) -> tuple:
    """(host s, total s) per forward: the best of 3 runs of `forwards` calls."""
    best = (float("inf"), float("inf"))
    for _ in range(3):
        _sync()
        t0 = time.perf_counter()
        for _ in range(forwards):
            fn()
        host = time.perf_counter() - t0
        _sync()
        best = min(best, (host / forwards, (time.perf_counter() - t0) / forwards))
    return best


def profile_one(fn, forwards: int, top: int, kernels: int = 0) -> tuple:
    """(report lines, {launches, syncs, gpu_us, kernels} per forward; gpu_us None without --kernels
    or a GPU)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(forwards):
            fn()
        _sync()
    events = prof.key_averages()
    count = lambda names: sum(e.count for e in events if e.key in names) / forwards  # noqa: E731
    stats = dict(launches=count(LAUNCHES), syncs=count(SYNCS), gpu_us=None, kernels=None)
    lines = [f"    launches/forward {stats['launches']:.0f}, syncs/forward {stats['syncs']:.1f}"]
    ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    lines += [f"    {e.self_cpu_time_total / forwards:8.1f} us  {e.count / forwards:6.1f} calls  {e.key}" for e in ops]
    if kernels:
        lines += _kernel_lines(events, forwards, kernels, stats)
    return lines, stats


def _kernel_lines(events, forwards: int, top: int, stats: dict) -> list:
    """GPU time per forward: the kernels' total (into stats) and the `top` kernels by their own
    time (those replayed inside CUDA graphs too, where the profiler sees them), to compare one
    forward's GPU work between modes (H200 run 5: graph mode 0.80x eager at batch 128) and
    between depths (MI's kernel time against full depth's, beside the FLOP ratio)."""
    own = lambda e: getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)  # noqa: E731
    gpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA and own(e) > 0]
    if not gpu:
        return ["    GPU kernels: none recorded"]
    stats.update(gpu_us=sum(own(e) for e in gpu) / forwards, kernels=sum(e.count for e in gpu) / forwards)
    lines = [f"    GPU kernels: {stats['gpu_us']:.1f} us per forward, {stats['kernels']:.0f} kernels"]
    return lines + [f"    {own(e) / forwards:8.1f} us  {e.count / forwards:6.1f} calls  {e.key[:110]}"
                    for e in sorted(gpu, key=own, reverse=True)[:top]]


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--models", nargs="+",
                    default=["fixed", "mi", "mi+host", "fixed+graphs", "mi+graphs-dev", "hf_sdpa"])
    ap.add_argument("--forwards", type=int, default=20)
    ap.add_argument("--top", type=int, default=20, help="ops listed per model")
    ap.add_argument("--N", type=int, default=12)
    ap.add_argument("--kernels", type=int, default=0, help="also the GPU time per forward and this many kernels by time")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = benchlib.device()
    out = [f"device {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}; shape {test_speed.SHAPE}; "
           f"N = {a.N}; {a.forwards} forwards each; {' '.join(sys.argv)}"]
    print(out[0], flush=True)
    records, H, F = [], test_speed.SHAPE["hidden"], test_speed.SHAPE["ffn"]
    for batch in a.batches:
        for model in a.models:
            # The same documents (lengths follow the seed) for every model, each with its own depths.
            depths, mask = benchlib.make_batch(test_speed._base(model), a.N, batch, seed=batch,
                                               scale=test_speed.SHAPE["scale"])
            gen = torch.Generator().manual_seed(batch)
            x = torch.randn(*mask.shape, test_speed.SHAPE["hidden"], generator=gen).to(dev, test_speed.SHAPE["dtype"])
            fn = test_speed._runner(model, a.N, x, depths.to(dev), mask.to(dev))
            with torch.inference_mode():
                for _ in range(3):  # warm-up: Triton compiles, graph captures, cuBLAS workspaces
                    fn()
                host, total = _timed(fn, a.forwards)
                lines = [f"batch {batch} ({int(mask.sum())} tokens), {model}: host {host * 1e3:.2f} ms, "
                         f"total {total * 1e3:.2f} ms per forward (host/total {host / total:.2f})"]
                more, stats = profile_one(fn, a.forwards, a.top, a.kernels)
            print("\n".join(lines + more), flush=True)
            out += lines + more
            records.append(dict(batch=batch, model=model, N=a.N, tokens=int(mask.sum()), host_ms=host * 1e3,
                                total_ms=total * 1e3, flops=test_speed._flops(model, depths, mask, a.N),
                                full_flops=encoder_flops(depths, mask, a.N, H, F, adaptive=False), **stats))
            _write(a.out, out, records)  # after every model: a step cut by its time limit keeps what it measured


def _write(folder, lines: list, records: list) -> None:
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "host_profile.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(folder, "host_profile.json"), "w") as f:
        json.dump(dict(device=lines[0], records=records), f, indent=1)


if __name__ == "__main__":
    main()
