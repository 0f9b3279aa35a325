"""Adaptive forward vs the same encoder at full depth (CPU-sized BERT-like encoder).

8 layers, hidden 256, 4 heads, FFN 1024, batch 8 x 128, about a quarter of the token-layers
active and n_max = N. Reports measured speed-up next to the ideal from counted FLOPs.
"""
import pytest
import torch

import benchlib
from adaptive_encoder import AdaptiveEncoder
from adaptive_encoder.flops import ideal_speedup

SHAPE = dict(layers=8, hidden=256, heads=4, ffn=1024, batch=8, seq=128)
if benchlib.QUICK:
    SHAPE.update(batch=2, seq=32)


@pytest.mark.benchmark(group="savings")
def test_adaptive_vs_full_depth(benchmark):
    s = SHAPE
    dev = benchlib.device()
    bert = benchlib.bert(s["layers"], s["hidden"], s["heads"], s["ffn"])
    enc = AdaptiveEncoder.from_bert(bert)
    x = torch.randn(s["batch"], s["seq"], s["hidden"], device=dev)
    depths = benchlib.skewed_depths(s["batch"], s["seq"], s["layers"]).to(dev)
    full = torch.full_like(depths, s["layers"])

    med = benchlib.interleaved_medians(
        {"adaptive": lambda: enc(x, depths), "full": lambda: enc(x, full)},
        rounds=3 if benchlib.QUICK else 10,
    )
    with torch.inference_mode():
        plan = enc(x, depths).plan
        benchmark.pedantic(lambda: enc(x, depths), rounds=3 if benchlib.QUICK else 10, warmup_rounds=1)
    ideal = ideal_speedup(depths, None, s["layers"], s["hidden"], s["ffn"])
    measured = med["full"] / med["adaptive"]
    info = dict(
        bench="savings", shape=f"L{s['layers']} D{s['hidden']} B{s['batch']}xT{s['seq']}", device=str(dev),
        active_token_layer_fraction=plan.active_fraction, n_max=plan.n_max,
        full_s=med["full"], adaptive_s=med["adaptive"],
        samples_per_s=s["batch"] / med["adaptive"], measured_speedup=measured,
        ideal_speedup=ideal, measured_over_ideal=measured / ideal,
    )
    benchmark.extra_info.update(info)
    benchlib.record(info)
    assert plan.n_max == s["layers"]
    assert 0.2 < plan.active_fraction < 0.35
