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
# Benchmark models that run TREC's MI depths in another way (test_speed.py's list).
MI_VARIANTS = ("masked_mi", "stop_only_mi", "layers_only_mi")
RESULTS: list[dict] = []  # filled by benchmarks, printed at the end of the session
# $BENCH_RECORDS: a JSON-lines file that gets each record the moment its benchmark ends, so a
# run cut short (a device lease's time limit) keeps everything it measured; pytest-benchmark's
# own JSON is written only at the end of the session.
RECORDS_PATH = os.environ.get("BENCH_RECORDS")


def record(info: dict) -> None:
    """Keep one benchmark's numbers: in RESULTS, and appended to $BENCH_RECORDS if set."""
    RESULTS.append(info)
    if RECORDS_PATH:
        import json

        with open(RECORDS_PATH, "a") as f:
            f.write(json.dumps(info) + "\n")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def time_call(fn, calls: int = 1) -> float:
    """Seconds per call of fn(), over `calls` calls back to back. On a GPU, CUDA events around
    them: with one call, the host's launch time before the kernel starts is counted (what a
    forward pays); with several, the host queues the later launches while the GPU runs the
    earlier ones, so a kernel of tens of microseconds is timed as the GPU runs it (what a
    bandwidth figure needs)."""
    if torch.cuda.is_available():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def interleaved_medians(fns: dict, rounds: int, warmup: int = 2, inference: bool = True, calls: int = 1) -> dict:
    """{name: median seconds per call}, each fn timed `rounds` times (`calls` calls back to back
    each, see time_call), alternating between fns (under inference mode unless
    `inference=False`, e.g. for a training step)."""
    import contextlib

    with torch.inference_mode() if inference else contextlib.nullcontext():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        times = {name: [] for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                times[name].append(time_call(fn, calls))
    return {name: statistics.median(ts) for name, ts in times.items()}


def bert(layers: int, hidden: int, heads: int, ffn: int, dtype=torch.float32, seed: int = 0, attn: str = "sdpa"):
    """A random-weight BertModel (same seed: same weights, whatever the attention implementation)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=ffn, max_position_embeddings=512, attn_implementation=attn)
    return BertModel(cfg).to(device(), dtype).eval()


def skewed_depths(B: int, T: int, N: int, seed: int = 0) -> torch.Tensor:
    """Depths with most tokens shallow (P(d) halving with d) and the first token of every
    sequence at N, so n_max = N: about a quarter of the token-layers active at N = 8."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.tensor([0.5 ** d for d in range(1, N + 1)])
    depths = torch.multinomial(p / p.sum(), B * T, replacement=True, generator=gen).view(B, T) + 1
    depths[:, 0] = N
    return depths


# --- real depth distributions and IMDB-like lengths -------------------------------------

SAMPLES_PATH = os.path.join(os.path.dirname(__file__), "data", "depth_samples.pt")
_SAMPLES = None


def _samples() -> dict:
    global _SAMPLES
    if _SAMPLES is None:
        if not os.path.exists(SAMPLES_PATH):
            raise FileNotFoundError(f"{SAMPLES_PATH} missing: run `python bench/make_depth_samples.py`")
        _SAMPLES = torch.load(SAMPLES_PATH)
    return _SAMPLES


def sentence_depths(model: str, N: int) -> list:
    """Real per-sentence word depths (TREC test) of `model` for an N-layer encoder.

    mi: the estimator fitted with N bins. reconstruction / halting: the 6-layer model's
    depths rescaled to N as ceil(d * N / 6) (only a 6-layer pretrained model exists here)."""
    s = _samples()
    if model == "mi":
        flat = s["mi"][N].long()
    else:
        key = {"reconstruction": "reconstruction6", "halting": "halting6"}[model]
        if key not in s:
            raise KeyError(f"{SAMPLES_PATH} has no {key}: run bench/make_depth_samples.py with its inputs")
        flat = torch.ceil(s[key].double() * N / 6).long().clamp(1, N)
    return list(flat.split(s["lengths"].tolist()))


def imdb_like_lengths(batch: int, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Token lengths like IMDB reviews (lognormal, median 180, mean ~230), clipped to [8, 512],
    then multiplied by `scale` (CPU runs use shorter sequences). IMDB itself is not available
    offline here; this stands in for its length distribution."""
    mu, sigma = torch.log(torch.tensor(180.0)), 0.7
    lengths = torch.exp(mu + sigma * torch.randn(batch, generator=gen)).clamp(8, 512)
    return (lengths * scale).round().long().clamp(min=4)


def document_depths(model: str, N: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """(length,) depths: real sentences' word depths concatenated, [CLS]/[SEP] at the max."""
    if model in ("fixed", "hf_sdpa"):
        return torch.full((length,), N, dtype=torch.long)
    return concat_sentences(sentence_depths("mi" if model in MI_VARIANTS else model, N),
                            length, gen)


def concat_sentences(src: list, length: int, gen: torch.Generator) -> torch.Tensor:
    """(length,) depths: random real sentences' word depths end to end, [CLS]/[SEP] at the max."""
    parts, have = [], 0
    while have < length - 2:
        d = src[int(torch.randint(len(src), (1,), generator=gen))]
        parts.append(d)
        have += len(d)
    words = torch.cat(parts)[: length - 2]
    top = words.max().view(1)
    return torch.cat([top, words, top])


def make_batch(model: str, N: int, batch: int, seed: int, scale: float = 1.0):
    """depths (B,T) int64 (0 at padding), mask (B,T) bool."""
    gen = torch.Generator().manual_seed(seed)
    lengths = imdb_like_lengths(batch, gen, scale)
    T = int(lengths.max())
    depths = torch.zeros(batch, T, dtype=torch.long)
    for b, n in enumerate(lengths.tolist()):
        depths[b, :n] = document_depths(model, N, n, gen)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    return depths, mask


# --- document pools: every model, N and batch size processes the same documents ----------

POOL_SEEDS = (0, 1, 2)  # three pools: mean and min-max band in every plot


def pool_size(group: str = "speed_vs_batch") -> int:
    """Documents per pool: 60 on CPU; 240 on a GPU (issue 13's protocol), except the batch-1 N
    sweep (48) so that the whole GPU run fits its 8 minutes; 8 in quick mode.
    $BENCH_POOL_SIZE overrides. On an H200 (2026-11-26) the suite with an N-sweep pool of 96
    finished 62 benchmarks in its 330 s (the 19 kernel ones, then 43 of the batch-1 N sweep:
    roughly 6 s each, an estimate from the total, per-test times were lost) and wrote no JSON;
    the batch sweep now runs first, the N sweep last."""
    if os.environ.get("BENCH_POOL_SIZE"):
        return int(os.environ["BENCH_POOL_SIZE"])
    if QUICK:
        return 8
    if torch.cuda.is_available():
        return 48 if group == "speed_vs_n" else 240
    return 60


def depth_source(model: str) -> tuple:
    """(model kind, dataset) of a benchmark model name: 'mi' -> ('mi', 'trec'), 'mr_mi' -> ('mi', 'mr')."""
    if model.startswith("mr_"):
        return model[3:], "mr"
    return model, "trec"


def sentence_depths_of(model: str, N: int) -> list:
    """Real per-sentence word depths of a depth source (TREC test sentences, or MR's with mr_*)."""
    kind, dataset = depth_source(model)
    if dataset == "trec":
        return sentence_depths(kind, N)
    s = _samples().get("mr")
    if s is None or kind not in ("mi",) and f"{kind}6" not in s:
        raise KeyError(f"{SAMPLES_PATH} has no MR {kind} depths: run bench/make_depth_samples.py --add-mr")
    flat = s["mi"][N].long() if kind == "mi" else torch.ceil(s[f"{kind}6"].double() * N / 6).long().clamp(1, N)
    return list(flat.split(s["lengths"].tolist()))


def make_pool(model: str, N: int, pool_seed: int, size: int, scale: float = 1.0) -> list:
    """`size` documents, each a (T_i,) int64 depth tensor. The lengths depend only on the pool
    seed, so every model and N sees the same documents; each document's depths are drawn from
    its own generator (real sentences of the model's depth source, [CLS]/[SEP] at the max)."""
    gen = torch.Generator().manual_seed(10_000 + pool_seed)
    lengths = imdb_like_lengths(size, gen, scale).tolist()
    kind, _ = depth_source(model)
    src = None if kind in ("fixed", "hf_sdpa", "hf_eager", "onnxruntime") else \
        sentence_depths_of("mi" if kind in MI_VARIANTS else model, N)
    docs = []
    for i, n in enumerate(lengths):
        if src is None:
            docs.append(torch.full((n,), N, dtype=torch.long))
            continue
        docs.append(concat_sentences(src, n, torch.Generator().manual_seed(pool_seed * 1_000_003 + i)))
    return docs


def pool_batches(docs: list, batch: int) -> list:
    """[(depths (B,T) int64 with 0 at padding, mask (B,T) bool), ...]: the pool in order, in
    batches of `batch` (the last one may be short)."""
    out = []
    for start in range(0, len(docs), batch):
        part = docs[start:start + batch]
        T = max(len(d) for d in part)
        depths = torch.zeros(len(part), T, dtype=torch.long)
        for b, d in enumerate(part):
            depths[b, :len(d)] = d
        mask = torch.arange(T)[None] < torch.tensor([len(d) for d in part])[:, None]
        out.append((depths, mask))
    return out


def band(values: list) -> tuple:
    """(mean, min, max)."""
    return statistics.mean(values), min(values), max(values)


def layer_inputs(enc, depths: torch.Tensor, mask: torch.Tensor, x: torch.Tensor, active_keys_only: bool = False) -> list:
    """The adaptive forward's per-layer work with its inputs gathered beforehand, as
    [(layer, xq (A,D), xkv (K,D) or xq itself, cu_q, cu_k, max_q, max_k), ...] for
    `run_layers`: the same GEMMs and attention as enc(x, depths, mask) (xkv is xq when every
    real token is active, as there), without the plan, gathers and scatters. Row values come
    from x (they do not change the time). active_keys_only: each layer a dense layer on its
    active tokens alone (keys = queries; K/V of halted tokens not computed): less work than
    the exact forward, the least any compaction could do per layer."""
    from adaptive_encoder import ops
    from adaptive_encoder.plan import make_plan

    with torch.inference_mode():
        plan = make_plan(depths, mask, enc.num_layers)
        state = x.reshape(-1, x.shape[-1])
        keys = state if plan.key_rows is None else ops.gather(state, plan.key_rows)
        out = []
        for n in range(plan.n_max):
            lp = plan.layer(n)
            xq = ops.gather(state, lp.rows)
            if active_keys_only:
                out.append((enc.layer[n], xq, xq, lp.cu_q, lp.cu_q, lp.max_q, lp.max_q))
            elif lp.count == plan.num_real:
                out.append((enc.layer[n], keys, keys, plan.cu_k, plan.cu_k, plan.max_k, plan.max_k))
            else:
                out.append((enc.layer[n], xq, keys, lp.cu_q, plan.cu_k, lp.max_q, plan.max_k))
    return out


def run_layers(enc, inputs: list) -> None:
    """The layers of `layer_inputs`, each on its own gathered inputs."""
    for layer, xq, xkv, cu_q, cu_k, max_q, max_k in inputs:
        enc._layer(layer, xq, xkv, cu_q, cu_k, max_q, max_k)


def cpu_pool(num_layers: int, pool_seed: int, batch: int, size: int = 60) -> tuple:
    """The suite's CPU pool for the A/B and profiling scripts: TREC MI depths, documents at 1/4
    IMDB length, in batches of `batch`, each with a random (B,T,256) float32 input. Returns
    ([(depths, mask, x), ...], FLOP ideal speed-up over the pool at hidden 256 / FFN 1024)."""
    from adaptive_encoder.flops import encoder_flops

    gen = torch.Generator().manual_seed(pool_seed)
    bs = [(d, m, torch.randn(*m.shape, 256, generator=gen))
          for d, m in pool_batches(make_pool("mi", num_layers, pool_seed, size, 0.25), batch)]
    full = sum(encoder_flops(d, m, num_layers, 256, 1024, adaptive=False) for d, m, _ in bs)
    return bs, full / sum(encoder_flops(d, m, num_layers, 256, 1024) for d, m, _ in bs)


def ab_full_adaptive(enc, bs: list, arms: dict, rounds: int) -> dict:
    """{(arm, deep): median seconds of the pool}: every arm (name -> function that switches it
    on) at adaptive depth (deep = 0, the batches' depths) and full depth (deep = 1), all four
    interleaved per round under inference mode; rounds + 1 rounds, the first one dropped."""
    N = enc.num_layers
    t = {(p, deep): [] for p in arms for deep in (0, 1)}
    with torch.inference_mode():
        for r in range(rounds + 1):
            for (p, deep) in t:
                arms[p]()
                el = time_call(lambda: [enc(x, torch.where(m, N, 0) if deep else d, m) for d, m, x in bs])
                if r:
                    t[(p, deep)].append(el)
    return {k: statistics.median(v) for k, v in t.items()}


def ab_linears(enc, linears: dict, batches) -> dict:
    """A/B of replacements for F.linear ({arm: linear(x, w, b)}), which every projection of the
    encoder calls: per batch size and pool (cpu_pool), each arm at adaptive and full depth
    interleaved (ab_full_adaptive, 4 rounds). Prints seconds per pool and the measured speed-up
    over the FLOP ideal; returns {batch: {arm: mean measured/ideal}}. F.linear is restored."""
    import torch.nn.functional as F

    plain, out = F.linear, {}
    try:
        for batch in batches:
            res = {p: [] for p in linears}
            for ps in POOL_SEEDS:
                bs, ideal = cpu_pool(enc.num_layers, ps, batch)
                m = ab_full_adaptive(enc, bs, {p: (lambda f=f: setattr(F, "linear", f)) for p, f in linears.items()},
                                     rounds=4)
                F.linear = plain
                for p in linears:
                    res[p].append(m[(p, 1)] / m[(p, 0)] / ideal)
                print(f"batch {batch} pool {ps}: ideal {ideal:.2f}; " + "; ".join(
                    f"{p}: adaptive {m[(p, 0)]:.3f}s full {m[(p, 1)]:.3f}s" for p in linears), flush=True)
            out[batch] = {p: statistics.mean(v) for p, v in res.items()}
            print(f"batch {batch}: measured/ideal " + ", ".join(f"{p} {v:.3f}" for p, v in out[batch].items()),
                  flush=True)
    finally:
        F.linear = plain
    return out
