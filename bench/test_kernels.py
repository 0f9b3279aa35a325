"""gather / scatter / plan per backend across sizes, in GB/s next to the device's copy bandwidth;
the fused add + LayerNorm against the add and LayerNorm it replaces; varlen attention per
backend in TFLOP/s next to the padded reference.

Bytes counted (the fewest the op must move): gather reads and writes A rows (+ indices);
scatter (out of place) copies the R-row base and writes A rows from src (+ indices); scatter_
(in place, what the encoder runs under inference) reads and writes A rows (+ indices); plan
reads depths and mask and writes the row indices and offsets. The copy bandwidth is a large
tensor's clone, read plus write, measured in the same session.
gather / scatter / scatter_ are timed as the encoder calls them, with check=False: the public
ops' default bounds and uniqueness check waits for the device once per call, and H200 run 5
(bench/results/h200, which timed it) got a ~100-150 us floor per call from it at every size,
4k to 262k rows, whatever the backend.
On a GPU every kernel figure is the median over rounds of CALLS calls back to back between
two CUDA events, per call: the launches queue while earlier calls run, so a kernel of tens of
microseconds is not charged the host's launch gap before it. (A gather of 16k rows of 768
bf16 moves 25 MB each way, ~17 us at an H100's ~3 TB/s: about the host time per op in run 4,
20-30 us (0.45 ms per layer over ~15-20 ops), which one call between events would add to it.)
Attention FLOPs counted: 4 * heads * head_dim * sum over sequences of queries x keys (QK^T and
PV), on IMDB-like lengths, every token a query ("full") or the tokens of MI depth > N/2
("mi", compact queries against all keys). Each backend is timed interleaved with the padded
reference (backend "torch": what the encoder falls back to), whose time it reports beside its own.
On CPU the Triton kernels run only in the interpreter, a correctness tool: they are timed on
GPUs only.
"""
import contextlib
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
CALLS = 10 if GPU else 1  # calls per timed round (see above)


@functools.lru_cache(maxsize=1)
def copy_bandwidth() -> float:
    """Bytes/s of a device-to-device copy (read + write) of a large tensor."""
    n = (1 << 28) if GPU else (1 << 25)
    x = torch.empty(n, dtype=torch.uint8, device=DEV).random_()
    med = benchlib.interleaved_medians({"copy": lambda: x.clone()}, rounds=ROUNDS, calls=CALLS)["copy"]
    return 2 * n / med


def _randn(*shape, seed: int) -> torch.Tensor:
    """Random DTYPE values made on DEV (a 1M x 768 tensor made on the host and copied over took
    seconds of a GPU run's few minutes)."""
    return torch.randn(*shape, device=DEV, generator=torch.Generator(DEV).manual_seed(seed)).to(DTYPE)


def _record(benchmark, op, backend, R, nbytes, seconds):
    bw = copy_bandwidth()
    info = dict(group="kernels", op=op, backend=backend, rows=R, hidden=D, dtype=str(DTYPE), device=str(DEV),
                seconds=seconds, gbps=nbytes / seconds / 1e9, copy_gbps=bw / 1e9,
                fraction_of_copy_bw=nbytes / seconds / bw)
    benchmark.extra_info.update(info)
    benchlib.record(info)


@pytest.mark.parametrize("R", ROWS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["gather", "scatter", "scatter_"])
def test_gather_scatter_bandwidth(benchmark, op, backend, R):
    benchmark.group = f"kernels_{op}"
    gen = torch.Generator().manual_seed(R)
    x = _randn(R, D, seed=R)
    rows = torch.randperm(R, generator=gen)[: R // 4].sort().values.to(DEV)
    A, e = rows.numel(), x.element_size()
    if op == "gather":
        fn = functools.partial(ops.gather, x, rows, backend=backend, check=False)
        nbytes = 2 * A * D * e + 8 * A
    elif op == "scatter":
        src = _randn(A, D, seed=R + 1)
        fn = functools.partial(ops.scatter, x, src, rows, backend=backend, check=False)
        nbytes = 2 * R * D * e + 2 * A * D * e + 8 * A
    else:  # in place: the same rows rewritten each call
        src = _randn(A, D, seed=R + 1)
        fn = functools.partial(ops.scatter_, x, src, rows, backend=backend, check=False)
        nbytes = 2 * A * D * e + 8 * A
    med = benchlib.interleaved_medians({op: fn}, rounds=ROUNDS, calls=CALLS)[op]
    with torch.inference_mode():
        benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1)
    _record(benchmark, op, backend, R, nbytes, med)


@pytest.mark.parametrize("R", ROWS[:2] if GPU else ROWS[:1])
@pytest.mark.parametrize("form", ["add_layer_norm", "add_layer_norm_into_", "at_rows"])
@pytest.mark.parametrize("kernel", ["default", "cuda-cpp"] if GPU else ["default"])
def test_add_layer_norm(benchmark, form, R, kernel):
    """The fused closing step (adaptive_encoder/norm.py) against what it replaces, interleaved:
    the GEMM output plus the residual in place, torch's LayerNorm (and for the _into_ form the
    scatter of a quarter of the rows into a state; for at_rows, a dense layer's last step, the
    masked copy of half the rows back into a state of R rows, as graph mode did before).
    Bytes counted for the fused op: x and residual read, the output written, at the rows it
    writes (+ indices). kernel: the default one (Triton on a GPU), or on a GPU the C++ CUDA kernel
    (norm.cuda_cpp()); the record's backend says which ran."""
    from adaptive_encoder import norm

    benchmark.group = "kernels_norm"
    gen = torch.Generator().manual_seed(R)
    x, r = _randn(R, D, seed=R), _randn(R, D, seed=R + 1)
    w, b = torch.randn(D, generator=gen).to(DEV, DTYPE), torch.randn(D, generator=gen).to(DEV, DTYPE)
    state = _randn(4 * R, D, seed=R + 2)
    rows = torch.randperm(4 * R, generator=gen)[:R].to(DEV)
    ln = functools.partial(torch.nn.functional.layer_norm, normalized_shape=(D,), weight=w, bias=b, eps=1e-12)
    if form == "add_layer_norm":
        fns = {"fused": functools.partial(norm.add_layer_norm, x, r, w, b, 1e-12, backend=DEV.type),
               "unfused": lambda: ln(x.clone().add_(r))}
    elif form == "add_layer_norm_into_":
        fns = {"fused": functools.partial(norm.add_layer_norm_into_, state, x, r, w, b, 1e-12, rows,
                                          backend=DEV.type, check=False),
               "unfused": lambda: ops.scatter_(state, ln(x.clone().add_(r)), rows, check=False)}
    else:
        state, rows = state[:R], torch.randperm(R, generator=gen)[:R // 2].to(DEV)
        active = torch.zeros(R, 1, dtype=torch.bool, device=DEV)
        active[rows] = True
        fns = {"fused": functools.partial(norm.add_layer_norm_into_, state, x, r, w, b, 1e-12, rows, at_rows=True,
                                          backend=DEV.type, check=False),
               "unfused": lambda: torch.where(active, ln(x.clone().add_(r)), state, out=state)}
    fns["clone"] = x.clone  # the unfused arm's copy of x (x itself must stay), timed alone and taken off
    setting = norm.cuda_cpp() if kernel == "cuda-cpp" else contextlib.nullcontext()
    with torch.inference_mode(), setting:
        med = benchlib.interleaved_medians(fns, rounds=ROUNDS, calls=CALLS)
        benchmark.pedantic(fns["fused"], rounds=ROUNDS, warmup_rounds=1)
        used = norm.kernel_backend(x, DEV.type) or "torch"
    unfused = med["unfused"] - med["clone"]  # the encoder adds into the GEMM's fresh output: no copy
    A = rows.numel() if form == "at_rows" else R
    nbytes = 3 * A * D * x.element_size() + (8 * A if form != "add_layer_norm" else 0)
    bw = copy_bandwidth()
    info = dict(group="norm_kernel", op=form, backend=used, rows=R, hidden=D,
                dtype=str(DTYPE), device=str(DEV), seconds=med["fused"], unfused_seconds=unfused,
                speedup_over_unfused=unfused / med["fused"], gbps=nbytes / med["fused"] / 1e9, copy_gbps=bw / 1e9,
                fraction_of_copy_bw=nbytes / med["fused"] / bw)
    benchmark.extra_info.update(info)
    benchlib.record(info)


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
    med = benchlib.interleaved_medians({"plan": fn}, rounds=ROUNDS, calls=CALLS)["plan"]
    with torch.inference_mode():
        benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1)
    _record(benchmark, "plan", backend, B * T, nbytes, med)


# On CUDA tensors backend "cuda" runs the Triton kernel too. "aten_flash": PyTorch's own
# FlashAttention-2 varlen forward (bf16/fp16 only), timed beside ours as the bar a fused
# attention kernel can reach; the library does not call it.
ATTN_BACKENDS = ["triton", "aten_flash"] if GPU else ["cpu"]


def _aten_flash(q, k, v, cu_q, cu_k, max_q: int, max_k: int):
    """A call of aten::_flash_attention_forward (int32 offsets, no dropout, not causal)."""
    cq, ck, scale = cu_q.to(torch.int32), cu_k.to(torch.int32), q.shape[-1] ** -0.5
    return lambda: torch.ops.aten._flash_attention_forward(q, k, v, cq, ck, max_q, max_k, 0.0, False, False,
                                                           scale=scale)[0]


@pytest.mark.parametrize("B", [8, 64] if GPU else [8])
@pytest.mark.parametrize("queries", ["full", "mi"])
@pytest.mark.parametrize("backend", ATTN_BACKENDS)
def test_attention_throughput(benchmark, backend, queries, B):
    from adaptive_encoder.attention import varlen_attention

    benchmark.group = "kernels_attention"
    H, Dh, N = (12, 64, 12) if GPU else (4, 64, 12)
    depths, mask = benchlib.make_batch("mi", N, B, seed=B, scale=1.0 if GPU else 0.5)
    keys = mask.sum(1)
    active = mask & (depths > (0 if queries == "full" else N // 2))
    qlen = active.sum(1)
    cu = lambda n: torch.cat([n.new_zeros(1), n.cumsum(0)]).to(DEV)  # noqa: E731
    cu_q, cu_k = cu(qlen), cu(keys)
    gen = torch.Generator().manual_seed(B)
    q = torch.randn(int(qlen.sum()), H, Dh, generator=gen).to(DEV, DTYPE)
    k = torch.randn(int(keys.sum()), H, Dh, generator=gen).to(DEV, DTYPE)
    v = torch.randn(int(keys.sum()), H, Dh, generator=gen).to(DEV, DTYPE)
    args = (q, k, v, cu_q, cu_k, int(qlen.max()), int(keys.max()))
    fns = {name: functools.partial(varlen_attention, *args, backend=name) for name in (backend, "torch")}
    if backend == "aten_flash":
        fns[backend] = _aten_flash(*args)
        with torch.inference_mode():  # the same numbers as the reference (bf16 rounding), or the timing means nothing
            got, want = fns[backend]().float(), fns["torch"]().float()
        assert ((got - want).norm() / want.norm()).item() < 2e-2
    med = benchlib.interleaved_medians(fns, rounds=ROUNDS, calls=CALLS)
    with torch.inference_mode():
        benchmark.pedantic(fns[backend], rounds=ROUNDS, warmup_rounds=1)
    flops = 4 * H * Dh * int((qlen * keys).sum())
    info = dict(group="attention_kernel", op="varlen_attention", backend=backend, queries=queries, batch=B,
                heads=H, head_dim=Dh, dtype=str(DTYPE), device=str(DEV), query_rows=int(qlen.sum()),
                key_rows=int(keys.sum()), seconds=med[backend], reference_seconds=med["torch"],
                tflops=flops / med[backend] / 1e12, speedup_over_reference=med["torch"] / med[backend])
    benchmark.extra_info.update(info)
    benchlib.record(info)
