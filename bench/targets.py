"""Issue 10's targets read from a GPU run's results: each target, the numbers that decide it, a verdict.

    python bench/targets.py bench/results/h200 [--out bench/results/h200/targets.md]

Reads whatever of these the folder has (not below run<N>/: earlier runs kept beside it):
correctness.json (gpu_check.py), summary.json and records.jsonl (gpu.sh's benchmark suite: its
records, and the kernels' bandwidth), gpu_scaling.json (gpu.sh's scaling stage), and anywhere
below it followup_scaling.json, nsweep/gpu_scaling.json, records.jsonl and host_profile.json
(gpu_followup.sh's archive, unpacked). Every line names its source and gives the numbers; a
target without numbers says "not measured". The verdicts apply the issue's words to the numbers and nothing else: why a
target is missed (launch-bound, padding, ...) is for bench/NOTES.md. Eager, graph mode
(cuda_graphs=True) and auto (cuda_graphs="auto") are judged on separate lines, each adaptive arm
over its own mode's full depth. A second table gives the settings the run's numbers decide
(DENSE_ROWS, where to plan, where graph mode pays, STACK, AUTO_ROWS, FLASH, CUDA_CPP, ...), each by its rule
(bench/NOTES.md, "Reading a run"). A third splits each adaptive arm's share of its FLOP ideal
into what its GPU kernels keep and the time the GPU waits (gpu_host_profile.py's kernel times).

Ratios: "x HF time" is our time over transformers' (<= 1.0: full depth no slower than BertModel
with SDPA); "x fixed" is samples/s over our fixed depth's in the same run (>= 1.0: adaptive no
slower); "of ideal" is that speed-up over the FLOP-counted one.
"""
import argparse
import glob
import json
import os
import re

MET, MISSED, NONE = "met", "MISSED", "not measured"
ADAPTIVE = ("mi", "reconstruction", "halting", "mr_mi", "mr_reconstruction", "mr_halting")


def _load(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _verdict(oks: list) -> str:
    return NONE if not oks else (MET if all(oks) else MISSED)


# id -> the words
TARGETS = {
    "correctness": "every GPU correctness check passes",
    "full_depth_vs_hf": "full depth <= 1.0x HF SDPA time, batch >= 8",
    "copy_bandwidth": "gather/scatter >= 85 % of copy bandwidth, >= 64k rows of 768 bf16",
    "mi_of_ideal": "MI speed-up >= 0.85 of the FLOP ideal, batch >= 8",
    "batch1_adaptive": "batch 1: adaptive >= fixed depth at every N",
    "batch1_vs_hf": "batch 1: fixed depth <= 1.1x HF SDPA time",
    "speedup_with_batch": "MI speed-up does not shrink with the batch (largest batch >= smallest)",
}


def _line(target: str, source: str, items: list) -> dict:
    """target: an id of TARGETS; items: (label, value text, ok) -> one row of the report."""
    return dict(id=target, target=TARGETS[target], source=source, numbers=", ".join(f"{label} {text}" for label, text, _ in items),
                verdict=_verdict([ok for _, _, ok in items]))


def _scaling_rows(results: dict) -> dict:
    """{source: rows} of every gpu_scaling.py output in the folder."""
    return {name: data["rows"] for name, data in results.items()
            if name.endswith("scaling.json") and data and data.get("rows")}


def _suite(results: dict, group: str, model: str, field: str = "measured_speedup") -> dict:
    """{(batch, N): field} of the benchmark suite's records of `model` in `group` (records.jsonl:
    speed-ups are paired with fixed depth on the same pools, as in results.md; for hf_sdpa that
    speed-up is our time over HF's)."""
    return {(r["batch"], r["N"]): r[field] for r in results.get("records.jsonl", [])
            if r.get("group") == group and r.get("model") == model and field in r}


def _by(rows: list, **match) -> dict:
    """{(batch, N): row} of the rows whose fields equal `match`."""
    return {(r["batch"], r.get("N", 12)): r for r in rows if all(r.get(k) == v for k, v in match.items())}


def _base(model: str) -> str:
    """The full-depth arm a model's speed-up is read against: graph mode's own for graph-mode
    arms, cuda_graphs="auto"'s for "+auto" arms (gpu_scaling's `speedup` column is over eager
    `fixed` for every arm, which credits a graph-mode MI with graph mode's gain as well as
    depth's: 5.65x at batch 1 in H200 run 5)."""
    return "fixed+graphs" if "+graphs" in model else "fixed+auto" if model.endswith("+auto") else "fixed"


def _speedups(rows: list, model: str) -> dict:
    """{(batch, N): (speed-up over _base(model) in samples/s, that over the FLOP ideal)} where both were timed."""
    ours, base = _by(rows, model=model), _by(rows, model=_base(model))
    return {k: (r["samples_per_s"] / base[k]["samples_per_s"], r["samples_per_s"] / base[k]["samples_per_s"] / r["ideal"])
            for k, r in ours.items() if k in base}


def correctness(results: dict) -> list:
    data = results.get("correctness.json")
    if not data:
        return [_line("correctness", "correctness.json", [])]
    checks = data.get("checks", {})
    items = [(name, "ok" if c.get("ok") else "FAILED", bool(c.get("ok"))) for name, c in checks.items()]
    if data.get("complete") is False:  # the stage was cut: the checks it did not reach count as missed
        items.append(("the remaining checks", "not run (stage cut by its time limit)", False))
    return [_line("correctness", "correctness.json", items)]


def full_depth_vs_hf(results: dict) -> list:
    """Full depth at most 1.0x the time of BertModel (SDPA) at batch >= 8."""
    target, out = "full_depth_vs_hf", []
    hf = _suite(results, "speed_vs_batch", "hf_sdpa")
    items = [(f"batch {b}", f"{r:.2f}x HF time", r <= 1.0) for (b, _), r in sorted(hf.items()) if b >= 8]
    if items:
        out.append(_line(target, "records.jsonl batch sweep (eager)", items))
    for source, rows in _scaling_rows(results).items():
        hf = _by(rows, model="hf_sdpa")
        for model, mode in (("fixed", "eager"), ("fixed+graphs", "graph mode"), ("fixed+auto", "auto")):
            ours = _by(rows, model=model)
            items = [(f"batch {b}", f"{ours[b, n]['seconds'] / hf[b, n]['seconds']:.2f}x HF time",
                      ours[b, n]["seconds"] <= hf[b, n]["seconds"]) for b, n in sorted(ours) if b >= 8 and (b, n) in hf]
            if items:
                out.append(_line(target, f"{source} ({mode})", items))
    return out or [_line(target, "records.jsonl, gpu_scaling.json", [])]


def _record_sources(results: dict) -> dict:
    """{source: records} of every records.jsonl read: gpu.sh's at the top, the follow-up's below."""
    return {name: recs for name, recs in results.items() if name.endswith("records.jsonl") and recs}


def copy_bandwidth(results: dict) -> list:
    """gather / scatter at >= 85 % of the device-to-device copy's bandwidth, >= 64k rows."""
    target, out = "copy_bandwidth", []
    # The records say the shape (hidden size, dtype); summary.json's list does not, so it is
    # read only without records.
    sources = {name: [r for r in recs if r.get("group") == "kernels"] for name, recs in _record_sources(results).items()}
    sources = {name: [r for r in recs if r.get("hidden") == 768 and r.get("dtype") == "torch.bfloat16"]
               for name, recs in sources.items() if recs} \
        or {"summary.json": (results.get("summary.json") or {}).get("kernels", [])}
    for name, kernels in sources.items():
        items = [(f"{k['op']}/{k['backend']} {k['rows']} rows", f"{k['fraction_of_copy_bw']:.0%}",
                  k["fraction_of_copy_bw"] >= 0.85)
                 for k in kernels if k["op"] in ("gather", "scatter", "scatter_") and k["rows"] >= 65536
                 and k["backend"] != "torch"]
        kind = "kernels, 768 bf16" if name.endswith("records.jsonl") else "kernels"
        out.append(_line(target, f"{name} {kind} (our backends)", items))
    return out


def mi_of_ideal(results: dict) -> list:
    """MI depths' measured speed-up at least 0.85 of the FLOP ideal at batch >= 8."""
    target, out = "mi_of_ideal", []
    of_ideal = _suite(results, "speed_vs_batch", "mi", "measured_over_ideal")
    items = [(f"batch {b}", f"{v:.2f} of ideal", v >= 0.85) for (b, _), v in sorted(of_ideal.items()) if b >= 8]
    if items:
        out.append(_line(target, "records.jsonl batch sweep (eager)", items))
    for source, rows in _scaling_rows(results).items():
        for model, mode in (("mi", "eager"), ("mi+dense", "eager, dense"), ("mi+graphs", "graph mode"),
                            ("mi+graphs-dense", "graph mode, dense"), ("mi+auto", "auto")):
            ours = _speedups(rows, model)
            items = [(f"batch {b}", f"{ours[b, n][1]:.2f} of ideal", ours[b, n][1] >= 0.85)
                     for b, n in sorted(ours) if b >= 8]
            if items:
                out.append(_line(target, f"{source} ({mode}, over {_base(model)})", items))
    return out or [_line(target, "records.jsonl, gpu_scaling.json", [])]


def batch_one(results: dict) -> list:
    """Batch 1: adaptive never slower than fixed depth at any N."""
    never, out = "batch1_adaptive", []
    for group, what in (("speed_vs_n", "N sweep"), ("speed_vs_batch", "batch sweep")):
        for m in ADAPTIVE:
            items = [(f"N={n}", f"{v:.2f}x fixed", v >= 1.0)
                     for (b, n), v in sorted(_suite(results, group, m).items(), key=lambda kv: kv[0][::-1]) if b == 1]
            if items:
                out.append(_line(never, f"records.jsonl {what} ({m})", items))
    for source, rows in _scaling_rows(results).items():
        for base, model in (("fixed", "mi"), ("fixed", "mi+dense"), ("fixed+graphs", "mi+graphs"),
                            ("fixed+graphs", "mi+graphs-dense"), ("fixed+auto", "mi+auto")):
            fixed = _by(rows, model=base, batch=1)
            items = [(f"N={n}", f"{r['samples_per_s'] / fixed[1, n]['samples_per_s']:.2f}x {base}",
                      r["samples_per_s"] >= fixed[1, n]["samples_per_s"])
                     for (_, n), r in sorted(_by(rows, model=model, batch=1).items()) if (1, n) in fixed]
            if items:
                out.append(_line(never, f"{source} ({model})", items))
    return out or [_line(never, "records.jsonl, gpu_scaling.json", [])]


def batch_one_vs_hf(results: dict) -> list:
    """Batch 1: fixed depth within 1.1x of transformers' time."""
    hf_target, out = "batch1_vs_hf", []
    items = [("batch 1", f"{r:.2f}x HF time", r <= 1.1)
             for (b, _), r in sorted(_suite(results, "speed_vs_batch", "hf_sdpa").items()) if b == 1]
    if items:
        out.append(_line(hf_target, "records.jsonl batch sweep (eager)", items))
    for source, rows in _scaling_rows(results).items():
        hf = _by(rows, model="hf_sdpa", batch=1)
        for model, mode in (("fixed", "eager"), ("fixed+graphs", "graph mode"), ("fixed+auto", "auto")):
            ours = _by(rows, model=model, batch=1)
            items = [(f"N={k[1]}", f"{ours[k]['seconds'] / hf[k]['seconds']:.2f}x HF time",
                      ours[k]["seconds"] <= 1.1 * hf[k]["seconds"]) for k in sorted(ours) if k in hf]
            if items:
                out.append(_line(hf_target, f"{source} ({mode})", items))
    return out or [_line(hf_target, "records.jsonl, gpu_scaling.json", [])]


def speedup_with_batch(results: dict) -> list:
    """The speed-up over full depth must not shrink as the batch grows (the paper's does)."""
    target, out = "speedup_with_batch", []
    for source, rows in _scaling_rows(results).items():
        for model in ("mi", "mi+graphs", "mi+auto"):
            ours = _speedups(rows, model)
            for N in sorted({n for _, n in ours}):
                seq = [(b, ours[b, n][0]) for b, n in sorted(ours) if n == N]
                if len(seq) >= 2:
                    text = " -> ".join(f"{s:.2f}" for _, s in seq)
                    out.append(_line(target, f"{source} ({model} over {_base(model)}, N={N})",
                                     [(f"batch {seq[0][0]}..{seq[-1][0]}", text, seq[-1][1] >= seq[0][1])]))
    return out or [_line(target, "gpu_scaling.json", [])]


# --- the settings a GPU run decides (bench/NOTES.md, "Open for a GPU session"): rule, numbers, setting

WIN = 1.02  # "wins": at least 2 % more samples/s in the same interleaved run (medians move ~1-2 % between runs)


def _ratios(results: dict, a: str, b: str) -> dict:
    """{source: [(N, batch, samples/s of a over b, row of a)]} where a and b were timed in one run."""
    out = {}
    for source, rows in _scaling_rows(results).items():
        mine, other = _by(rows, model=a), _by(rows, model=b)
        pairs = [(n, bt, mine[bt, n]["samples_per_s"] / other[bt, n]["samples_per_s"], mine[bt, n])
                 for bt, n in sorted(mine, key=lambda k: (k[1], k[0])) if (bt, n) in other]
        if pairs:
            out[source] = pairs
    return out


def _decision(name: str, rule: str, source: str, pairs: list, setting: str, unit: str = "batch ") -> dict:
    return dict(decision=name, rule=rule, source=source, setting=setting,
                numbers=", ".join(f"{unit}{bt}{'' if n == 12 else f' N={n}'} {r:.2f}x" for n, bt, r, _ in pairs))


def _rows_threshold(results: dict, a: str, b: str, name: str, rule: str, setting: str, value_of) -> list:
    """Per source and N: value_of(K) for the largest batch up to which a beats b (>= WIN) at every
    batch from the smallest, K that batch's mean real tokens per forward; else 0."""
    out = []
    for source, pairs in _ratios(results, a, b).items():
        for N in sorted({p[0] for p in pairs}):
            seq, value = [p for p in pairs if p[0] == N], 0
            for _, _, r, row in seq:  # ascending batch
                if r < WIN:
                    break
                if "tokens_per_forward" not in row:
                    value = None
                    break
                value = value_of(int(row["tokens_per_forward"]))
            chosen = "K not recorded (gpu_scaling.py before tokens_per_forward)" if value is None \
                else f"{setting} = {value}"
            out.append(_decision(name, rule, f"{source} (N={N})", seq, chosen))
    return out


def dense_rows(results: dict) -> list:
    """graphs.DENSE_ROWS: the state size (K^) below which dense layers beat compact ones."""
    from adaptive_encoder.graphs import bucket

    rule = ("mi+graphs-dense over mi+graphs; DENSE_ROWS = K^ = graphs.bucket(K + 1) of the largest batch up to which "
            f"dense wins (>= {WIN}x) at every batch from the smallest, K its mean real tokens per forward; else 0")
    return _rows_threshold(results, "mi+graphs-dense", "mi+graphs", "dense layers", rule, "DENSE_ROWS",
                           lambda k: bucket(k + 1))


def eager_dense_rows(results: dict) -> list:
    """encoder.DENSE_ROWS: the real tokens per forward up to which eager dense layers beat compact ones."""
    rule = ("mi+dense over mi (eager); encoder.DENSE_ROWS = K of the largest batch up to which dense wins "
            f"(>= {WIN}x) at every batch from the smallest, K its mean real tokens per forward; else 0")
    return _rows_threshold(results, "mi+dense", "mi", "eager dense layers", rule, "encoder.DENSE_ROWS", lambda k: k)


def plans(results: dict) -> list:
    """Where depths given on the GPU are planned: eager (mi+host, given on the host, over mi) and
    graph mode (mi+graphs-dev, copied to the host, over mi+graphs-devplan, planned on the GPU)."""
    out = []
    for a, b, name, host in (("mi+host", "mi", "eager: plan on the host", "eager copies device depths to the host"),
                             ("mi+host1", "mi", "eager: plan on the host, torch on one thread",
                              "eager copies device depths to the host (one CPU thread)"),
                             ("mi+graphs-dev", "mi+graphs-devplan", "graph mode: plan on the host", "PLAN_ON_HOST")):
        for source, pairs in _ratios(results, a, b).items():
            lost = [bt for _, bt, r, _ in pairs if r < 1 / WIN]
            setting = (f"{host}: below batch {lost[0]}, the device plan from there" if lost and lost[0] > pairs[0][1]
                       else f"keep the device plan (the host plan loses at batch {lost[0]})" if lost
                       else f"{host}: at every batch measured")
            out.append(_decision(name, f"{a} over {b}; the host plan where it does not lose by > 2 %", source, pairs,
                                 setting))
    return out


def _kept_unless_beaten(results: dict, name: str, flag: str, suffix: str) -> list:
    """A setting on by default (flag), kept unless the arm without it (fixed/mi + suffix) beats the
    default arm by > 2 % somewhere."""
    out = []
    for a in ("fixed", "mi"):
        b = a + suffix
        for source, pairs in _ratios(results, a, b).items():
            lost = [f"{bt}" for _, bt, r, _ in pairs if r < 1 / WIN]
            out.append(_decision(name, f"{a} over {b}", source, pairs,
                                 f"{flag} = False at batch {', '.join(lost)}" if lost else f"{flag} = True (as is)"))
    return out


def fused_norm(results: dict) -> list:
    """norm.FUSED: the fused add + LayerNorm kept unless an unfused arm beats it by > 2 %."""
    return _kept_unless_beaten(results, "fused add + LayerNorm", "norm.FUSED", "+unfused")


def direct_calls(results: dict) -> list:
    """ops.DIRECT: kernels called without the dispatcher, kept unless the dispatched arms beat it."""
    return _kept_unless_beaten(results, "kernels called directly", "ops.DIRECT", "+dispatched")


def graph_mode(results: dict) -> list:
    """Where graph mode pays (it is off unless asked for): fixed+graphs over fixed, mi+graphs over mi."""
    out = []
    for a, b in (("fixed+graphs", "fixed"), ("mi+graphs", "mi")):
        for source, pairs in _ratios(results, a, b).items():
            wins = [f"{bt}" + ("" if n == 12 else f" (N={n})") for n, bt, r, _ in pairs if r >= WIN]
            out.append(_decision("graph mode", f"{a} over {b}", source, pairs,
                                 f"pays at batch {', '.join(wins)}" if wins else "does not pay at any batch measured"))
    return out


def stack_graphs(results: dict) -> list:
    """graphs.STACK: one graph for a stack of whole-state layers, kept unless one graph per layer
    (fixed+graphs-layers) beats it by > 2 % somewhere."""
    out = []
    for source, pairs in _ratios(results, "fixed+graphs", "fixed+graphs-layers").items():
        lost = [f"{bt}" for _, bt, r, _ in pairs if r < 1 / WIN]
        out.append(_decision("one graph per stack", "fixed+graphs over fixed+graphs-layers", source, pairs,
                             f"STACK = False (lost at batch {', '.join(lost)})" if lost else "STACK = True (as is)"))
    return out


def _on_if_it_wins(results: dict, name: str, flag: str, arms: tuple) -> list:
    """A setting off by default (flag), for each (arm with it, arm without): on where it never
    loses by > 2 % and wins by >= 2 % somewhere."""
    out = []
    for a, b in arms:
        for source, pairs in _ratios(results, a, b).items():
            lost = [f"{bt}" for _, bt, r, _ in pairs if r < 1 / WIN]
            won = [f"{bt}" for _, bt, r, _ in pairs if r >= WIN]
            setting = (f"keep {flag} off (loses at batch {', '.join(lost)})" if lost
                       else f"{flag} = True (wins at batch {', '.join(won)})" if won else f"keep {flag} off (no win)")
            out.append(_decision(name, f"{a} over {b}", source, pairs, setting))
    return out


def flash_attention(results: dict) -> list:
    """attention.FLASH (off): PyTorch's FlashAttention-2 in the encoder, by fixed+flash / mi+flash over
    fixed / mi (eager) and mi+graphs-flash over mi+graphs."""
    return _on_if_it_wins(results, "FlashAttention-2 in the encoder", "FLASH",
                          (("fixed+flash", "fixed"), ("mi+flash", "mi"), ("mi+graphs-flash", "mi+graphs")))


def host_threads(results: dict) -> list:
    """The host plan with torch on one CPU thread (mi+host1 over mi+host eager, mi+graphs-host1 over
    mi+graphs): where it wins, intra-op threads woken by the host-side plan slow the forward's
    own host work (run 5: mi+host 0.79-0.87x mi at batch 16-128, every op 1.5-1.7x its host time)."""
    return _on_if_it_wins(results, "host plan on one CPU thread",
                          "ONE_THREAD (not a setting yet: a sequential host plan)",
                          (("mi+host1", "mi+host"), ("mi+graphs-host1", "mi+graphs")))


def cuda_norm(results: dict) -> list:
    """norm.CUDA_CPP (off): the C++ CUDA add + LayerNorm instead of the Triton kernel, eager at every
    size, by fixed+cudanorm / mi+cudanorm over fixed / mi and mi+graphs-cudanorm over mi+graphs;
    beside it the kernel suite's C++ kernel over the Triton one, same form and rows (time ratio)."""
    out = _on_if_it_wins(results, "C++ CUDA add + LayerNorm", "norm.CUDA_CPP",
                         (("fixed+cudanorm", "fixed"), ("mi+cudanorm", "mi"), ("mi+graphs-cudanorm", "mi+graphs")))
    for name, records in _record_sources(results).items():
        recs = {(r["op"], r["rows"], r["backend"]): r for r in records if r.get("group") == "norm_kernel"}
        pairs = [(12, f"{form} {rows} rows", recs[form, rows, "triton"]["seconds"] / r["seconds"], r)
                 for (form, rows, backend), r in sorted(recs.items())
                 if backend == "cuda" and (form, rows, "triton") in recs]
        if pairs:
            lost = [p[1] for p in pairs if p[2] < 1 / WIN]
            out.append(_decision("C++ CUDA add + LayerNorm", "cuda over triton (time ratio, kernel alone)",
                                 f"{name} kernels", pairs, f"slower than Triton at {', '.join(lost)}" if lost
                                 else "as fast as Triton or faster at every size", unit=""))
    return out


def auto_rows(results: dict) -> list:
    """graphs.AUTO_ROWS: cuda_graphs="auto" should run each forward the faster way. Per batch,
    fixed+auto / mi+auto over the better of its eager and graph-mode arms; where it loses by
    > 2 %, the active rows per layer there (K x active share) say which way the limit moves."""
    out = []
    for source, rows in _scaling_rows(results).items():
        for base in ("fixed", "mi"):
            auto, eager, graphed = (_by(rows, model=m) for m in (base + "+auto", base, base + "+graphs"))
            pairs, up, down = [], [], []
            for k in sorted(auto):
                if k not in eager or k not in graphed:
                    continue
                best = max(eager[k], graphed[k], key=lambda r: r["samples_per_s"])
                r = auto[k]["samples_per_s"] / best["samples_per_s"]
                pairs.append((k[1], k[0], r, auto[k]))
                if r < 1 / WIN:
                    per_layer = auto[k].get("tokens_per_forward", 0) * auto[k].get("active", 1)
                    (up if best is graphed[k] else down).append(f"{per_layer:.0f}")
            if pairs:
                setting = "keep AUTO_ROWS" if not (up or down) else "; ".join(
                    part for part in (up and f"raise AUTO_ROWS above {max(up, key=float)} (graph mode won there)",
                                      down and f"lower AUTO_ROWS below {min(down, key=float)} (eager won there)") if part)
                out.append(_decision("cuda_graphs=\"auto\"", f"{base}+auto over the better of {base} and {base}+graphs",
                                     source, pairs, setting))
    return out


def attention(results: dict) -> list:
    """Whether a FlashAttention-2 route (aten::_flash_attention_forward, bf16/fp16, no position
    bias) is worth building: the kernel suite's aten_flash over our Triton kernel, same inputs."""
    out = []
    for name, records in _record_sources(results).items():
        recs = {(r["batch"], r["queries"], r["backend"]): r for r in records if r.get("group") == "attention_kernel"}
        pairs = [(12, f"{b} ({q} queries)", recs[b, q, "triton"]["seconds"] / r["seconds"], r)
                 for (b, q, backend), r in sorted(recs.items()) if backend == "aten_flash" and (b, q, "triton") in recs]
        if not pairs:
            continue
        wins = [p for p in pairs if p[2] >= WIN]
        setting = (f"aten_flash ahead at batch {', '.join(p[1] for p in wins)}: worth a route, by its share of a "
                   "layer's time" if wins else "keep the Triton kernel")
        out.append(_decision("attention kernel", f"aten_flash over triton (time ratio, >= {WIN}x)", f"{name} kernels",
                             pairs, setting))
    return out


def ideal_split(results: dict) -> list:
    """Where an adaptive arm's share of the FLOP ideal goes, from gpu_host_profile.py's
    host_profile.json (one forward's documents per batch, every model on the same lengths):
    of ideal = wall ratio / I = (kernel ratio / I) x (wall ratio / kernel ratio), I the FLOP
    ratio, kernel ratio the GPU kernel time of its full-depth arm over its own, wall ratio the
    same for time per forward. The first factor below 1: the kernels do less per FLOP on the
    smaller layers (launch floors, small GEMMs, padding); the second: the GPU waits (host-bound
    forward, syncs)."""
    out = []
    for name, data in sorted(results.items()):
        if not name.endswith("host_profile.json") or not data:
            continue
        recs = {(r["batch"], r["model"]): r for r in data.get("records", [])}
        for (batch, model), r in sorted(recs.items()):
            base = recs.get((batch, _base(model)))
            if model.split("+")[0] not in ADAPTIVE or not base or not r.get("gpu_us") or not base.get("gpu_us"):
                continue
            ideal = base["full_flops"] / r["flops"]
            kernel, wall = base["gpu_us"] / r["gpu_us"], base["total_ms"] / r["total_ms"]
            out.append(dict(source=name, batch=batch, model=model, over=base["model"], tokens=r["tokens"],
                            ideal=ideal, kernel=kernel, wall=wall, of_ideal=wall / ideal,
                            kernel_share=kernel / ideal, wait_share=wall / kernel,
                            gpu_ms=(base["gpu_us"] / 1e3, r["gpu_us"] / 1e3),
                            total_ms=(base["total_ms"], r["total_ms"])))
    return out


def decisions(results: dict) -> list:
    return [d for part in (dense_rows, eager_dense_rows, plans, host_threads, graph_mode, stack_graphs, auto_rows,
                           fused_norm, direct_calls, attention, flash_attention, cuda_norm)
            for d in part(results)]


def read(folder: str) -> dict:
    """{path relative to folder: JSON} of gpu.sh's files at its top and gpu_followup.sh's anywhere
    below it (however its archive was unpacked), none from an earlier run kept beside this one
    (bench/results/h200/run3/)."""
    def below(pattern: str) -> list:
        paths = (os.path.relpath(p, folder) for p in glob.glob(os.path.join(folder, "**", pattern), recursive=True))
        return sorted(p for p in paths if not any(re.fullmatch(r"run\d+", part) for part in p.split(os.sep)))

    names = ["correctness.json", "summary.json", "gpu_scaling.json"] + [
        name for pattern in ("followup_scaling.json", os.path.join("nsweep", "gpu_scaling.json"), "host_profile.json")
        for name in below(pattern)]
    found = {name: data for name in names if (data := _load(os.path.join(folder, name))) is not None}
    for name in below("records.jsonl"):
        try:
            with open(os.path.join(folder, name)) as f:
                found[name] = [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError):
            pass
    return found


def report(folder: str) -> tuple:
    """(rows, markdown) for the results in folder."""
    results = read(folder)
    parts = (correctness, full_depth_vs_hf, copy_bandwidth, mi_of_ideal, batch_one, batch_one_vs_hf, speedup_with_batch)
    rows = [r for part in parts for r in part(results)]
    md = [f"# Issue 10's targets, from `{folder}`", "",
          f"`python bench/targets.py {folder}`; files read: {', '.join(results) or 'none'}.", "",
          "| target | source | numbers | verdict |", "|---|---|---|---|"]
    md += [f"| {r['target']} | {r['source']} | {r['numbers'] or '-'} | {r['verdict']} |" for r in rows]
    decided = decisions(results)
    if decided:
        md += ["", "## Settings these numbers decide", "",
               "Samples/s ratios in one run; each rule is the one written in bench/NOTES.md before the run.", "",
               "| decision | rule | source | numbers | setting |", "|---|---|---|---|---|"]
        md += [f"| {d['decision']} | {d['rule']} | {d['source']} | {d['numbers']} | {d['setting']} |" for d in decided]
    split = ideal_split(results)
    if split:
        md += ["", "## Where the adaptive speed-up goes (one forward, torch.profiler)", "",
               "of ideal = (kernel ratio / FLOP ideal) x (wall ratio / kernel ratio): the first factor is what the "
               "GPU kernels lose on the smaller layers, the second the time the GPU waits.", "",
               "| source | batch (tokens) | arm over | FLOP ideal | GPU kernel ms | kernel ratio (of ideal) | "
               "wall ms | wall ratio (of ideal) | GPU waits (wall / kernel ratio) |",
               "|---|---|---|---|---|---|---|---|---|"]
        md += [f"| {s['source']} | {s['batch']} ({s['tokens']}) | {s['model']} over {s['over']} | {s['ideal']:.2f}x | "
               f"{s['gpu_ms'][0]:.2f} / {s['gpu_ms'][1]:.2f} | {s['kernel']:.2f}x ({s['kernel_share']:.2f}) | "
               f"{s['total_ms'][0]:.2f} / {s['total_ms'][1]:.2f} | {s['wall']:.2f}x ({s['of_ideal']:.2f}) | "
               f"{s['wait_share']:.2f} |" for s in split]
    return rows, "\n".join(md) + "\n"


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("folder", help="a GPU run's results (bench/results/<gpu-slug>)")
    ap.add_argument("--out", default=None, help="also write the Markdown here")
    a = ap.parse_args()
    _, md = report(a.folder)
    print(md)
    if a.out:
        with open(a.out, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
