"""Command line: `python -m adaptive_encoder <command>`.

    demo             run a small depth-adaptive BERT, check it against the dense reference
"""
import argparse
import sys
import time


def _demo(args) -> int:
    import torch
    from transformers import BertConfig, BertModel

    from adaptive_encoder import AdaptiveEncoder
    from adaptive_encoder.dense import masked_forward
    from adaptive_encoder.flops import ideal_speedup

    torch.manual_seed(0)
    N, D = args.layers, args.hidden
    cfg = BertConfig(hidden_size=D, num_hidden_layers=N, num_attention_heads=D // 64,
                     intermediate_size=4 * D, attn_implementation="sdpa")
    bert = BertModel(cfg).eval()
    enc = AdaptiveEncoder.from_bert(bert)
    B, T = args.batch, args.seq
    x = torch.randn(B, T, D)
    # Mostly shallow tokens, one per sequence at full depth (like the paper's MI depths).
    depths = torch.randint(1, 3, (B, T))
    depths[:, 0] = N
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1:, T // 2:] = 0  # ragged batch
    with torch.inference_mode():
        out = enc(x, depths, mask)
        ref = masked_forward(bert, x, depths, mask)
        m = mask.bool()
        err = ((out.last_hidden_state - ref)[m].norm() / ref[m].norm()).item()
        timings = {}
        for name, d in (("adaptive", depths), ("full depth", torch.full_like(depths, N))):
            enc(x, d, mask)
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                enc(x, d, mask)
            timings[name] = (time.perf_counter() - t0) / args.repeats
    print(f"BERT-like encoder: {N} layers, hidden {D}, batch {B} x {T} (ragged), backend "
          f"{enc.backend or 'auto'}")
    print(f"n_max {out.plan.n_max}, active token-layers {out.plan.active_fraction:.1%}")
    print(f"relative error vs dense masked reference: {err:.2e}")
    ideal = ideal_speedup(depths, mask, N, D, 4 * D)
    speedup = timings["full depth"] / timings["adaptive"]
    print(f"forward: adaptive {timings['adaptive'] * 1e3:.1f} ms, full depth {timings['full depth'] * 1e3:.1f} ms "
          f"-> {speedup:.2f}x (ideal from counted FLOPs {ideal:.2f}x)")
    return 0 if err < 1e-4 else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adaptive_encoder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="small built-in example with a correctness check")
    demo.add_argument("--layers", type=int, default=6)
    demo.add_argument("--hidden", type=int, default=256)
    demo.add_argument("--batch", type=int, default=4)
    demo.add_argument("--seq", type=int, default=64)
    demo.add_argument("--repeats", type=int, default=5)
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
