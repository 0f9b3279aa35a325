"""Turn a pytest-benchmark JSON into plots, a Markdown table and summary.json.

    pytest bench --benchmark-only --benchmark-json=bench/results/cpu/benchmark.json
    python bench/plot.py bench/results/cpu/benchmark.json --out bench/results/cpu --command "..."

Writes speed_vs_n.png (paper's Figure 3b), speed_vs_batch.png (Figure 4),
speedup_vs_batch.png (measured vs ideal speed-up), results.md and summary.json:
{"device", "date", "command", "speed_vs_n": {model: [samples/s for N = 1..12]},
 "speed_vs_batch": {model: [samples/s for batch 1..15]}, "speed_vs_n_band" / "speed_vs_batch_band":
 {model: [[min, max], ...]} over the pools, "speedup_of_ideal": {batch: measured/ideal} (MI),
 "layers_only_speedup" / "measured_over_layers_only": {batch: x} (MI's layer work alone, see test_speed.py),
 "depth_sources": {model: {"avg_depth", "active_fraction", "dataset"}},
 "training_step": {"measured_speedup", "ideal_speedup", ...}, ...}
"""
import argparse
import datetime
import json
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load_records(path: str) -> list:
    """The records of a pytest-benchmark JSON, or of a $BENCH_RECORDS JSON-lines file (.jsonl).
    A missing or broken JSON (a run cut short writes none, or an empty one) falls back to the
    records.jsonl beside it, which has every benchmark that finished."""
    if path.endswith(".jsonl"):
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    try:
        with open(path) as f:
            data = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError) as e:
        alt = os.path.join(os.path.dirname(path), "records.jsonl")
        if not os.path.exists(alt):
            raise
        print(f"plot.py: {path} unusable ({type(e).__name__}); using {alt}")
        return load_records(alt)
    return [b["extra_info"] for b in data["benchmarks"] if b.get("extra_info")]


def series(records: list, group: str, key: str, value: str = "samples_per_s") -> dict:
    """{model: [(key, value), ...] sorted by key} for one benchmark group."""
    out = defaultdict(list)
    for r in records:
        if r.get("group") == group:
            out[r["model"]].append((r[key], r[value]))
    return {m: sorted(v) for m, v in out.items()}


def band_series(records: list, group: str, key: str) -> dict:
    """{model: [(key, (min, max)), ...]} of samples/s over the pools, sorted by key."""
    out = defaultdict(list)
    for r in records:
        if r.get("group") == group and "samples_per_s_band" in r:
            out[r["model"]].append((r[key], tuple(r["samples_per_s_band"])))
    return {m: sorted(v) for m, v in out.items()}


def depth_sources(records: list) -> dict:
    """{source: {"avg_depth", "active_fraction"}} of every adaptive model, from the batch sweep
    (N = 12), averaged over its batch sizes (the same pools at every batch size)."""
    out = {}
    for model in sorted({r["model"] for r in records if r.get("group") == "speed_vs_batch"}):
        rs = [r for r in records if r.get("group") == "speed_vs_batch" and r["model"] == model and "avg_depth" in r]
        if rs and model not in ("fixed", "hf_sdpa", "hf_eager", "onnxruntime"):
            out[model] = {"avg_depth": sum(r["avg_depth"] for r in rs) / len(rs),
                          "active_fraction": sum(r["active_token_layer_fraction"] for r in rs) / len(rs),
                          "dataset": rs[0].get("depth_source", "trec")}
    return out


def summarize(records: list, command: str, device: str | None = None) -> dict:
    by_n = series(records, "speed_vs_n", "N")
    by_b = series(records, "speed_vs_batch", "batch")
    ratio = series(records, "speed_vs_batch", "batch", "measured_over_ideal")
    speedup = series(records, "speed_vs_batch", "batch", "measured_speedup")
    layers_only = dict(speedup.get("layers_only_mi", []))
    dev = device or next((r["device"] for r in records if "device" in r), "unknown")
    train = next((r for r in records if r.get("bench") == "training_step"), None)
    return {
        "device": dev,
        "date": datetime.date.today().isoformat(),
        "command": command,
        "speed_vs_n": {m: [v for _, v in pts] for m, pts in by_n.items()},
        "n_values": sorted({k for pts in by_n.values() for k, _ in pts}),
        "speed_vs_batch": {m: [v for _, v in pts] for m, pts in by_b.items()},
        "batch_values": sorted({k for pts in by_b.values() for k, _ in pts}),
        "speed_vs_n_band": {m: [list(v) for _, v in pts] for m, pts in band_series(records, "speed_vs_n", "N").items()},
        "speed_vs_batch_band": {m: [list(v) for _, v in pts]
                                for m, pts in band_series(records, "speed_vs_batch", "batch").items()},
        "speedup_of_ideal": {str(b): v for b, v in ratio.get("mi", [])},
        "depth_sources": depth_sources(records),
        "training_step": None if train is None else {k: train[k] for k in ("measured_speedup", "ideal_speedup",
                                                                              "measured_over_ideal", "shape")},
        "speedup_of_ideal_by_model": {m: {str(b): v for b, v in pts} for m, pts in ratio.items()},
        # The bound without bookkeeping (layers_only_mi: the same layer work on pre-gathered
        # inputs) and how much of it MI reaches: the gap to the FLOP ideal split in two.
        "layers_only_speedup": {str(b): v for b, v in layers_only.items()},
        "measured_over_layers_only": {str(b): v / layers_only[b] for b, v in speedup.get("mi", []) if b in layers_only},
        "kernels": [{k: r[k] for k in ("op", "backend", "rows", "gbps", "fraction_of_copy_bw") if k in r}
                    for r in records if r.get("group") == "kernels"],
        "attention_kernel": [{k: r[k] for k in ("backend", "queries", "batch", "tflops", "speedup_over_reference")}
                             for r in records if r.get("group") == "attention_kernel"],
        "norm_kernel": [{k: r[k] for k in ("op", "backend", "rows", "gbps", "fraction_of_copy_bw", "speedup_over_unfused")}
                        for r in records if r.get("group") == "norm_kernel"],
        "savings": [r for r in records if r.get("bench") == "savings"],
    }


def _line_plot(pts_by_model: dict, xlabel: str, ylabel: str, title: str, path: str, bands: dict | None = None) -> None:
    """One line per model; with `bands` ({model: [(x, (lo, hi))]}) the min-max over pools shaded."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    # One colour per kind of model; MR's depth sources (mr_*) dashed in the colour of TREC's.
    kinds = sorted({m.removeprefix("mr_") for m in pts_by_model})
    colors = {k: plt.get_cmap("tab10" if len(kinds) <= 10 else "tab20")(i) for i, k in enumerate(kinds)}
    for model, pts in sorted(pts_by_model.items()):
        line, = ax.plot([k for k, _ in pts], [v for _, v in pts], marker="o", ms=3, label=model,
                        color=colors[model.removeprefix("mr_")], linestyle="--" if model.startswith("mr_") else "-")
        if bands and model in bands:
            xs = [k for k, _ in bands[model]]
            ax.fill_between(xs, [lo for _, (lo, _) in bands[model]], [hi for _, (_, hi) in bands[model]],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_all(records: list, out_dir: str, device: str) -> list:
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    src = "depths: TREC; mr_*: MR; band: min-max over pools"
    by_n = series(records, "speed_vs_n", "N")
    if by_n:
        paths.append(os.path.join(out_dir, "speed_vs_n.png"))
        _line_plot(by_n, "maximum depth N", "samples / s (batch 1)", f"speed vs N ({device})\n{src}", paths[-1],
                   band_series(records, "speed_vs_n", "N"))
    by_b = series(records, "speed_vs_batch", "batch")
    if by_b:
        paths.append(os.path.join(out_dir, "speed_vs_batch.png"))
        _line_plot(by_b, "batch size", "samples / s (N = 12)", f"speed vs batch size ({device})\n{src}", paths[-1],
                   band_series(records, "speed_vs_batch", "batch"))
    meas = series(records, "speed_vs_batch", "batch", "measured_speedup")
    ideal = series(records, "speed_vs_batch", "batch", "ideal_speedup")
    if any(m in meas for m in ADAPTIVE):
        paths.append(os.path.join(out_dir, "speedup_vs_batch.png"))
        _speedup_plot(meas, ideal, f"measured vs ideal ({device})", paths[-1])
    return paths


ADAPTIVE = ("mi", "mr_mi", "reconstruction", "halting")


def _speedup_plot(meas: dict, ideal: dict, title: str, path: str) -> None:
    """One colour per depth source: measured solid, FLOP ideal dashed; MI's layer work alone
    (layers_only_mi: no plan, gathers or scatters) dotted in MI's colour."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, m in enumerate(m for m in ADAPTIVE if m in meas):
        color = plt.get_cmap("tab10")(i)
        for pts, style, label in ((meas.get(m), "-", "measured"), (ideal.get(m), "--", "ideal (FLOPs)"),
                                  (meas.get("layers_only_mi") if m == "mi" else None, ":", "layers only")):
            if pts:
                ax.plot([k for k, _ in pts], [v for _, v in pts], linestyle=style, marker="o" if style == "-" else None,
                        ms=3, color=color, label=f"{m} {label}")
    ax.set_xlabel("batch size")
    ax.set_ylabel("speed-up over fixed depth")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(summary: dict, records: list) -> str:
    lines = [f"# Benchmarks on {summary['device']} ({summary['date']})", "", f"Command: `{summary['command']}`", ""]
    rows = [r for r in records if r.get("group") in ("speed_vs_n", "speed_vs_batch")]
    if rows:
        lines += ["| group | model | N | batch | samples/s | active token-layers | speed-up | ideal | measured/ideal |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['group']} | {r['model']} | {r['N']} | {r['batch']} | {r['samples_per_s']:.1f} | "
                         f"{r['active_token_layer_fraction']:.1%} | {r['measured_speedup']:.2f} | "
                         f"{r['ideal_speedup']:.2f} | {r['measured_over_ideal']:.2f} |")
        lines.append("")
    kern = [r for r in records if r.get("group") == "kernels"]
    if kern:
        lines += [f"Kernels (copy bandwidth measured in the same run: {kern[0]['copy_gbps']:.1f} GB/s)", "",
                  "| op | backend | rows | GB/s | of copy bandwidth |", "|---|---|---|---|---|"]
        for r in kern:
            lines.append(f"| {r['op']} | {r['backend']} | {r['rows']} | {r['gbps']:.2f} | {r['fraction_of_copy_bw']:.0%} |")
        lines.append("")
    fused = [r for r in records if r.get("group") == "norm_kernel"]
    if fused:
        lines += ["Fused add + LayerNorm (adaptive_encoder/norm.py) against the add and LayerNorm it replaces "
                  "(+ the scatter for the _into_ form, + the masked copy of half the rows for at_rows), "
                  "interleaved in the same run:", "",
                  "| op | backend | rows | GB/s | of copy bandwidth | ms | unfused ms | speed-up |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in fused:
            lines.append(f"| {r['op']} | {r['backend']} | {r['rows']} | {r['gbps']:.2f} | {r['fraction_of_copy_bw']:.0%} | "
                         f"{r['seconds'] * 1e3:.3f} | {r['unfused_seconds'] * 1e3:.3f} | {r['speedup_over_unfused']:.2f}x |")
        lines.append("")
    attn = [r for r in records if r.get("group") == "attention_kernel"]
    if attn:
        lines += ["Varlen attention (IMDB-like lengths; the padded reference timed interleaved in the same run):", "",
                  "| backend | queries | batch | query / key rows | TFLOP/s | ms | reference ms | speed-up |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in attn:
            lines.append(f"| {r['backend']} | {r['queries']} | {r['batch']} | {r['query_rows']} / {r['key_rows']} | "
                         f"{r['tflops']:.2f} | {r['seconds'] * 1e3:.3f} | {r['reference_seconds'] * 1e3:.3f} | "
                         f"{r['speedup_over_reference']:.2f}x |")
        lines.append("")
    if summary.get("depth_sources"):
        lines += ["Depth sources (N = 12, the benchmark pools):", "",
                  "| model | dataset | avg depth | active token-layers |", "|---|---|---|---|"]
        for m, d in summary["depth_sources"].items():
            lines.append(f"| {m} | {d['dataset']} | {d['avg_depth']:.2f} | {d['active_fraction']:.1%} |")
        lines.append("")
    if summary.get("training_step"):
        t = summary["training_step"]
        lines += [f"Training step ({t['shape']}): adaptive forward + backward {t['measured_speedup']:.2f}x faster "
                  f"than full depth, ideal {t['ideal_speedup']:.2f}x ({t['measured_over_ideal']:.0%} of ideal).", ""]
    for s in summary["savings"]:
        lines.append(f"Savings benchmark ({s['shape']}): adaptive {s['measured_speedup']:.2f}x faster than full depth, "
                     f"ideal {s['ideal_speedup']:.2f}x from counted FLOPs ({s['measured_over_ideal']:.0%} of ideal), "
                     f"{s['active_token_layer_fraction']:.1%} of token-layers active.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="pytest-benchmark --benchmark-json output, or a $BENCH_RECORDS .jsonl")
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", default="", help="the command that produced the JSON")
    ap.add_argument("--device", default=None, help="device name for titles and summary (default: from records)")
    args = ap.parse_args(argv)
    records = load_records(args.json)
    summary = summarize(records, args.command, args.device)
    paths = plot_all(records, args.out, summary["device"])
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown(summary, records))
    print(f"wrote {', '.join(paths + [os.path.join(args.out, 'summary.json'), os.path.join(args.out, 'results.md')])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
