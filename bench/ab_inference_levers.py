"""A/B of the inference levers on an idle CPU (numbers in bench/NOTES.md).

    python bench/ab_inference_levers.py

The same encoder (hidden 256, 12 layers, fp32) over the benchmark's pools (TREC MI depths,
60 documents at 1/4 IMDB length, 3 pools), adaptive and full depth, interleaved:
    old path: autograd on with frozen weights: separate q/k/v GEMMs, out-of-place scatter
    new path: no_grad: fused q/k/v (k/v) GEMMs, in-place scatter_
(the reference attention's no-padding path at batch 1 applies to both). Prints measured
speed-up over the FLOP ideal per batch size.
"""
import sys, torch, statistics
sys.path.insert(0, "bench")
import benchlib
from adaptive_encoder import AdaptiveEncoder
from adaptive_encoder.flops import encoder_flops
N = 12
bert = benchlib.bert(N, 256, 4, 1024).requires_grad_(False)
enc = AdaptiveEncoder.from_model(bert)
for batch in (1, 8):
    res = {"old": [], "new": []}
    for ps in (0, 1, 2):
        docs = benchlib.make_pool("mi", N, ps, 60, 0.25)
        gen = torch.Generator().manual_seed(ps)
        bs = [(d, m, torch.randn(*m.shape, 256, generator=gen)) for d, m in benchlib.pool_batches(docs, batch)]
        full = sum(encoder_flops(d, m, N, 256, 1024, adaptive=False) for d, m, _ in bs)
        ad = sum(encoder_flops(d, m, N, 256, 1024) for d, m, _ in bs)
        def run(deep, grad):
            ctx = torch.enable_grad() if grad else torch.no_grad()
            with ctx:
                for d, m, x in bs:
                    enc(x, torch.where(m, N, 0) if deep else d, m)
        import time
        t = {k: [] for k in ("ad_old", "ad_new", "fx_old", "fx_new")}
        for r in range(4):
            for k, (deep, grad) in {"ad_old": (0, 1), "ad_new": (0, 0), "fx_old": (1, 1), "fx_new": (1, 0)}.items():
                t0 = time.perf_counter(); run(deep, grad); el = time.perf_counter() - t0
                if r: t[k].append(el)
        m = {k: statistics.median(v) for k, v in t.items()}
        ideal = full / ad
        res["old"].append(m["fx_old"] / m["ad_old"] / ideal)
        res["new"].append(m["fx_new"] / m["ad_new"] / ideal)
        print(f"batch {batch} pool {ps}: ideal {ideal:.2f}x; adaptive old {m['ad_old']:.3f}s new {m['ad_new']:.3f}s; "
              f"full old {m['fx_old']:.3f}s new {m['fx_new']:.3f}s", flush=True)
    print(f"batch {batch}: measured/ideal old path {statistics.mean(res['old']):.3f}, new path {statistics.mean(res['new']):.3f}", flush=True)
