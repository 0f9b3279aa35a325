"""Training step: forward + backward of the classifier loss with adaptive depths against full
depth on the same batch, next to the ideal ratio from counted FLOPs. A training-time saving
for per-token depths: the backward pass, like the forward, touches only the active rows.

Shapes as the speed benchmark (BERT-base in bf16 on a GPU; hidden 256 fp32 on CPU), N = 12,
one batch of 8 documents from pool 0 with TREC MI depths; dropout off so both runs do the
same arithmetic per active row.
"""
import torch
import torch.nn.functional as F

import benchlib
from adaptive_encoder.classifier import AdaptiveClassifier
from adaptive_encoder.flops import encoder_flops

DEV = benchlib.device()
GPU = DEV.type == "cuda"
SHAPE = dict(hidden=768, heads=12, ffn=3072, dtype=torch.bfloat16, scale=1.0) if GPU else \
    dict(hidden=256, heads=4, ffn=1024, dtype=torch.float32, scale=0.25)
N, BATCH = 12, 8


def test_training_step_adaptive_vs_full(benchmark):
    bert = benchlib.bert(N, SHAPE["hidden"], SHAPE["heads"], SHAPE["ffn"], dtype=SHAPE["dtype"])
    bert.config.hidden_dropout_prob = bert.config.attention_probs_dropout_prob = 0.0
    for m in bert.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model = AdaptiveClassifier(bert, 2, dropout=0.0).to(DEV, SHAPE["dtype"]).train()
    docs = benchlib.make_pool("mi", N, 0, BATCH, SHAPE["scale"])
    depths, mask = benchlib.pool_batches(docs, BATCH)[0]
    depths, mask = depths.to(DEV), mask.to(DEV)
    ids = torch.randint(1000, 20000, mask.shape, device=DEV)
    labels = torch.randint(0, 2, (BATCH,), device=DEV)
    full = torch.where(mask, N, 0)

    def step(d):
        def run():
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(ids, mask.long(), d).logits.float(), labels).backward()
        return run

    rounds = 2 if benchlib.QUICK else (10 if GPU else 5)
    med = benchlib.interleaved_medians({"adaptive": step(depths), "full": step(full)}, rounds=rounds, inference=False)
    benchmark.pedantic(step(depths), rounds=rounds, warmup_rounds=1)
    ideal = encoder_flops(depths, mask, N, SHAPE["hidden"], SHAPE["ffn"], adaptive=False) / \
        encoder_flops(depths, mask, N, SHAPE["hidden"], SHAPE["ffn"])
    measured = med["full"] / med["adaptive"]
    info = dict(bench="training_step", shape=f"N{N} D{SHAPE['hidden']} B{BATCH}xT{mask.shape[1]} {SHAPE['dtype']}",
                device=str(DEV), adaptive_s=med["adaptive"], full_s=med["full"], measured_speedup=measured,
                ideal_speedup=ideal, measured_over_ideal=measured / ideal,
                active_token_layer_fraction=float(torch.where(mask, depths, 0).sum()) / (int(mask.sum()) * N))
    benchmark.extra_info.update(info)
    benchlib.record(info)
    assert ideal > 1.2  # MI depths leave a real share of the token-layers out
