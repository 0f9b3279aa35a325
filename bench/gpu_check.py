"""Correctness on the GPU, every backend against the reference, in one short run.

    python bench/gpu_check.py --out DIR [--smoke]

On a GPU: plan / gather / scatter on the `cuda` and `triton` backends (fp32, bf16, fp16;
hidden 768, 384, 1000, 1; empty row sets; 120k rows), Triton varlen attention (with and
without MPNet's relative bias) and the fused add + LayerNorm against float64, the encoder
against the dense masked
reference (fp32 tight, bf16 loose) and against transformers' BertModel at full depth, and
gradients through gather/scatter (gradcheck, float64), and the encoder with its kernels called
directly against the same through torch's dispatcher. `--smoke` runs the same checks on CPU
with tiny shapes (C++ `cpu` backend, Triton through the interpreter).

Writes DIR/correctness.json ({check: {"ok", "max_err", "seconds", ...}}), prints one line per
check, exits 1 if any check failed.
"""
import argparse
import json
import os
import sys
import time
import traceback
from contextlib import nullcontext

import torch

SMOKE = "--smoke" in sys.argv or not torch.cuda.is_available()
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports a @triton.jit kernel

from adaptive_encoder import AdaptiveEncoder, attention, encoder, norm, ops, reference  # noqa: E402
from adaptive_encoder.attention import varlen_attention  # noqa: E402
from adaptive_encoder.dense import masked_forward  # noqa: E402

DEV = torch.device("cpu" if SMOKE else "cuda")
NATIVE = "cpu" if SMOKE else "cuda"
BACKENDS = [NATIVE, "triton"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
RESULTS: dict = {}
# Tiny on CPU; BERT-base (hidden 768, 12 heads, FFN 3072, 12 layers) on a GPU.
SHAPE = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=4) if SMOKE else \
    dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=12)


CHECKS: list = []


def check(name):
    """Register a check; main() runs them in order."""
    def wrap(fn):
        CHECKS.append((name, fn))
        return fn
    return wrap


def run_check(name, fn) -> None:
    t0 = time.perf_counter()
    try:
        info = fn() or {}
        ok = bool(info.pop("ok", True))
    except Exception as e:  # a failing check is reported, the others still run
        info, ok = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]}, False
    if DEV.type == "cuda":
        torch.cuda.synchronize()
    RESULTS[name] = {"ok": ok, "seconds": round(time.perf_counter() - t0, 3), **info}
    print(f"{'ok  ' if ok else 'FAIL'} {name:<42} {RESULTS[name]['seconds']:>7.2f}s  "
          + " ".join(f"{k}={v}" for k, v in info.items() if k != "trace"), flush=True)


def rel_err(a, b, mask=None):
    a, b = a.double(), b.double()
    if mask is not None:
        a, b = a[mask], b[mask]
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


@check("gather/scatter bitwise, 3 dtypes x 4 widths")
def _rows():
    gen = torch.Generator().manual_seed(0)
    R = 300 if SMOKE else 4096
    worst = 0
    for backend in BACKENDS:
        for dtype in DTYPES:
            for D in (768, 384, 1000, 1):
                x = torch.randn(R, D, generator=gen).to(DEV, dtype)
                for A in (0, R // 3, R):
                    rows = torch.randperm(R, generator=gen)[:A].to(DEV)
                    src = torch.randn(A, D, generator=gen).to(DEV, dtype)
                    assert torch.equal(ops.gather(x, rows, backend=backend), reference.gather(x, rows)), \
                        (backend, dtype, D, A)
                    assert torch.equal(ops.scatter(x, src, rows, backend=backend), reference.scatter(x, src, rows)), \
                        (backend, dtype, D, A)
                    base = x.clone()
                    ops.scatter_(base, src, rows, backend=backend)  # in place (inference)
                    assert torch.equal(base, reference.scatter(x, src, rows)), ("scatter_", backend, dtype, D, A)
                    worst += 1
    return {"cases": worst}


@check("gather/scatter 120k rows of 768 bf16")
def _big():
    R = 3000 if SMOKE else 120_000
    x = torch.randn(R, 768, device=DEV).to(torch.bfloat16)
    rows = torch.randperm(R, device=DEV)[: R // 2]
    src = torch.randn(rows.numel(), 768, device=DEV).to(torch.bfloat16)
    for backend in BACKENDS:
        assert torch.equal(ops.gather(x, rows, backend=backend), x[rows]), backend
        assert torch.equal(ops.scatter(x, src, rows, backend=backend), x.index_copy(0, rows, src)), backend
    return {"rows": R}


@check("bounds: bad rows refused, kernels masked")
def _bounds():
    x = torch.randn(4, 8, device=DEV)
    for backend in BACKENDS:
        for bad in ([4], [-1], [100000]):
            r = torch.tensor(bad, device=DEV)
            try:
                ops.gather(x, r, backend=backend)
            except ValueError:
                pass
            else:
                raise AssertionError(f"{backend} gather took row {bad}")
        if backend != "cpu":  # unchecked: out-of-range reads give zeros, writes are dropped
            out = ops.gather(x, torch.tensor([1, 7, -3], device=DEV), backend=backend, check=False)
            assert torch.equal(out[0], x[1]) and not out[1:].any(), backend
    return {}


@check("plan vs reference")
def _plan():
    gen = torch.Generator().manual_seed(1)
    B, T, L = (3, 40, 12) if SMOKE else (15, 512, 12)
    depths = torch.randint(0, L + 1, (B, T), generator=gen).to(DEV)
    mask = (torch.arange(T)[None] < torch.randint(1, T + 1, (B,), generator=gen)[:, None]).to(DEV)
    ref = reference.plan(depths, mask, L)
    for backend in BACKENDS:
        got = ops.plan(depths, mask, L, backend=backend)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), backend
    return {"shape": [B, T, L]}


def _attn_case(dtype, bias: bool, gen):
    B, H, Dh = (2, 2, 64) if SMOKE else (8, 12, 64)
    maxlen = 40 if SMOKE else 512
    k_len = torch.randint(1, maxlen + 1, (B,), generator=gen)
    q_len = torch.minimum(k_len, torch.randint(0, maxlen + 1, (B,), generator=gen))
    cu_k = torch.cat([torch.zeros(1, dtype=torch.long), k_len.cumsum(0)]).to(DEV)
    cu_q = torch.cat([torch.zeros(1, dtype=torch.long), q_len.cumsum(0)]).to(DEV)
    q = torch.randn(int(cu_q[-1]), H, Dh, generator=gen).to(DEV, dtype)
    k = torch.randn(int(cu_k[-1]), H, Dh, generator=gen).to(DEV, dtype)
    v = torch.randn(int(cu_k[-1]), H, Dh, generator=gen).to(DEV, dtype)
    extra = None
    if bias:
        P = maxlen
        dist = torch.randn(2 * P - 1, H, generator=gen).to(DEV, dtype)
        k_pos = torch.cat([torch.arange(int(n)) for n in k_len]).to(DEV)
        q_pos = torch.cat([torch.arange(int(n)) for n in q_len]).to(DEV)
        extra = (dist, q_pos, k_pos)
    out = varlen_attention(q, k, v, cu_q, cu_k, int(q_len.max()), int(k_len.max()), backend="triton", bias=extra)
    ref = reference.varlen_attention(q.double(), k.double(), v.double(), cu_q, cu_k, int(q_len.max()),
                                     int(k_len.max()), bias=None if extra is None else
                                     (extra[0].double(), extra[1], extra[2]))
    return rel_err(out, ref)


@check("triton varlen attention vs float64")
def _attention():
    gen = torch.Generator().manual_seed(2)
    errs = {}
    with torch.no_grad():
        for dtype in DTYPES:
            for bias in (False, True):
                errs[f"{str(dtype)[6:]}{'+bias' if bias else ''}"] = _attn_case(dtype, bias, gen)
    tol = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 5e-3}
    ok = all(e < tol[name.split("+")[0]] for name, e in errs.items())
    return {"ok": ok, "rel_err": {k: f"{v:.1e}" for k, v in errs.items()}}


def _norm_kernels():
    """(name, backend, setting) for each add + LayerNorm kernel here: every backend's, and on a GPU
    the C++ CUDA kernel too (backend "cuda" under norm.cuda_cpp(); checked to be the one that runs)."""
    out = [(b, b, nullcontext) for b in BACKENDS]
    if DEV.type == "cuda":
        with norm.cuda_cpp():
            assert norm.kernel_backend(torch.zeros(2, 8, device=DEV), "cuda") == "cuda", "C++ CUDA norm missing"
        out.append(("cuda-cpp", "cuda", norm.cuda_cpp))
    return out


def _norm_case(backend: str, dtype, D: int, R: int) -> float:
    """Worst relative error against float64 of the three forms on R random rows of width D."""
    x, r = (torch.randn(R, D, device=DEV).to(dtype) for _ in range(2))
    w, b = (torch.randn(D, device=DEV).to(dtype) for _ in range(2))
    want = reference.add_layer_norm(x.double(), r.double(), w.double(), b.double(), 1e-5)
    got = norm.add_layer_norm(x, r, w, b, 1e-5, backend=backend)
    base = torch.full((2 * R, D), float("nan"), device=DEV, dtype=dtype)
    rows = torch.randperm(2 * R, device=DEV)[:R]
    norm.add_layer_norm_into_(base, x, r, w, b, 1e-5, rows, backend=backend)
    others = torch.ones(2 * R, dtype=torch.bool, device=DEV)
    others[rows] = False
    assert torch.isnan(base[others]).all(), (backend, dtype, D, "wrote outside its rows")
    at = torch.full_like(base, float("nan"))
    x2, r2 = (torch.zeros_like(base).index_copy_(0, rows, t) for t in (x, r))  # x, r at rows
    norm.add_layer_norm_into_(at, x2, r2, w, b, 1e-5, rows, at_rows=True, backend=backend)
    assert torch.isnan(at[others]).all(), (backend, dtype, D, "at_rows wrote outside its rows")
    return max(rel_err(got, want), rel_err(base[rows], want), rel_err(at[rows], want))


@check("fused add + LayerNorm vs float64")
def _norm():
    """adaptive_encoder/norm.py's kernels (Triton and C++ CUDA on a GPU, C++ in smoke runs) on every
    dtype and width, functional, into a state's rows and read at those rows too (at_rows; the other
    rows stay NaN either way), and 120k rows of 768 bf16."""
    torch.manual_seed(4)
    errs, cases = {}, [(dtype, D, 300 if SMOKE else 4096) for dtype in DTYPES for D in (768, 384, 1000, 1)]
    cases.append((torch.bfloat16, 768, 3000 if SMOKE else 120_000))
    with torch.no_grad():
        for kernel, backend, setting in _norm_kernels():
            with setting():
                for dtype, D, R in cases:
                    errs[f"{kernel}/{str(dtype)[6:]}/{D}x{R}"] = _norm_case(backend, dtype, D, R)
    tol = {"float32": 1e-5, "bfloat16": 1e-2, "float16": 2e-3}
    worst = {}
    for name, e in errs.items():
        key = "/".join(name.split("/")[:2])  # kernel/dtype
        worst[key] = max(worst.get(key, 0.0), e)
    ok = all(e < tol[name.split("/")[1]] for name, e in errs.items())
    return {"ok": ok, "worst_rel_err": {k: f"{v:.1e}" for k, v in worst.items()}, "cases": len(errs)}


def _bert(dtype):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(**SHAPE, max_position_embeddings=512, attn_implementation="sdpa")
    return BertModel(cfg).to(DEV, dtype).eval()


def _mpnet():
    """MPNet (a relative position bias inside the varlen attention), float32, a random bias table."""
    from transformers import MPNetConfig, MPNetModel

    torch.manual_seed(0)
    mp = MPNetModel(MPNetConfig(**SHAPE, vocab_size=1000, max_position_embeddings=514)).to(DEV).eval()
    mp.encoder.relative_attention_bias.weight.normal_(0, 1)
    return mp


def _batch(N, dtype, hidden):
    gen = torch.Generator().manual_seed(3)
    B, T = (3, 24) if SMOKE else (8, 384)
    depths = torch.randint(1, N + 1, (B, T), generator=gen).to(DEV)
    mask = (torch.arange(T)[None] < torch.randint(T // 4, T + 1, (B,), generator=gen)[:, None]).to(DEV)
    x = torch.randn(B, T, hidden, generator=gen).to(DEV, dtype)
    return x, depths, mask


def _bert_encoders():
    """(tag "dtype/backend", BertModel, its AdaptiveEncoder, x, depths, mask) for float32 and
    bfloat16 and every backend: what the encoder and graph-mode checks run on."""
    for dtype in (torch.float32, torch.bfloat16):
        bert = _bert(dtype)
        x, depths, mask = _batch(bert.config.num_hidden_layers, dtype, bert.config.hidden_size)
        for backend in BACKENDS:
            yield f"{str(dtype)[6:]}/{backend}", bert, AdaptiveEncoder.from_model(bert, backend=backend), x, depths, mask


@check("encoder vs dense reference, BertModel, MPNet")
def _encoder():
    """Mixed depths with compact layers and with dense ones (encoder.dense_layers()), and full
    depth against transformers."""
    errs = {}
    with torch.no_grad():
        for tag, bert, enc, x, depths, mask in _bert_encoders():
            ref = masked_forward(bert, x, depths, mask)
            errs[f"{tag}/mixed"] = rel_err(enc(x, depths, mask).last_hidden_state, ref, mask)
            with encoder.dense_layers():
                errs[f"{tag}/mixed-dense"] = rel_err(enc(x, depths, mask).last_hidden_state, ref, mask)
            with norm.eager_rows(0), torch.inference_mode():  # the eager fused add + LayerNorm at this size
                errs[f"{tag}/mixed-fused"] = rel_err(enc(x, depths, mask).last_hidden_state, ref, mask)
            if tag.endswith("/cuda"):  # the C++ CUDA add + LayerNorm (norm.CUDA_CPP), eager and in graph mode
                with norm.cuda_cpp(), torch.inference_mode():
                    errs[f"{tag}/mixed-cudanorm"] = rel_err(enc(x, depths, mask).last_hidden_state, ref, mask)
                    errs[f"{tag}/mixed-cudanorm+graphs"] = rel_err(
                        enc(x, depths, mask, cuda_graphs=True).last_hidden_state, ref, mask)
            if x.dtype == torch.bfloat16 and DEV.type == "cuda":  # attention.FLASH: PyTorch's FlashAttention-2
                with attention.flash():
                    errs[f"{tag}/mixed-flash"] = rel_err(enc(x, depths, mask).last_hidden_state, ref, mask)
                    with torch.inference_mode():
                        errs[f"{tag}/mixed-flash+graphs"] = rel_err(
                            enc(x, depths, mask, cuda_graphs=True).last_hidden_state, ref, mask)
            full = enc(x, None, mask).last_hidden_state
            additive = torch.zeros(mask.shape[0], 1, 1, mask.shape[1], device=DEV, dtype=x.dtype)
            additive.masked_fill_(~mask[:, None, None, :], torch.finfo(x.dtype).min)
            hf = bert.encoder(x, attention_mask=additive).last_hidden_state
            errs[f"{tag}/full-vs-hf"] = rel_err(full, hf, mask)
        mp = _mpnet()
        x, depths, mask = _batch(mp.config.num_hidden_layers, torch.float32, mp.config.hidden_size)
        for backend in BACKENDS:
            out = AdaptiveEncoder.from_model(mp, backend=backend)(x, depths, mask).last_hidden_state
            errs[f"mpnet/float32/{backend}/mixed"] = rel_err(out, masked_forward(mp, x, depths, mask), mask)
    ok = all(e < (3e-2 if "bfloat16" in name else 1e-4) for name, e in errs.items())
    return {"ok": ok, "rel_err": {k: f"{v:.1e}" for k, v in errs.items()}}


@check("kernels called directly = through the dispatcher")
def _direct():
    """The encoder's eager forward with its kernels called directly (ops.DIRECT, the default)
    against the same forward with every kernel behind its custom op (ops.via_dispatcher()),
    under inference_mode and no_grad: the same kernels, so the same numbers (bitwise expected;
    the tolerance only allows for a GEMM that is not deterministic run to run)."""
    errs, bitwise = {}, {}
    for tag, bert, enc, x, depths, mask in _bert_encoders():
        for mode in (torch.inference_mode, torch.no_grad):
            with mode():
                got = enc(x, depths, mask).last_hidden_state
                with ops.via_dispatcher():
                    want = enc(x, depths, mask).last_hidden_state
            key = f"{tag}/{mode.__name__}"
            errs[key], bitwise[key] = rel_err(got, want, mask), bool(torch.equal(got[mask], want[mask]))
    ok = all(e < (1e-2 if "bfloat16" in name else 1e-5) for name, e in errs.items())
    return {"ok": ok, "rel_err": {k: f"{v:.1e}" for k, v in errs.items()}, "bitwise": bitwise}


class _no_sync:
    """torch.cuda.set_sync_debug_mode("error") inside: any op that waits for the GPU raises."""

    def __enter__(self):
        if DEV.type == "cuda":
            torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        if DEV.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)


@check("graph mode vs eager: capture, then replays")
def _graphs():
    """One CUDA graph per layer (adaptive_encoder/graphs.py): the first batch captures, the
    next ones (other data and depths, the same buckets) replay; each against eager. Then the
    last batch with depths and mask on the CPU (a host-side plan), eager and graphed, with no
    device sync allowed."""
    from adaptive_encoder import graphs, settings

    errs, replays, capture_errors = {}, {}, []
    with torch.inference_mode():
        for tag, bert, enc, x, depths, mask in _bert_encoders():
            N = bert.config.num_hidden_layers
            gen = torch.Generator().manual_seed(7)
            for i in range(3):  # 0: captures; 1: new data, same depths; 2: new depths too
                xi = x if i == 0 else torch.randn(x.shape, generator=gen).to(DEV, x.dtype)
                di = depths if i < 2 else torch.randint(1, N + 1, depths.shape, generator=gen).to(DEV)
                got = enc(xi, di, mask, cuda_graphs=True).last_hidden_state
                want = enc(xi, di, mask).last_hidden_state
                errs[f"{tag}/batch{i}"] = rel_err(got, want, mask)
            # Depths on the GPU are planned on the host (copied there first); the device plan
            # is kept for graphs.device_plan() (gpu_scaling's "+graphs-devplan").
            with graphs.device_plan():
                got = enc(xi, di, mask, cuda_graphs=True).last_hidden_state
            errs[f"{tag}/device-plan+graphs"] = rel_err(got, want, mask)
            with graphs.device_plan(), graphs.dense_layers():  # dense layers' tables built on the GPU
                got = enc(xi, di, mask, cuda_graphs=True).last_hidden_state
            errs[f"{tag}/device-plan+dense+graphs"] = rel_err(got, want, mask)
            # Full depth: every layer on the whole state, one graph for the stack (graphs.STACK),
            # captured, then replayed with other data; and one graph per layer (per_layer()).
            full = enc(xi, None, mask).last_hidden_state
            for j, xs in enumerate((xi, x)):
                errs[f"{tag}/full-depth-stack{j}"] = rel_err(enc(xs, None, mask, cuda_graphs=True).last_hidden_state,
                                                             full if j == 0 else enc(xs, None, mask).last_hidden_state,
                                                             mask)
            with graphs.per_layer():
                errs[f"{tag}/full-depth-per-layer"] = rel_err(enc(xi, None, mask, cuda_graphs=True).last_hidden_state,
                                                              full, mask)
            cache = graphs.cache_for(enc, DEV)
            # cuda_graphs="auto": graph mode at this size on a GPU (it replays; eager on CPU, the
            # smoke run), eager with AUTO_ROWS at 0
            before = cache.replays
            got = enc(xi, di, mask, cuda_graphs="auto").last_hidden_state
            routed = (cache.replays > before) == (DEV.type == "cuda")
            errs[f"{tag}/auto"] = rel_err(got, want, mask) + (0.0 if routed else float("inf"))
            with settings.switched(vars(graphs), "AUTO_ROWS", 0):
                before = cache.replays
                got = enc(xi, di, mask, cuda_graphs="auto").last_hidden_state
            errs[f"{tag}/auto-eager"] = rel_err(got, want, mask) + (0.0 if cache.replays == before else float("inf"))
            replays[tag] = (cache.captures, cache.replays)
            capture_errors += cache.capture_errors
            # Depths and mask on the CPU: the plan is made on the host and, once the graphs
            # exist, the forward never waits for the GPU (sync debug mode raises if it does).
            # Dense layers (graphs.DENSE_ROWS: every layer with halted tokens on the whole state,
            # active rows written back) the same way: captured, then replayed without a wait.
            hd, hm = di.cpu(), mask.cpu()
            for arm in ("", "+graphs", "+dense+graphs"):
                with graphs.dense_layers() if arm == "+dense+graphs" else nullcontext():
                    enc(xi, hd, hm, cuda_graphs=bool(arm))  # warm-up: captures, Triton compiles
                    with _no_sync():
                        got = enc(xi, hd, hm, cuda_graphs=bool(arm)).last_hidden_state
                errs[f"{tag}/host-plan{arm}"] = rel_err(got, want, mask)
        mp = _mpnet()  # the relative position bias, in graph mode
        x, depths, mask = _batch(mp.config.num_hidden_layers, torch.float32, mp.config.hidden_size)
        for backend in BACKENDS:
            enc = AdaptiveEncoder.from_model(mp, backend=backend)
            for i in range(2):
                xi = x if i == 0 else x.flip(0)
                got = enc(xi, depths, mask, cuda_graphs=True).last_hidden_state
                errs[f"mpnet/float32/{backend}/batch{i}"] = rel_err(got, enc(xi, depths, mask).last_hidden_state, mask)
            capture_errors += graphs.cache_for(enc, DEV).capture_errors
    ok = all(e < (2e-2 if "bfloat16" in name else 1e-5) for name, e in errs.items()) \
        and all(r >= N for _, r in replays.values()) and not capture_errors  # batch 1 replays batch 0's layers
    return {"ok": ok, "rel_err": {k: f"{v:.1e}" for k, v in errs.items()},
            "captures_replays": {k: list(v) for k, v in replays.items()}, "capture_errors": capture_errors[:5]}


@check("gradcheck through gather/scatter")
def _grad():
    for backend in BACKENDS:
        x = torch.randn(9, 5, device=DEV, dtype=torch.float64, requires_grad=True)
        src = torch.randn(4, 5, device=DEV, dtype=torch.float64, requires_grad=True)
        rows = torch.tensor([7, 0, 3, 5], device=DEV)
        assert torch.autograd.gradcheck(lambda a: ops.gather(a, rows, backend=backend), (x,)), backend
        assert torch.autograd.gradcheck(lambda a, b: ops.scatter(a, b, rows, backend=backend), (x, src)), backend
    return {}


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--out", required=True, help="folder for correctness.json")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (the Triton interpreter)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, fn in CHECKS:
        run_check(name, fn)
        # after every check: a stage cut by its time limit still leaves the checks it finished
        with open(os.path.join(args.out, "correctness.json"), "w") as f:
            json.dump({"device": torch.cuda.get_device_name() if not SMOKE else "cpu (smoke)", "checks": RESULTS,
                       "complete": len(RESULTS) == len(CHECKS)}, f, indent=1)
    failed = [k for k, v in RESULTS.items() if not v["ok"]]
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
