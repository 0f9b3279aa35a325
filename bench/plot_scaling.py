"""Plot gpu_scaling.py's results: speed, speed-up over full depth, and how launch-bound each run is.

    python bench/plot_scaling.py bench/results/h200/gpu_scaling.json [more.json ...] --out DIR

Writes DIR/scaling.png, three panels against the batch size (log scale), one line per model:
samples/s; speed-up over `fixed` (our encoder at full depth; each depth source's FLOP ideal
dashed in the same colour); host/GPU, the time to issue a forward over the time until the GPU
is done (1: launch-bound, the GPU waits for Python; well below 1: GPU-bound). Several JSONs
(gpu.sh's scaling stage and gpu_followup.sh's) are merged; a model at a batch measured twice
keeps the first file's row. Also DIR/scaling.md, the same numbers as a table.
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(paths: list) -> tuple:
    """(rows, devices) of the JSONs; later files do not replace a (model, batch) already seen."""
    rows, seen, devices = [], set(), []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        devices.append(data.get("device", "?"))
        for r in data["rows"]:
            if (r["model"], r["batch"]) not in seen:
                seen.add((r["model"], r["batch"]))
                rows.append(r)
    return rows, devices


def plot(rows: list, title: str, path: str) -> None:
    models = list(dict.fromkeys(r["model"] for r in rows))
    colours = {m: f"C{i % 10}" for i, m in enumerate(models)}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for m in models:
        mine = sorted((r for r in rows if r["model"] == m), key=lambda r: r["batch"])
        b = [r["batch"] for r in mine]
        style = dict(color=colours[m], marker="o", label=m, linestyle="--" if "graphs" in m else "-")
        axes[0].plot(b, [r["samples_per_s"] for r in mine], **style)
        axes[1].plot(b, [r["speedup"] for r in mine], **style)
        if any(r["ideal"] > 1.001 for r in mine) and "+" not in m:  # one ideal per depth source
            axes[1].plot(b, [r["ideal"] for r in mine], color=colours[m], linestyle=":", alpha=0.7,
                         label=f"{m}: FLOP ideal")
        axes[2].plot(b, [r["host_over_gpu"] for r in mine], **style)
    axes[0].set_ylabel("samples/s")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("speed-up over our full depth")
    axes[1].axhline(1.0, color="grey", linewidth=0.8)
    axes[2].set_ylabel("host time / GPU time per forward")
    axes[2].set_ylim(0, 1.1)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch (documents)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: list) -> str:
    cols = ["batch", "model", "samples_per_s", "speedup", "ideal", "measured_over_ideal", "host_over_gpu",
            "host_ms_per_forward", "first_pass_s", "graphs_captured"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(rows, key=lambda r: (r["batch"], r["model"])):
        cells = [f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("json", nargs="+", help="gpu_scaling.py --out files (gpu_scaling.json, followup_scaling.json)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    rows, devices = load(a.json)
    os.makedirs(a.out, exist_ok=True)
    title = f"{', '.join(dict.fromkeys(devices))}: BERT-base N=12, pools of IMDB-length documents ({', '.join(a.json)})"
    plot(rows, title, os.path.join(a.out, "scaling.png"))
    with open(os.path.join(a.out, "scaling.md"), "w") as f:
        f.write(f"# {title}\n\n" + table(rows))
    print(f"plot_scaling.py: {len(rows)} rows -> {a.out}/scaling.png, scaling.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
