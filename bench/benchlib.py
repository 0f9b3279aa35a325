"""Helpers for the benchmark suite: models, depth samples, side-by-side timing.

Timing: on CUDA with events around each call (after warm-up); on CPU with perf_counter.
Variants are timed interleaved (A, B, A, B, ...) so that all ratios come from one run
under the same machine state; the median of the rounds is reported.
"""
import os
import statistics
import time

import torch

QUICK = os.environ.get("BENCH_QUICK") == "1"
RESULTS: list[dict] = []  # filled by benchmarks, printed at the end of the session


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def time_call(fn) -> float:
    """Seconds of one call of fn()."""
    if torch.cuda.is_available():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_medians(fns: dict, rounds: int, warmup: int = 2) -> dict:
    """{name: median seconds}, each fn called `rounds` times, alternating between fns."""
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        times = {name: [] for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                times[name].append(time_call(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def bert(layers: int, hidden: int, heads: int, ffn: int, dtype=torch.float32, seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=ffn, max_position_embeddings=512, attn_implementation="sdpa")
    return BertModel(cfg).to(device(), dtype).eval()


def skewed_depths(B: int, T: int, N: int, seed: int = 0) -> torch.Tensor:
    """Depths with most tokens shallow (P(d) halving with d) and the first token of every
    sequence at N, so n_max = N: about a quarter of the token-layers active at N = 8."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.tensor([0.5 ** d for d in range(1, N + 1)])
    depths = torch.multinomial(p / p.sum(), B * T, replacement=True, generator=gen).view(B, T) + 1
    depths[:, 0] = N
    return depths
