"""Turn a pytest-benchmark JSON into plots, a Markdown table and summary.json.

    pytest bench --benchmark-only --benchmark-json=bench/results/cpu/benchmark.json
    python bench/plot.py bench/results/cpu/benchmark.json --out bench/results/cpu --command "..."

Writes speed_vs_n.png (paper's Figure 3b), speed_vs_batch.png (Figure 4),
speedup_vs_batch.png (measured vs ideal speed-up), results.md and summary.json:
{"device", "date", "command", "speed_vs_n": {model: [samples/s for N = 1..12]},
 "speed_vs_batch": {model: [samples/s for batch 1..15]}, "speedup_of_ideal": {batch: measured/ideal}, ...}
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
    with open(path) as f:
        data = json.load(f)
    return [b["extra_info"] for b in data["benchmarks"] if b.get("extra_info")]


def series(records: list, group: str, key: str, value: str = "samples_per_s") -> dict:
    """{model: [(key, value), ...] sorted by key} for one benchmark group."""
    out = defaultdict(list)
    for r in records:
        if r.get("group") == group:
            out[r["model"]].append((r[key], r[value]))
    return {m: sorted(v) for m, v in out.items()}


def summarize(records: list, command: str, device: str | None = None) -> dict:
    by_n = series(records, "speed_vs_n", "N")
    by_b = series(records, "speed_vs_batch", "batch")
    ratio = series(records, "speed_vs_batch", "batch", "measured_over_ideal")
    dev = device or next((r["device"] for r in records if "device" in r), "unknown")
    return {
        "device": dev,
        "date": datetime.date.today().isoformat(),
        "command": command,
        "speed_vs_n": {m: [v for _, v in pts] for m, pts in by_n.items()},
        "n_values": sorted({k for pts in by_n.values() for k, _ in pts}),
        "speed_vs_batch": {m: [v for _, v in pts] for m, pts in by_b.items()},
        "batch_values": sorted({k for pts in by_b.values() for k, _ in pts}),
        "speedup_of_ideal": {str(b): v for b, v in ratio.get("mi", [])},
        "speedup_of_ideal_by_model": {m: {str(b): v for b, v in pts} for m, pts in ratio.items()},
        "kernels": [{k: r[k] for k in ("op", "backend", "rows", "gbps", "fraction_of_copy_bw") if k in r}
                    for r in records if r.get("group") == "kernels"],
        "savings": [r for r in records if r.get("bench") == "savings"],
    }


def _line_plot(pts_by_model: dict, xlabel: str, ylabel: str, title: str, path: str) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for model, pts in sorted(pts_by_model.items()):
        ax.plot([k for k, _ in pts], [v for _, v in pts], marker="o", ms=3, label=model)
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
    by_n = series(records, "speed_vs_n", "N")
    if by_n:
        paths.append(os.path.join(out_dir, "speed_vs_n.png"))
        _line_plot(by_n, "maximum depth N", "samples / s (batch 1)", f"speed vs N ({device})", paths[-1])
    by_b = series(records, "speed_vs_batch", "batch")
    if by_b:
        paths.append(os.path.join(out_dir, "speed_vs_batch.png"))
        _line_plot(by_b, "batch size", "samples / s (N = 12)", f"speed vs batch size ({device})", paths[-1])
    meas = series(records, "speed_vs_batch", "batch", "measured_speedup")
    ideal = series(records, "speed_vs_batch", "batch", "ideal_speedup")
    pts = {f"{m} measured": meas[m] for m in ("mi", "reconstruction", "halting") if m in meas}
    pts.update({f"{m} ideal (FLOPs)": ideal[m] for m in ("mi", "reconstruction", "halting") if m in ideal})
    if pts:
        paths.append(os.path.join(out_dir, "speedup_vs_batch.png"))
        _line_plot(pts, "batch size", "speed-up over fixed depth", f"measured vs ideal ({device})", paths[-1])
    return paths


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
    for s in summary["savings"]:
        lines.append(f"Savings benchmark ({s['shape']}): adaptive {s['measured_speedup']:.2f}x faster than full depth, "
                     f"ideal {s['ideal_speedup']:.2f}x from counted FLOPs ({s['measured_over_ideal']:.0%} of ideal), "
                     f"{s['active_token_layer_fraction']:.1%} of token-layers active.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="pytest-benchmark --benchmark-json output")
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
