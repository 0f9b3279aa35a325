"""torch.compile on a patched model: compilations, graph breaks and time against eager.

    python bench/compile_speed.py [--batch 8] [--seq 64] [--patterns 8] [--route default|traced]
                                  [--device cpu|cuda]

MiniLM (6 layers) from the pretrained-model package (where it is not installed, e.g. on the
GPU machine: a random-weight BertModel of MiniLM's shape), MI-like random depths in 1..6 with one
token per sequence at depth 6 (every layer runs) in the first half of the patterns, the
deepest layer varying over 4..6 in the second. Prints one line per
pattern and a summary; fp32, inductor.

Routes (adaptive_encoder/plan.py): `default` computes the plan eagerly at a graph break;
`traced` turns on Dynamo's scalar and dynamic-shape capture, so the plan is traced with
unbacked sizes and the forward compiles as one graph (fullgraph=True).
"""
import argparse
import os
import sys
import time

import torch
from transformers import BertModel

sys.path.insert(0, os.path.dirname(__file__))
import benchlib  # noqa: E402  (time_call: CUDA events on a GPU, perf_counter on CPU)
from adaptive_encoder import apply_adaptive_encoder  # noqa: E402
from adaptive_encoder.pretrained import default_model_path  # noqa: E402


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--patterns", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--route", choices=("default", "traced"), default="default")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    traced = a.route == "traced"
    torch._dynamo.config.capture_scalar_outputs = traced
    torch._dynamo.config.capture_dynamic_output_shape_ops = traced
    torch.manual_seed(0)
    try:
        bert = BertModel.from_pretrained(default_model_path())
    except FileNotFoundError:  # the GPU machine has no pretrained-model package: same shape, random weights
        from transformers import BertConfig

        bert = BertModel(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                    intermediate_size=1536, vocab_size=30522))
        print("pretrained model not installed: random weights of MiniLM's shape")
    model = apply_adaptive_encoder(bert.to(dev).eval())
    ids = torch.randint(1000, 20000, (a.batch, a.seq), device=dev)
    mask = torch.ones_like(ids)
    mask[1::2, a.seq // 2:] = 0

    def f(i, m, d):
        return model(i, attention_mask=m, depths=d).last_hidden_state

    d0 = torch.randint(1, 7, ids.shape).to(dev)
    d0[:, 0] = 6
    ex = torch._dynamo.explain(f)(ids, mask, d0)
    sites = {str(r.user_stack[-1]) for r in ex.break_reasons}
    print(f"explain: {ex.graph_count} graphs, {ex.graph_break_count} breaks at {len(sites)} site(s): "
          + "; ".join(r.reason.splitlines()[0][:80] for r in ex.break_reasons[:1]))
    torch._dynamo.reset()
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(f, backend=counter, fullgraph=traced)
    te_all, tc_all = [], []
    with torch.no_grad():
        for p in range(a.patterns):
            d = torch.randint(1, 7, ids.shape, generator=torch.Generator().manual_seed(p)).to(dev)
            d[:, 0] = 6
            if p >= a.patterns // 2:  # the second half also changes the deepest layer reached (4..6)
                d = d.clamp(max=4 + p % 3)
            t = time.perf_counter()
            out = compiled(ids, mask, d)
            first = time.perf_counter() - t
            tc = min(benchlib.time_call(lambda: compiled(ids, mask, d)) for _ in range(a.repeats))
            te = min(benchlib.time_call(lambda: f(ids, mask, d)) for _ in range(a.repeats))
            err = float((out - f(ids, mask, d)).abs().max())
            print(f"pattern {p}: first call {first:.2f} s, compiled {tc * 1e3:.1f} ms, eager {te * 1e3:.1f} ms, "
                  f"max diff {err:.1e}, graphs compiled so far {counter.frame_count}")
            if p >= 2:
                te_all.append(te)
                tc_all.append(tc)
    if te_all:
        print(f"route {a.route}: after warm-up (patterns 2..): compiled/eager time = {sum(tc_all) / sum(te_all):.3f}")
    else:
        print(f"route {a.route}: no pattern after the two warm-up ones (--patterns {a.patterns}): no time ratio")


if __name__ == "__main__":
    main()
