"""gather / scatter / plan per backend across sizes, in GB/s next to the device's copy bandwidth.

Bytes counted (the fewest the op must move): gather reads and writes A rows (+ indices);
scatter (out of place) copies the R-row base and writes A rows from src (+ indices); plan
reads depths and mask and writes the row indices and offsets. The copy bandwidth is a large
tensor's clone, read plus write, measured in the same session.
On CPU the Triton kernels run only in the interpreter, a correctness tool: they are timed on
GPUs only.
"""
import functools

import pytest
import torch

import benchlib
from adaptive_encoder import ops

DEV = benchlib.device()
GPU = DEV.type == "cuda"
DTYPE = torch.bfloat16 if GPU else torch.float32
D = 768 if GPU else 256
ROWS = [4096, 65536] if benchlib.QUICK else ([4096, 65536, 262144, 1048576] if GPU else [4096, 32768, 131072])
BACKENDS = ["torch", DEV.type] + (["triton"] if GPU else [])
ROUNDS = 3 if benchlib.QUICK else 20


@functools.lru_cache(maxsize=1)
def copy_bandwidth() -> float:
    """Bytes/s of a device-to-device copy (read + write) of a large tensor."""
    n = (1 << 28) if GPU else (1 << 25)
    x = torch.empty(n, dtype=torch.uint8, device=DEV).random_()
    med = benchlib.interleaved_medians({"copy": lambda: x.clone()}, rounds=ROUNDS)["copy"]
    return 2 * n / med


def _record(benchmark, op, backend, R, nbytes, seconds):
    bw = copy_bandwidth()
    info = dict(group="kernels", op=op, backend=backend, rows=R, hidden=D, dtype=str(DTYPE), device=str(DEV),
                seconds=seconds, gbps=nbytes / seconds / 1e9, copy_gbps=bw / 1e9,
                fraction_of_copy_bw=nbytes / seconds / bw)
    benchmark.extra_info.update(info)
    benchlib.record(info)


@pytest.mark.parametrize("R", ROWS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["gather", "scatter"])
def test_gather_scatter_bandwidth(benchmark, op, backend, R):
    benchmark.group = f"kernels_{op}"
    gen = torch.Generator().manual_seed(R)
    x = torch.randn(R, D, generator=gen).to(DEV, DTYPE)
    rows = torch.randperm(R, generator=gen)[: R // 4].sort().values.to(DEV)
    A, e = rows.numel(), x.element_size()
    if op == "gather":
        fn = functools.partial(ops.gather, x, rows, backend=backend)
        nbytes = 2 * A * D * e + 8 * A
    else:
        src = torch.randn(A, D, generator=gen).to(DEV, DTYPE)
        fn = functools.partial(ops.scatter, x, src, rows, backend=backend)
        nbytes = 2 * R * D * e + 2 * A * D * e + 8 * A
    med = benchlib.interleaved_medians({op: fn}, rounds=ROUNDS)[op]
    with torch.inference_mode():
        benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1)
    _record(benchmark, op, backend, R, nbytes, med)


@pytest.mark.parametrize("B", [8, 64] if benchlib.QUICK else [1, 8, 64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_plan(benchmark, backend, B):
    benchmark.group = "kernels_plan"
    T, N = 512, 12
    depths, mask = benchlib.make_batch("mi", N, B, seed=B, scale=1.0)
    depths = torch.nn.functional.pad(depths, (0, T - depths.shape[1]))
    mask = torch.nn.functional.pad(mask, (0, T - mask.shape[1]))
    depths, mask = depths.to(DEV), mask.to(DEV)
    fn = functools.partial(ops.plan, depths, mask, N, backend=backend)
    rows, _ = fn()
    nbytes = depths.numel() * 9 + rows.numel() * 8 + (N * B + 1) * 8
    med = benchlib.interleaved_medians({"plan": fn}, rounds=ROUNDS)["plan"]
    with torch.inference_mode():
        benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1)
    _record(benchmark, "plan", backend, B * T, nbytes, med)
