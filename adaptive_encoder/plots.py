"""PNG figures in the paper's style (matplotlib, Agg backend: no display needed)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _grouped_bars(ax, x, series: dict) -> None:
    """One bar per series at each x, side by side. series: {label: heights}."""
    width = 0.8 / max(len(series), 1)
    for i, (name, heights) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=name)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)  # outside: bars reach the top


def _finish(fig, path: str, rect=(0, 0, 1, 1)) -> None:
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mi_figure(mi_values, histograms: dict, num_layers: int, path: str, title: str = "") -> None:
    """Paper's Figure 1: histogram of words' MI values (log scale) and depth histograms.

    histograms: {method: counts over depths 0..N} of tokens."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    mi = np.asarray([v for v in mi_values if v > 0])
    a.hist(np.log10(mi), bins=60, color="#4878a8")
    a.set_xlabel("log10 MI(word; label)")
    a.set_ylabel("words")
    a.set_title("MI of training words")
    depths = np.arange(1, num_layers + 1)
    fractions = {}
    for name, counts in histograms.items():
        counts = np.asarray(counts[1:num_layers + 1], dtype=float)
        fractions[name] = counts / max(counts.sum(), 1)
    _grouped_bars(b, depths, fractions)
    b.set_xlabel("depth")
    b.set_ylabel("fraction of tokens")
    b.set_xticks(depths)
    b.set_title("estimated depths")
    if title:
        fig.suptitle(title)
    _finish(fig, path)


def sentence_figure(tokens, depths_by_method: dict, num_layers: int, path: str, title: str = "") -> None:
    """Paper's Figure 5: one sentence's tokens with each method's depth."""
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(tokens)), 3.5))
    x = np.arange(len(tokens))
    _grouped_bars(ax, x, depths_by_method)
    ax.set_xticks(x)
    ax.set_xticklabels(tokens, rotation=60, ha="right")
    ax.set_yticks(range(0, num_layers + 1))
    ax.set_ylabel("depth")
    if title:
        ax.set_title(title)
    _finish(fig, path)


def accuracy_vs_layers_figure(points: dict, path: str, title: str = "") -> None:
    """Paper's Figure 3a: test accuracy vs N per variant (mean, error bar = std over seeds),
    beside the share of token-layers each variant computes.

    points: {variant: {N: (accuracy %, std, token-layers %, seeds)}}
    (experiment.write_sweep_markdown's table numbers)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for v, by_n in points.items():
        ns = sorted(by_n)
        a.errorbar(ns, [by_n[n][0] for n in ns], yerr=[by_n[n][1] for n in ns], marker="o", capsize=3, label=v)
        b.plot(ns, [by_n[n][2] for n in ns], marker="o", label=v)
    for ax, ylabel in ((a, "test accuracy %"), (b, "token-layers computed %")):
        ax.set_xlabel("N (layers)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    _finish(fig, path)


def accuracy_tradeoff_figure(points: dict, path: str, variants: tuple, title: str = "") -> None:
    """Accuracy against compute: one panel per (dataset, model, N), one point per variant at
    (share of token-layers computed %, mean test accuracy %), error bar = std over seeds.

    points: {(dataset, model, N): {variant: (token-layers %, accuracy %, std, seeds)}}
    (experiment.write_markdown's table numbers); variants: every variant name, for colours and
    the legend's order."""
    groups = list(points)
    cols = min(3, max(len(groups), 1))
    rows = -(-len(groups) // cols) if groups else 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows + 0.6), squeeze=False)
    most = max((n for d in points.values() for (_, _, _, n) in d.values()), default=0)
    handles = {}
    for ax, g in zip(axes.flat, groups):
        for v, (x, y, sd, n) in points[g].items():
            handles[v] = ax.errorbar([x], [y], yerr=[sd], marker="o", capsize=3, color=f"C{variants.index(v)}")
            if n < most:  # fewer seeds than the rest of the figure: say so beside the point
                ax.annotate(f"{n} seed{'s' if n > 1 else ''}", (x, y), xytext=(5, -3), textcoords="offset points",
                            fontsize=7)
        ax.set_title(f"{g[0]}, {g[1]}, N = {g[2]}", fontsize=10)
        ax.set_xlim(0, 105)
        ax.set_xlabel("token-layers computed %")
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    # One legend for every panel, below them (inside a panel it covered points).
    shown = [v for v in variants if v in handles]
    fig.legend([handles[v] for v in shown], shown, loc="lower center", ncol=max(len(shown), 1), frameon=False)
    fig.suptitle(title or f"Accuracy against compute (mean and std over {most} seeds unless marked)")
    _finish(fig, path, rect=(0, 0.6 / (3.4 * rows + 0.6), 1, 1))
