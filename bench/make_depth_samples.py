"""Build bench/data/depth_samples.pt: real per-token depths the speed benchmarks sample from.

    python bench/make_depth_samples.py [--halting-checkpoint runs/checkpoints/trec_halting_N6_seed0]
    python bench/make_depth_samples.py --add-mr [--mr-depths runs/depths/mr | --mr-reconstruction-steps 300]
                                       [--mr-halting-checkpoint ...]

From the TREC test split (500 sentences), word tokens only (no [CLS]/[SEP]), stored flat
(int8) with one "lengths" tensor that splits every entry back into sentences:
    mi[N]            MI depths, estimator fitted on the TREC training split with N bins, N = 1..12
    reconstruction6  reconstruction depths of the N = 6 anytime MLM (runs/depths/trec, estimate-depths)
    halting6         depths a trained halting unit (N = 6) predicts (from a `train --depth halting` checkpoint)
Other N for the last two are rescaled in bench (ceil(d * N / 6)): only the 6-layer model exists here.
--add-mr adds the same for MR's test split (movie reviews, IMDB's domain) under "mr" to the
existing file, leaving the TREC entries as they are: MI with N bins always; reconstruction6
and halting6 when their estimate-depths folder / checkpoint are given.
"""
import argparse
import os

import torch

from adaptive_encoder.data import load_dataset
from adaptive_encoder.depth.pipeline import encode_words, mi_depths, reconstruction_depths, tokenizer_words
from adaptive_encoder.pretrained import load_pretrained


def strip_specials(d):
    return d[1:-1].to(torch.int8)


def _halting_depths(checkpoint: str, texts: list) -> list:
    from adaptive_encoder.train import Encoded, batches, load_checkpoint

    model, tok, meta = load_checkpoint(checkpoint)
    words = [tokenizer_words(tok, t) for t in texts]
    data = Encoded(encode_words(tok, words, 512)["input_ids"], [0] * len(words))
    out = []
    with torch.inference_mode():
        for ids, mask, _, _ in batches(data, 64, tok.pad_token_id):
            d = model(ids, mask).depths
            out += [strip_specials(d[i, : int(mask[i].sum())]) for i in range(len(d))]
    return out


def add_mr(args) -> None:
    flat = torch.load(args.out)
    splits = load_dataset("mr")
    bert, tok = load_pretrained()
    mr = {"source": "MR test split (fixed 10 %), word tokens (specials removed)", "mi": {}}
    per = {}
    for N in range(1, 13):
        _, d = mi_depths(splits, tok, N, max_length=512)
        per[N] = [strip_specials(x) for x in d["test"]]
    lengths = torch.tensor([len(x) for x in per[1]])
    mr["lengths"] = lengths
    mr["mi"] = {N: torch.cat(v) for N, v in per.items()}
    if args.mr_depths:
        recon = torch.load(os.path.join(args.mr_depths, "depths_reconstruction.pt"))
        assert recon["layers"] == 6
        mr["reconstruction6"] = torch.cat([strip_specials(x) for x in recon["depths"]["test"]])
    elif args.mr_reconstruction_steps:
        # The anytime MLM trained on MR's training texts, depths of the test split only: the
        # full estimate-depths run also scores every training token (one pass each, hours here).
        _, d, _, _ = reconstruction_depths(splits, bert, tok, steps=args.mr_reconstruction_steps, max_length=512,
                                           progress=True, depth_splits=("test",))
        mr["reconstruction6"] = torch.cat([strip_specials(x) for x in d["test"]])
    if args.mr_halting_checkpoint:
        mr["halting6"] = torch.cat(_halting_depths(args.mr_halting_checkpoint, splits["test"].texts))
    for k in ("reconstruction6", "halting6"):
        if k in mr:
            assert mr[k].numel() == int(lengths.sum()), k
    flat["mr"] = mr
    torch.save(flat, args.out)
    print(f"added MR ({len(lengths)} reviews, {int(lengths.sum())} tokens; MI N=12 mean depth "
          f"{mr['mi'][12].float().mean():.2f}; {sorted(k for k in mr if k.endswith('6'))}) to {args.out}")


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--add-mr", action="store_true", help="add MR depths to the existing file")
    ap.add_argument("--mr-depths", default=None, help="estimate-depths output for MR, N = 6 (reconstruction)")
    ap.add_argument("--mr-reconstruction-steps", type=int, default=0,
                    help="without --mr-depths: train the anytime MLM this many steps on MR's training texts "
                         "and estimate the test split's depths (lambda 0.1)")
    ap.add_argument("--mr-halting-checkpoint", default=None, help="a `train --dataset mr --depth halting` checkpoint")
    ap.add_argument("--depths", default="runs/depths/trec", help="estimate-depths output for TREC, N = 6")
    ap.add_argument("--halting-checkpoint", default=None, help="a `train --depth halting` checkpoint (TREC)")
    ap.add_argument("--out", help="the samples file", default=os.path.join(os.path.dirname(__file__), "data", "depth_samples.pt"))
    args = ap.parse_args()
    if args.add_mr:
        return add_mr(args)

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
        out["halting6"] = _halting_depths(args.halting_checkpoint, splits["test"].texts)
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
