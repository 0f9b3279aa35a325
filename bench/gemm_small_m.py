"""CPU GEMM throughput at the small row counts the compact layers produce (bench/NOTES.md).

    python bench/gemm_small_m.py

For the benchmark's shapes (hidden 256, FFN 1024), GFLOP/s of F.linear (x @ W.T, the
weight as nn.Linear stores it) and of addmm with the weight pre-transposed to (in, out),
for M = 8 .. 128 rows. The compact layers at batch 1 run M of a few dozen.
"""
import time

import torch
import torch.nn.functional as F


def _seconds(fn, reps: int = 300) -> float:
    for _ in range(20):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main():
    torch.manual_seed(0)
    print("GFLOP/s, F.linear / addmm with the weight pre-transposed")
    for K, N in ((256, 1024), (1024, 256), (256, 512), (256, 256)):
        W, b = torch.randn(N, K), torch.randn(N)
        Wt = W.t().contiguous()
        cells = []
        for M in (8, 16, 27, 32, 53, 64, 128):
            x = torch.randn(M, K)
            with torch.inference_mode():
                lin = _seconds(lambda: F.linear(x, W, b))
                pre = _seconds(lambda: torch.addmm(b, x, Wt))
            cells.append(f"M={M}: {2 * M * K * N / lin / 1e9:.0f}/{2 * M * K * N / pre / 1e9:.0f}")
        print(f"in {K:4d} out {N:4d}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
