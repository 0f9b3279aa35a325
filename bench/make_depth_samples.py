"""Build bench/data/depth_samples.pt: real per-token depths the speed benchmarks sample from.

    python bench/make_depth_samples.py [--halting-checkpoint runs/checkpoints/trec_halting_N6_seed0.pt]

From the TREC test split (500 sentences), word tokens only (no [CLS]/[SEP]), stored flat
(int8) with one "lengths" tensor that splits every entry back into sentences:
    mi[N]            MI depths, estimator fitted on the TREC training split with N bins, N = 1..12
    reconstruction6  reconstruction depths of the N = 6 anytime MLM (runs/depths/trec, estimate-depths)
    halting6         depths a trained halting unit (N = 6) predicts (from a `train --depth halting` checkpoint)
Other N for the last two are rescaled in bench (ceil(d * N / 6)): only the 6-layer model exists here.
"""
import argparse
import os

import torch

from adaptive_encoder.data import load_dataset
from adaptive_encoder.depth.pipeline import encode_words, mi_depths, tokenizer_words
from adaptive_encoder.pretrained import load_pretrained


def strip_specials(d):
    return d[1:-1].to(torch.int8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", default="runs/depths/trec", help="estimate-depths output for TREC, N = 6")
    ap.add_argument("--halting-checkpoint", default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "data", "depth_samples.pt"))
    args = ap.parse_args()

    splits = load_dataset("trec")
    _, tok = load_pretrained()
    out = {"source": "TREC test split, word tokens (specials removed)", "mi": {}}
    for N in range(1, 13):
        _, d = mi_depths(splits, tok, N, max_length=512)
        out["mi"][N] = [strip_specials(x) for x in d["test"]]
    recon = torch.load(os.path.join(args.depths, "depths_reconstruction.pt"))
    assert recon["layers"] == 6
    out["reconstruction6"] = [strip_specials(x) for x in recon["depths"]["test"]]
    if args.halting_checkpoint:
        from adaptive_encoder.train import batches, Encoded, load_checkpoint

        model, tok, meta = load_checkpoint(args.halting_checkpoint)
        words = [tokenizer_words(tok, t) for t in splits["test"].texts]
        data = Encoded(encode_words(tok, words, 512)["input_ids"], splits["test"].labels)
        halting = []
        with torch.inference_mode():
            for ids, mask, _, _ in batches(data, 64, tok.pad_token_id):
                d = model(ids, mask).depths
                halting += [strip_specials(d[i, : int(mask[i].sum())]) for i in range(len(d))]
        out["halting6"] = halting
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    lengths = torch.tensor([len(x) for x in out["mi"][1]])
    flat = {"source": out["source"], "lengths": lengths, "mi": {N: torch.cat(v) for N, v in out["mi"].items()}}
    for k in ("reconstruction6", "halting6"):
        if k in out:
            assert [len(x) for x in out[k]] == lengths.tolist()
            flat[k] = torch.cat(out[k])
    torch.save(flat, args.out)
    for k in ("reconstruction6", "halting6"):
        if k in out:
            flat = torch.cat(out[k]).float()
            print(f"{k}: {flat.numel()} tokens, mean depth {flat.mean():.2f}")
    flat = torch.cat(out["mi"][12]).float()
    print(f"mi N=12: mean depth {flat.mean():.2f}; wrote {args.out} ({os.path.getsize(args.out) / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
