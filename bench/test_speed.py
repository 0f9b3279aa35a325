"""Speed vs maximum depth N (batch 1; paper's Figure 3b) and vs batch size (N = 12; Figure 4).

Models:
    fixed           AdaptiveEncoder, every token at depth N (the fixed-depth baseline)
    hf_sdpa         transformers BertModel encoder (SDPA attention), full depth N
    mi              MI depths (real estimator, TREC)
    reconstruction  reconstruction depths (real anytime MLM, TREC; rescaled from N = 6)
    halting         halting unit on layer 1 (its linear map and argmax timed), then layers 2..N
                    at the depths the trained TREC unit predicts (rescaled from N = 6)
    masked_mi       MI depths, every layer on every token, torch.where (saves nothing)
    stop_only_mi    MI depths, the whole stack stops at n_max, no compaction inside a layer
Each test also times `fixed` on the same batch, interleaved, so measured speed-ups come
from one run; extra_info adds the ideal speed-up from counted FLOPs and measured / ideal.
"""
import functools

import pytest
import torch

import benchlib
from adaptive_encoder import AdaptiveEncoder
from adaptive_encoder.dense import masked_forward
from adaptive_encoder.flops import encoder_flops

DEV = benchlib.device()
GPU = DEV.type == "cuda"
# BERT-base shapes in bf16 on a GPU; a small model and sequences at 1/4 of IMDB length on CPU.
SHAPE = dict(hidden=768, heads=12, ffn=3072, dtype=torch.bfloat16, scale=1.0) if GPU else \
    dict(hidden=256, heads=4, ffn=1024, dtype=torch.float32, scale=0.25)
N_VALUES = [1, 6, 12] if benchlib.QUICK else list(range(1, 13))
BATCHES = [1, 8, 15] if benchlib.QUICK else list(range(1, 16))
ROUNDS = 2 if benchlib.QUICK else (20 if GPU else 5)
MODELS_N = ["fixed", "halting", "mi", "reconstruction"]
MODELS_B = MODELS_N + ["hf_sdpa", "masked_mi", "stop_only_mi"]


@functools.lru_cache(maxsize=None)
def _stack(N: int):
    bert = benchlib.bert(N, SHAPE["hidden"], SHAPE["heads"], SHAPE["ffn"], dtype=SHAPE["dtype"])
    enc = AdaptiveEncoder.from_bert(bert)
    upper = AdaptiveEncoder(torch.nn.ModuleList(list(bert.encoder.layer)[1:]), bert.config) if N > 1 else None
    unit = torch.nn.Linear(SHAPE["hidden"], N).to(DEV, SHAPE["dtype"])
    return bert, enc, upper, unit


def _runner(model: str, N: int, x, depths, mask):
    bert, enc, upper, unit = _stack(N)
    if model in ("fixed", "mi", "reconstruction"):
        return lambda: enc(x, depths, mask)
    if model == "halting":
        def halting():
            h1 = enc(x, mask.long(), mask).last_hidden_state  # layer 1 on every real token
            unit(h1).argmax(-1)  # the unit's own cost; its depths follow the trained unit's (`depths`)
            return upper(h1, (depths - 1).clamp(min=0), mask) if upper is not None else h1
        return halting
    additive = torch.zeros(mask.shape[0], 1, 1, mask.shape[1], device=DEV, dtype=SHAPE["dtype"])
    additive.masked_fill_(~mask[:, None, None, :], torch.finfo(SHAPE["dtype"]).min)
    if model == "hf_sdpa":
        return lambda: bert.encoder(x, attention_mask=additive)
    if model == "masked_mi":
        return lambda: masked_forward(bert, x, depths, mask, stop_at_n_max=False)
    if model == "stop_only_mi":
        return lambda: masked_forward(bert, x, depths, mask, stop_at_n_max=True)
    raise ValueError(model)


def _measure(benchmark, group: str, model: str, N: int, batch: int):
    # The seed depends on the batch size only: the same documents (lengths) for every N and model.
    depths, mask = benchlib.make_batch(model, N, batch, seed=batch, scale=SHAPE["scale"])
    depths, mask = depths.to(DEV), mask.to(DEV)
    x = torch.randn(*mask.shape, SHAPE["hidden"], device=DEV, dtype=SHAPE["dtype"])
    run = _runner(model, N, x, depths, mask)
    fixed = _runner("fixed", N, x, torch.where(mask, N, 0), mask)
    med = benchlib.interleaved_medians({"model": run, "fixed": fixed}, rounds=ROUNDS)
    with torch.inference_mode():
        benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    H, F_ = SHAPE["hidden"], SHAPE["ffn"]
    full = encoder_flops(depths, mask, N, H, F_, adaptive=False)
    if model in ("fixed", "hf_sdpa", "masked_mi"):
        flops = full
    elif model == "stop_only_mi":
        n_max = int(depths[mask].max())
        flops = encoder_flops(torch.where(mask, n_max, 0), mask, N, H, F_, adaptive=False)
    else:
        flops = encoder_flops(depths, mask, N, H, F_)
        if model == "halting":  # layer 1 is computed for every token anyway; add the unit
            flops += 2 * int(mask.sum()) * H * N
    real = int(mask.sum())
    ideal, measured = full / flops, med["fixed"] / med["model"]
    info = dict(group=group, model=model, N=N, batch=batch, device=str(DEV), tokens=real,
                samples_per_s=batch / med["model"], seconds=med["model"], fixed_seconds=med["fixed"],
                active_token_layer_fraction=float(torch.where(mask, depths, 0).sum()) / (real * N),
                ideal_speedup=ideal, measured_speedup=measured, measured_over_ideal=measured / ideal)
    benchmark.extra_info.update(info)
    benchlib.RESULTS.append(info)


@pytest.mark.parametrize("N", N_VALUES)
@pytest.mark.parametrize("model", MODELS_N)
def test_speed_vs_n(benchmark, model, N):
    benchmark.group = "speed_vs_n"
    _measure(benchmark, "speed_vs_n", model, N, batch=1)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", MODELS_B)
def test_speed_vs_batch(benchmark, model, batch):
    benchmark.group = "speed_vs_batch"
    _measure(benchmark, "speed_vs_batch", model, 12, batch=batch)
