"""Speed vs maximum depth N (batch 1; paper's Figure 3b) and vs batch size (N = 12; Figure 4).

The paper's speed is the number of samples processed over a data set. Here every model, N
and batch size processes the same fixed pool of documents (IMDB-like lengths; 60 on CPU,
240 on a GPU, 48 for the GPU's batch-1 N sweep) in batches of b, the last one possibly
short: samples/s = pool size / time. Three pools (different seeds) give a mean and a
min-max band. On CPU every model is timed interleaved with `fixed` on the same pool (fixed,
model, fixed, model, ...) and its speed-up is against that paired time. This machine's speed
drifts (every model, transformers' too, ran 20-30 % slower at 08:13 than at 06:00 on
2026-11-27), and against a `fixed` time taken minutes earlier a model doing a strict subset of
MI's work (layers_only_mi) came out 4 % slower than MI at batch 8. On a GPU (and with
BENCH_PAIRED=0), where the run must fit its 8 minutes, `fixed` is timed once per (N, batch,
pool) and reused.

Models (depth sources: TREC test sentences unless prefixed mr_, MR's movie reviews):
    fixed           AdaptiveEncoder, every token at depth N (the fixed-depth baseline)
    hf_sdpa         transformers BertModel encoder, SDPA attention, padded batches, full depth
    hf_eager        the same with eager attention (what many users run)
    onnxruntime     CPU only: the transformers encoder exported to ONNX and run by ONNX Runtime
                    (what CPU users deploy; the optional `[bench]` extra; intra-op spinning off
                    so its idle threads do not take the cores from the runs interleaved with it)
    mi, mr_mi       MI depths (estimator with N bins)
    reconstruction  reconstruction depths (anytime MLM, rescaled from N = 6); mr_reconstruction: MR's
    halting         halting unit on layer 1, then layers 2..N at the trained unit's depths; mr_halting: MR's
    masked_mi       MI depths, every layer on every token, torch.where (saves nothing)
    stop_only_mi    MI depths, the whole stack stops at n_max, no compaction inside a layer
    layers_only_mi  MI depths, the adaptive layers' own work (the same GEMMs and attention) on
                    inputs gathered beforehand: no plan, gather or scatter timed. Its speed-up
                    bounds what bookkeeping-free compaction gets here; the rest of the gap to the
                    FLOP ideal is the same work running at a lower rate on fewer rows
extra_info adds the ideal speed-up from counted FLOPs over the pool and measured / ideal.
"""
import contextlib
import functools
import os

import pytest
import torch

import benchlib
from adaptive_encoder import AdaptiveEncoder, attention, encoder, graphs, norm, ops
from adaptive_encoder.dense import masked_forward
from adaptive_encoder.flops import encoder_flops

DEV = benchlib.device()
GPU = DEV.type == "cuda"
# BERT-base shapes in bf16 on a GPU; a small model and sequences at 1/4 of IMDB length on CPU.
SHAPE = dict(hidden=768, heads=12, ffn=3072, dtype=torch.bfloat16, scale=1.0) if GPU else \
    dict(hidden=256, heads=4, ffn=1024, dtype=torch.float32, scale=0.25)
# Every N and batch size on CPU; a sparser grid on a GPU, where the run must fit 8 minutes.
N_VALUES = [1, 6, 12] if benchlib.QUICK else ([1, 2, 4, 6, 8, 10, 12] if GPU else list(range(1, 13)))
BATCHES = [1, 8, 15] if benchlib.QUICK else ([1, 2, 4, 8, 12, 15] if GPU else list(range(1, 16)))
ROUNDS = 1 if benchlib.QUICK or GPU else 3
PAIRED = os.environ.get("BENCH_PAIRED", "0" if GPU else "1") == "1"
# Variants of our encoder's models, by suffix (gpu_scaling.py's arms): "+host" gives it depths
# and mask on the CPU (the plan is made on the host: no device sync), "+host1" the same with torch
# on one CPU thread, "+graphs" runs graph mode (adaptive_encoder/graphs.py) with them on the CPU,
# "+graphs-dev" with them on the GPU (graph mode copies them to the host), "+graphs-devplan" the
# same with the plan made on the GPU (graphs.device_plan(): the path before 2026-11-27),
# "+graphs-dense" as "+graphs" with every layer that has halted tokens run on the whole state
# (graphs.dense_layers()), "+graphs-layers" with one graph per layer always (graphs.per_layer()),
# "+graphs-flash" with PyTorch's FlashAttention-2 (attention.flash()), "+graphs-cudanorm" with the
# C++ CUDA add + LayerNorm (norm.cuda_cpp()), "+graphs-host1" with torch on one CPU thread,
# "+auto" with cuda_graphs="auto" and them on the GPU,
# "+flash" / "+unfused" / "+cudanorm" / "+dispatched" / "+dense" eager with FlashAttention-2 /
# torch's add and LayerNorm instead of the fused kernel (norm.unfused()) / the C++ CUDA fused
# kernel at every size (norm.cuda_cpp()) / every kernel through torch's dispatcher
# (ops.via_dispatcher()) / dense layers (encoder.dense_layers()). E.g. "mi+host", "fixed+graphs".
GRAPHS, HOST, UNFUSED, DISPATCHED, DENSE, AUTO, FLASH, CUDANORM = ("+graphs", "+host", "+unfused", "+dispatched",
                                                                    "+dense", "+auto", "+flash", "+cudanorm")


@contextlib.contextmanager
def _one_thread():
    """Inside: torch's CPU ops (and the C++ plan op's parallel_for) on one thread. For "+host1",
    the host plan without intra-op threads: in H200 run 5's follow-up every op of an eager
    host-plan forward took 1.5-1.7x the host time it took with the device plan (batch 16).
    Suspect: a CPU op past ATen's grain (32768 elements: the plan's rows, their pinned copy)
    wakes the OpenMP pool, whose threads then spin for a while on the main thread's sibling
    hyperthreads. "+graphs-host1": the same for graph mode, which builds its tables there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# (suffix, cuda_graphs, depths and mask given on the host, the setting switched on around each
# call or None); the first suffix that matches wins, so longer ones come first.
_VARIANTS = ((GRAPHS + "-devplan", True, False, graphs.device_plan), (GRAPHS + "-dev", True, False, None),
             (GRAPHS + "-dense", True, True, graphs.dense_layers), (GRAPHS + "-layers", True, True, graphs.per_layer),
             (GRAPHS + "-flash", True, True, attention.flash), (GRAPHS + "-cudanorm", True, True, norm.cuda_cpp),
             (GRAPHS + "-host1", True, True, _one_thread),
             (GRAPHS, True, True, None),
             (AUTO, "auto", False, None), (HOST + "1", False, True, _one_thread), (HOST, False, True, None),
             (FLASH, False, False, attention.flash), (UNFUSED, False, False, norm.unfused),
             (CUDANORM, False, False, norm.cuda_cpp),
             (DISPATCHED, False, False, ops.via_dispatcher), (DENSE, False, False, encoder.dense_layers))


def _variant(model: str) -> tuple:
    """(depth-source name, cuda_graphs (True, False or "auto"), whether depths and mask are given
    on the host, the setting switched on around each call or None): see _VARIANTS."""
    for suffix, graphed, on_host, setting in _VARIANTS:
        if model.endswith(suffix):
            return model.removesuffix(suffix), graphed, on_host, setting
    return model, False, False, None


def _base(model: str) -> str:
    return _variant(model)[0]


MODELS_N = ["fixed", "halting", "mi", "reconstruction", "mr_mi"]
# MR's reconstruction and halting depths (movie reviews, IMDB's domain) in the batch sweep only,
# which is where the summary's depth sources are read: the N sweep would take a third longer.
MODELS_B = MODELS_N + ["mr_reconstruction", "mr_halting", "hf_sdpa", "hf_eager", "masked_mi", "stop_only_mi",
                       "layers_only_mi", "onnxruntime"]
if benchlib.QUICK:
    MODELS_B = ["fixed", "mi", "mr_mi", "hf_sdpa", "hf_eager", "masked_mi", "layers_only_mi", "onnxruntime"]


@functools.lru_cache(maxsize=None)
def _stack(N: int):
    bert = benchlib.bert(N, SHAPE["hidden"], SHAPE["heads"], SHAPE["ffn"], dtype=SHAPE["dtype"])
    enc = AdaptiveEncoder.from_model(bert)
    upper = AdaptiveEncoder.from_model(bert, first_layer=1) if N > 1 else None
    unit = torch.nn.Linear(SHAPE["hidden"], N).to(DEV, SHAPE["dtype"])
    return bert, enc, upper, unit


@functools.lru_cache(maxsize=None)
def _eager(N: int):
    return benchlib.bert(N, SHAPE["hidden"], SHAPE["heads"], SHAPE["ffn"], dtype=SHAPE["dtype"], attn="eager")


@functools.lru_cache(maxsize=None)
def _onnx_session(N: int):
    """ONNX Runtime session of the same weights' transformers encoder (hidden states, additive
    key mask) -> last hidden state; dynamic batch and length."""
    import io

    import onnxruntime as ort

    bert = _stack(N)[0]

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, x, additive):
            return self.bert.encoder(x, attention_mask=additive).last_hidden_state

    x = torch.randn(2, 8, SHAPE["hidden"], dtype=SHAPE["dtype"])
    additive = torch.zeros(2, 1, 1, 8, dtype=SHAPE["dtype"])
    buf = io.BytesIO()
    torch.onnx.export(Encoder().eval(), (x, additive), buf, input_names=["x", "mask"], output_names=["h"],
                      dynamic_axes={"x": {0: "b", 1: "t"}, "mask": {0: "b", 3: "t"}, "h": {0: "b", 1: "t"}},
                      dynamo=False, opset_version=17)
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    x, additive = torch.randn(3, 11, SHAPE["hidden"], dtype=SHAPE["dtype"]), torch.zeros(3, 1, 1, 11, dtype=SHAPE["dtype"])
    additive[1, ..., 6:] = torch.finfo(SHAPE["dtype"]).min
    with torch.no_grad():  # a peer that computes something else would time nothing useful
        torch.testing.assert_close(torch.from_numpy(sess.run(None, {"x": x.numpy(), "mask": additive.numpy()})[0]),
                                   Encoder().eval()(x, additive), rtol=1e-4, atol=1e-4)
    return sess


def _runner(model: str, N: int, x, depths, mask):
    """model: a name of depth_source, or one with a variant's suffix (_VARIANTS)."""
    bert, enc, upper, unit = _stack(N)
    model, graphed, on_host, setting = _variant(model)
    kind, _ = benchlib.depth_source(model)
    if kind in ("fixed", "mi", "reconstruction"):
        d, m = (depths.cpu(), mask.cpu()) if on_host else (depths, mask)
        d = None if kind == "fixed" else d  # full depth as a user asks for it: planned from the mask
        if setting is not None:
            def with_setting():
                with setting():
                    return enc(x, d, m, cuda_graphs=graphed)
            return with_setting
        return lambda: enc(x, d, m, cuda_graphs=graphed)
    if kind == "halting":
        def halting():
            h1 = enc(x, mask.long(), mask).last_hidden_state  # layer 1 on every real token
            unit(h1).argmax(-1)  # the unit's own cost; its depths follow the trained unit's (`depths`)
            return upper(h1, (depths - 1).clamp(min=0), mask) if upper is not None else h1
        return halting
    additive = torch.zeros(mask.shape[0], 1, 1, mask.shape[1], device=DEV, dtype=SHAPE["dtype"])
    additive.masked_fill_(~mask[:, None, None, :], torch.finfo(SHAPE["dtype"]).min)
    if kind == "hf_sdpa":
        return lambda: bert.encoder(x, attention_mask=additive)
    if kind == "hf_eager":
        return lambda: _eager(N).encoder(x, attention_mask=additive)
    if kind == "onnxruntime":
        sess, feed = _onnx_session(N), {"x": x.numpy(), "mask": additive.numpy()}
        return lambda: sess.run(None, feed)
    if kind == "masked_mi":
        return lambda: masked_forward(bert, x, depths, mask, stop_at_n_max=False)
    if kind == "stop_only_mi":
        return lambda: masked_forward(bert, x, depths, mask, stop_at_n_max=True)
    if kind == "layers_only_mi":
        inputs = benchlib.layer_inputs(enc, depths, mask, x)
        return lambda: benchlib.run_layers(enc, inputs)
    raise ValueError(model)


def _flops(model: str, depths, mask, N: int) -> float:
    H, F_ = SHAPE["hidden"], SHAPE["ffn"]
    kind, _ = benchlib.depth_source(_base(model))
    if kind in ("fixed", "hf_sdpa", "hf_eager", "onnxruntime", "masked_mi"):
        return encoder_flops(depths, mask, N, H, F_, adaptive=False)
    if kind == "stop_only_mi":
        return encoder_flops(torch.where(mask, int(depths[mask].max()), 0), mask, N, H, F_, adaptive=False)
    flops = encoder_flops(depths, mask, N, H, F_)
    if kind == "halting":  # layer 1 is computed for every token anyway; add the unit
        flops += 2 * int(mask.sum()) * H * N
    return flops


def _pool_run(model: str, N: int, batch: int, pool_seed: int, size: int):
    """(fn running the whole pool once, FLOPs, full-depth FLOPs, real tokens, depth sum)."""
    docs = benchlib.make_pool(_base(model), N, pool_seed, size, SHAPE["scale"])
    gen = torch.Generator().manual_seed(pool_seed)
    fns, flops, full, real, depth_sum = [], 0, 0, 0, 0
    for depths, mask in benchlib.pool_batches(docs, batch):
        x = torch.randn(*mask.shape, SHAPE["hidden"], generator=gen).to(DEV, SHAPE["dtype"])
        depths, mask = depths.to(DEV), mask.to(DEV)
        fns.append(_runner(model, N, x, depths, mask))
        flops += _flops(model, depths, mask, N)
        full += encoder_flops(depths, mask, N, SHAPE["hidden"], SHAPE["ffn"], adaptive=False)
        real += int(mask.sum())
        depth_sum += int(torch.where(mask, depths, 0).sum())
    return (lambda: [f() for f in fns]), flops, full, real, depth_sum


_FIXED: dict = {}  # (N, batch, pool seed, size) -> seconds of `fixed` over the pool, measured once per run


def _fixed_seconds(N: int, batch: int, pool_seed: int, size: int) -> float:
    key = (N, batch, pool_seed, size)
    if key not in _FIXED:
        run, *_ = _pool_run("fixed", N, batch, pool_seed, size)
        _FIXED[key] = benchlib.interleaved_medians({"fixed": run}, rounds=ROUNDS, warmup=1)["fixed"]
    return _FIXED[key]


def _measure(benchmark, group: str, model: str, N: int, batch: int):
    size = benchlib.pool_size(group)
    per_pool = []
    for ps in benchlib.POOL_SEEDS:
        fixed_s = _fixed_seconds(N, batch, ps, size)  # same documents: lengths depend on the pool only
        run, flops, full, real, depth_sum = _pool_run(model, N, batch, ps, size)
        if model == "fixed":
            model_s = fixed_s
        else:
            if ps == benchlib.POOL_SEEDS[0]:  # pytest-benchmark's own record doubles as the warm-up
                with torch.inference_mode():
                    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
            if PAIRED:  # side by side with fixed depth on the same documents, rounds interleaved
                fixed_run = _pool_run("fixed", N, batch, ps, size)[0]
                t = benchlib.interleaved_medians({"fixed": fixed_run, "model": run}, rounds=ROUNDS, warmup=0)
                fixed_s, model_s = t["fixed"], t["model"]
            else:
                model_s = benchlib.interleaved_medians({"model": run}, rounds=ROUNDS, warmup=0)["model"]
        per_pool.append(dict(sps=size / model_s, fixed_sps=size / fixed_s, speedup=fixed_s / model_s,
                             ideal=full / flops, active=depth_sum / (real * N), avg_depth=depth_sum / real))
    if model == "fixed":
        with torch.inference_mode():
            benchmark.pedantic(lambda: None, rounds=1)  # timed above, once per (N, batch, pool)
    sps, sps_lo, sps_hi = benchlib.band([p["sps"] for p in per_pool])
    kind, source = benchlib.depth_source(model)
    speedup = benchlib.band([p["speedup"] for p in per_pool])
    ideal = sum(p["ideal"] for p in per_pool) / len(per_pool)
    info = dict(group=group, model=model, depth_source=source, N=N, batch=batch, device=str(DEV),
                pool_size=size, pools=len(per_pool), samples_per_s=sps, samples_per_s_band=[sps_lo, sps_hi],
                fixed_samples_per_s=benchlib.band([p["fixed_sps"] for p in per_pool])[0],
                active_token_layer_fraction=sum(p["active"] for p in per_pool) / len(per_pool),
                avg_depth=sum(p["avg_depth"] for p in per_pool) / len(per_pool),
                ideal_speedup=ideal, measured_speedup=speedup[0], measured_speedup_band=list(speedup[1:]),
                measured_over_ideal=speedup[0] / ideal)
    benchmark.extra_info.update(info)
    benchlib.record(info)


@pytest.mark.parametrize("N", N_VALUES)
@pytest.mark.parametrize("model", MODELS_N)
def test_speed_vs_n(benchmark, model, N):
    benchmark.group = "speed_vs_n"
    _measure(benchmark, "speed_vs_n", model, N, batch=1)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", MODELS_B)
def test_speed_vs_batch(benchmark, model, batch):
    if model == "onnxruntime":
        if GPU:
            pytest.skip("ONNX Runtime is the CPU deployment peer; on a GPU the peers are transformers' own")
        pytest.importorskip("onnxruntime", reason="ONNX Runtime is optional: pip install -e '.[bench]'")
    benchmark.group = "speed_vs_batch"
    _measure(benchmark, "speed_vs_batch", model, 12, batch=batch)
