"""bench/targets.py: issue 10's targets read from a GPU run's files, on made-up numbers whose
verdicts are known (met, MISSED, not measured), eager and graph mode on separate lines."""
import json
import os

import pytest

from conftest import bench_module


@pytest.fixture(scope="module")
def targets():
    return bench_module("targets")


def _row(model, batch, sps, ideal=1.0, N=12, fixed_sps=None):
    speedup = sps / fixed_sps if fixed_sps else 1.0
    return dict(model=model, batch=batch, N=N, samples_per_s=sps, seconds=100.0 / sps, speedup=speedup, ideal=ideal,
                measured_over_ideal=speedup / ideal)


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


def _verdicts(rows) -> dict:
    return {(r["id"], r["source"]): r["verdict"] for r in rows}


def test_verdicts_on_known_numbers(targets, tmp_path):
    _write(tmp_path / "correctness.json", {"checks": {"a": {"ok": True}, "b": {"ok": False}}})
    _write(tmp_path / "summary.json", {"kernels": [
        {"op": "gather", "backend": "cuda", "rows": 262144, "fraction_of_copy_bw": 0.9},
        {"op": "scatter_", "backend": "triton", "rows": 262144, "fraction_of_copy_bw": 0.7},
        {"op": "gather", "backend": "cuda", "rows": 4096, "fraction_of_copy_bw": 0.1},  # too few rows
        {"op": "gather", "backend": "torch", "rows": 262144, "fraction_of_copy_bw": 0.1}]})  # not ours
    # the suite's records: paired speed-ups over fixed depth (hf_sdpa's: our time over HF's)
    records = [dict(group="speed_vs_batch", model="hf_sdpa", batch=b, N=12, measured_speedup=r)
               for b, r in ((1, 1.05), (8, 0.9), (15, 0.7))]
    records += [dict(group="speed_vs_batch", model="mi", batch=b, N=12, measured_speedup=s, measured_over_ideal=s / 1.7)
                for b, s in ((1, 0.85), (8, 1.53), (15, 1.46))]  # of ideal: 0.5, 0.9, 0.86
    records += [dict(group="speed_vs_n", model="mi", batch=1, N=n, measured_speedup=s) for n, s in ((2, 1.03), (12, 0.99))]
    kernel = dict(group="kernels", op="gather", backend="cuda", rows=262144, fraction_of_copy_bw=0.95)
    records += [dict(kernel, hidden=768, dtype="torch.bfloat16"), dict(kernel, hidden=256, dtype="torch.bfloat16",
                                                                      fraction_of_copy_bw=0.2)]  # another shape
    with open(tmp_path / "records.jsonl", "w") as f:
        f.write("\n".join(json.dumps(r) for r in records) + "\n")
    rows = [_row("fixed", 1, 100), _row("hf_sdpa", 1, 95), _row("mi", 1, 90, 1.7, fixed_sps=100),
            _row("fixed", 16, 1000), _row("hf_sdpa", 16, 1200), _row("mi", 16, 1500, 1.7, fixed_sps=1000),
            _row("fixed+graphs", 1, 200), _row("mi+graphs", 1, 220, 1.7, fixed_sps=100),
            _row("fixed+graphs", 16, 1300), _row("mi+graphs", 16, 2000, 1.7, fixed_sps=1000)]
    _write(tmp_path / "gpu_scaling.json", {"rows": rows})
    # the follow-up's archive unpacked one folder deeper, as tar leaves it
    _write(tmp_path / "followup" / "gpu-followup" / "nsweep" / "gpu_scaling.json", {"rows": [
        _row("fixed+graphs", 1, 500, N=2), _row("mi+graphs-dense", 1, 490, 1.3, N=2)]})
    # the follow-up's kernel records, judged on their own line; an earlier run's (run3/) not read
    for folder, fraction in (("followup", 0.5), ("run3", 0.99)):
        os.makedirs(tmp_path / folder, exist_ok=True)
        with open(tmp_path / folder / "records.jsonl", "w") as f:
            f.write(json.dumps(dict(kernel, hidden=768, dtype="torch.bfloat16", fraction_of_copy_bw=fraction)) + "\n")
    got, md = targets.report(str(tmp_path))
    v = _verdicts(got)
    assert v["copy_bandwidth", os.path.join("followup", "records.jsonl") + " kernels, 768 bf16 (our backends)"] == "MISSED"
    assert not any("run3" in r["source"] for r in got)
    assert v["correctness", "correctness.json"] == "MISSED"
    assert v["full_depth_vs_hf", "records.jsonl batch sweep (eager)"] == "met"  # batch >= 8 only
    assert v["full_depth_vs_hf", "gpu_scaling.json (eager)"] == "MISSED"  # 1000 < 1200 at 16
    assert v["full_depth_vs_hf", "gpu_scaling.json (graph mode)"] == "met"
    # the records' kernels of 768 bf16 rows (one, at 95 %), not summary.json's shapeless list
    assert v["copy_bandwidth", "records.jsonl kernels, 768 bf16 (our backends)"] == "met"
    for path in ("records.jsonl", os.path.join("followup", "records.jsonl"), os.path.join("run3", "records.jsonl")):
        os.remove(tmp_path / path)
    kernel_line = next(r for r in targets.report(str(tmp_path))[0] if r["id"] == "copy_bandwidth")
    assert kernel_line["verdict"] == "MISSED" and kernel_line["source"] == "summary.json kernels (our backends)"
    assert "4096" not in kernel_line["numbers"] and "torch" not in kernel_line["numbers"]
    assert v["mi_of_ideal", "records.jsonl batch sweep (eager)"] == "met"  # 0.5 at batch 1 is not judged
    assert v["mi_of_ideal", "gpu_scaling.json (eager, over fixed)"] == "met"  # 1.5 / 1.7 = 0.88
    # graph mode over its own full depth: 2000 / 1300 / 1.7 = 0.90, not 2000 / 1000 / 1.7 (eager fixed)
    assert v["mi_of_ideal", "gpu_scaling.json (graph mode, over fixed+graphs)"] == "met"
    assert "batch 16 0.90 of ideal" in next(r["numbers"] for r in got if r["source"] == "gpu_scaling.json (graph mode, over fixed+graphs)")
    assert v["batch1_adaptive", "records.jsonl N sweep (mi)"] == "MISSED"  # 0.99 at N = 12
    assert v["batch1_adaptive", "records.jsonl batch sweep (mi)"] == "MISSED"  # 0.85
    assert v["batch1_adaptive", "gpu_scaling.json (mi)"] == "MISSED"
    assert v["batch1_adaptive", "gpu_scaling.json (mi+graphs)"] == "met"
    nsweep = os.path.join("followup", "gpu-followup", "nsweep", "gpu_scaling.json")
    assert v["batch1_adaptive", f"{nsweep} (mi+graphs-dense)"] == "MISSED"
    assert v["batch1_vs_hf", "records.jsonl batch sweep (eager)"] == "met"  # 1.05x HF time
    assert v["batch1_vs_hf", "gpu_scaling.json (eager)"] == "met"  # 0.95x
    assert v["speedup_with_batch", "gpu_scaling.json (mi over fixed, N=12)"] == "met"  # 0.9 -> 1.5
    # 220 / 200 = 1.10 -> 2000 / 1300 = 1.54: met (over eager fixed it would read 2.20 -> 2.00, shrinking)
    assert v["speedup_with_batch", "gpu_scaling.json (mi+graphs over fixed+graphs, N=12)"] == "met"
    assert "| every GPU correctness check passes | correctness.json | a ok, b FAILED | MISSED |" in md


def test_a_cut_correctness_stage_is_not_met(targets, tmp_path):
    """gpu_check.py rewrites correctness.json after every check; a stage cut by its time limit
    leaves complete=False, and the checks it did not reach count as missed."""
    _write(tmp_path / "correctness.json", {"checks": {"a": {"ok": True}}, "complete": False})
    assert _verdicts(targets.report(str(tmp_path))[0])["correctness", "correctness.json"] == "MISSED"
    _write(tmp_path / "correctness.json", {"checks": {"a": {"ok": True}}, "complete": True})
    assert _verdicts(targets.report(str(tmp_path))[0])["correctness", "correctness.json"] == "met"


def test_an_empty_folder_says_not_measured(targets, tmp_path):
    got, _ = targets.report(str(tmp_path))
    assert got and all(r["verdict"] == "not measured" for r in got)
    assert [r["id"] for r in got] == list(targets.TARGETS)  # every target, once, in the order


def test_settings_decided_by_known_numbers(targets, tmp_path):
    """Each decision's rule on made-up numbers: dense layers up to the last batch of an unbroken
    run of wins (its K^), the host plan where it does not lose, graph mode where it wins."""
    def row(model, batch, sps, tokens=None):
        r = _row(model, batch, sps)
        if tokens is not None:
            r["tokens_per_forward"] = tokens
        return r

    rows = [row("mi+graphs", 1, 100), row("mi+graphs-dense", 1, 110, 180),   # wins
            row("mi+graphs", 2, 100), row("mi+graphs-dense", 2, 103, 365),   # wins: K^ = bucket(366) = 384
            row("mi+graphs", 4, 100), row("mi+graphs-dense", 4, 101, 700),   # a tie ends the run
            row("mi+graphs", 8, 100), row("mi+graphs-dense", 8, 120, 1400),  # a later win does not count
            row("mi", 1, 100), row("mi+host", 1, 105), row("mi", 16, 100), row("mi+host", 16, 99.5),  # -0.5 %: kept
            row("mi+graphs-devplan", 1, 100), row("mi+graphs-dev", 1, 110),
            row("mi+graphs-devplan", 64, 100), row("mi+graphs-dev", 64, 90),  # loses at 64
            row("fixed", 1, 100), row("fixed+graphs", 1, 150), row("fixed", 64, 100), row("fixed+graphs", 64, 95),
            row("mi+unfused", 1, 80), row("mi+unfused", 16, 103),  # the fused arm loses at 16
            row("fixed+dispatched", 1, 90), row("fixed+dispatched", 64, 101.5),  # within 2 %: kept
            row("mi+dense", 1, 104, 180), row("mi+dense", 16, 102, 2900), row("mi+dense", 64, 90, 11000),  # eager
            row("fixed+graphs-layers", 1, 140), row("fixed+graphs-layers", 64, 100),  # one graph per layer wins at 64
            row("fixed+flash", 1, 110), row("fixed+flash", 64, 100.5),  # wins at 1, ties at 64
            row("fixed+cudanorm", 1, 108), row("fixed+cudanorm", 64, 97),  # wins at 1, loses at 64
            row("mi+cudanorm", 1, 103), row("mi+cudanorm", 16, 101),  # wins at 1, ties at 16
            row("mi+host1", 1, 104), row("mi+host1", 16, 110),  # over mi+host (105, 99.5): a tie, then a win
            row("mi+graphs-host1", 1, 100),  # over mi+graphs (100): a tie
            row("mi", 64, 100)]
    _write(tmp_path / "followup" / "followup_scaling.json", {"rows": rows})
    decided = {d["decision"]: d for d in targets.decisions(targets.read(str(tmp_path)))}
    assert decided["dense layers"]["setting"] == "DENSE_ROWS = 384"
    assert decided["eager dense layers"]["setting"] == "encoder.DENSE_ROWS = 2900"  # K, not bucketed
    assert "batch 1 1.10x" in decided["dense layers"]["numbers"]
    assert decided["eager: plan on the host"]["setting"].endswith("at every batch measured")
    assert decided["graph mode: plan on the host"]["setting"] == "PLAN_ON_HOST: below batch 64, the device plan from there"
    (graphed,) = [d for d in targets.decisions(targets.read(str(tmp_path))) if d["rule"] == "fixed+graphs over fixed"]
    assert graphed["setting"] == "pays at batch 1"
    assert decided["one graph per stack"]["setting"] == "STACK = False (lost at batch 64)"  # 150 / 140, 95 / 100
    assert decided["FlashAttention-2 in the encoder"]["setting"] == "FLASH = True (wins at batch 1)"
    cuda_norm = {d["rule"]: d["setting"] for d in targets.decisions(targets.read(str(tmp_path)))
                 if d["decision"] == "C++ CUDA add + LayerNorm"}
    assert cuda_norm == {"fixed+cudanorm over fixed": "keep norm.CUDA_CPP off (loses at batch 64)",
                         "mi+cudanorm over mi": "norm.CUDA_CPP = True (wins at batch 1)"}
    threads = {d["rule"]: d for d in targets.decisions(targets.read(str(tmp_path)))
               if d["decision"] == "host plan on one CPU thread"}
    assert threads["mi+host1 over mi+host"]["numbers"] == "batch 1 0.99x, batch 16 1.11x"
    assert threads["mi+host1 over mi+host"]["setting"] == \
        "ONE_THREAD (not a setting yet: a sequential host plan) = True (wins at batch 16)"
    assert threads["mi+graphs-host1 over mi+graphs"]["setting"].endswith("off (no win)")
    assert decided["fused add + LayerNorm"]["setting"] == "norm.FUSED = False at batch 16"
    assert decided["kernels called directly"]["setting"] == "ops.DIRECT = True (as is)"
    assert "batch 1 1.11x" in decided["kernels called directly"]["numbers"]
    md = targets.report(str(tmp_path))[1]
    assert "## Settings these numbers decide" in md and "DENSE_ROWS = 384" in md

    # dense never ahead at the smallest batch: 0; rows without K (older runs) say so
    _write(tmp_path / "followup" / "followup_scaling.json", {"rows": [
        row("mi+graphs", 1, 100), row("mi+graphs-dense", 1, 99, 180),
        row("mi+graphs", 1, 100, None) | {"N": 4}, row("mi+graphs-dense", 1, 110) | {"N": 4}]})
    settings = {d["source"]: d["setting"] for d in targets.decisions(targets.read(str(tmp_path)))}
    path = os.path.join("followup", "followup_scaling.json")
    assert settings[f"{path} (N=12)"] == "DENSE_ROWS = 0"
    assert settings[f"{path} (N=4)"].startswith("K not recorded")
    assert "Settings" not in targets.report(str(tmp_path / "nothing"))[1]

    # the attention kernel: FlashAttention-2 against ours on the same inputs
    attn = [dict(group="attention_kernel", batch=b, queries=q, backend=k, seconds=s)
            for b, q, k, s in ((8, "mi", "triton", 1.0), (8, "mi", "aten_flash", 1.01),
                               (64, "mi", "triton", 3.0), (64, "mi", "aten_flash", 2.0))]
    attn += [dict(group="norm_kernel", op=form, rows=rows, backend=k, seconds=s)  # and the C++ CUDA add + LayerNorm
             for form, rows, k, s in (("at_rows", 4096, "triton", 2.0), ("at_rows", 4096, "cuda", 1.0),
                                      ("at_rows", 65536, "triton", 1.0), ("at_rows", 65536, "cuda", 1.1))]
    with open(tmp_path / "records.jsonl", "w") as f:
        f.write("\n".join(json.dumps(r) for r in attn) + "\n")
    (d,) = [d for d in targets.decisions(targets.read(str(tmp_path))) if d["decision"] == "attention kernel"]
    assert d["setting"].startswith("aten_flash ahead at batch 64 (mi queries):")
    assert "batch 8 (mi queries) 0.99x" in d["numbers"] and "batch 64 (mi queries) 1.50x" in d["numbers"]
    (d,) = [d for d in targets.decisions(targets.read(str(tmp_path))) if d["rule"].startswith("cuda over triton")]
    assert d["numbers"] == "at_rows 4096 rows 2.00x, at_rows 65536 rows 0.91x"
    assert d["setting"] == "slower than Triton at at_rows 65536 rows"


def test_auto_judged_against_the_better_mode(targets, tmp_path):
    """cuda_graphs="auto" arms: the targets read them over fixed+auto, and the AUTO_ROWS decision
    compares them with the better of eager and graph mode at each batch, saying which way to move."""
    def row(model, batch, sps, tokens, active=1.0):
        return dict(_row(model, batch, sps, ideal=1.7 if model.startswith("mi") else 1.0), tokens_per_forward=tokens,
                    active=active)

    rows = []
    for batch, tokens, (e, g, a) in ((1, 200, (100, 500, 495)),      # auto = graph mode: kept
                                     (16, 3000, (1000, 2000, 1000)),  # auto ran eager where graphs won by 2x
                                     (128, 28000, (900, 700, 700))):  # auto ran graphs where eager won
        rows += [row("fixed", batch, e, tokens), row("fixed+graphs", batch, g, tokens), row("fixed+auto", batch, a, tokens)]
    rows += [row("hf_sdpa", 16, 1500, 3000), row("mi+auto", 16, 1700, 3000, 0.5), row("mi+auto", 1, 480, 200, 0.5)]
    _write(tmp_path / "gpu_scaling.json", {"rows": rows})
    got, _ = targets.report(str(tmp_path))
    v = _verdicts(got)
    assert v["full_depth_vs_hf", "gpu_scaling.json (auto)"] == "MISSED"  # 1000 < 1500 samples/s at 16
    assert v["batch1_adaptive", "gpu_scaling.json (mi+auto)"] == "MISSED"  # 480 < 495
    assert v["mi_of_ideal", "gpu_scaling.json (auto, over fixed+auto)"] == "met"  # 1700 / 1000 / 1.7 = 1.0
    (fixed,) = [d for d in targets.decisions(targets.read(str(tmp_path))) if d["rule"].startswith("fixed+auto")]
    assert fixed["numbers"] == "batch 1 0.99x, batch 16 0.50x, batch 128 0.78x"
    assert fixed["setting"] == "raise AUTO_ROWS above 3000 (graph mode won there); lower AUTO_ROWS below 28000 (eager won there)"


def test_ideal_split_from_a_kernel_profile(targets, tmp_path):
    """host_profile.json (gpu_host_profile.py --kernels): an adaptive arm's share of the FLOP ideal
    split into its GPU kernels' share and the time the GPU waits, each arm over its own mode's
    full depth; arms without kernel times (CPU) are left out."""
    def rec(model, flops, gpu_us, total_ms, batch=16):
        return dict(batch=batch, model=model, N=12, tokens=4000, host_ms=1.0, total_ms=total_ms, flops=flops,
                    full_flops=200.0, launches=100.0, syncs=1.0, gpu_us=gpu_us, kernels=150.0)

    _write(tmp_path / "followup" / "kernels" / "host_profile.json", {"device": "d", "records": [
        rec("fixed", 200.0, 2000.0, 2.5), rec("mi", 100.0, 1250.0, 2.0),                    # ideal 2x
        rec("fixed+graphs", 200.0, 2000.0, 2.0), rec("mi+graphs", 100.0, 1000.0, 1.0),
        rec("hf_sdpa", 200.0, 1500.0, 2.0),                                                   # not adaptive
        rec("mi", 100.0, None, 1.0, batch=1), rec("fixed", 200.0, None, 2.0, batch=1)]})  # no kernel times
    _write(tmp_path / "run3" / "host_profile.json", {"device": "d", "records": [  # an earlier run: not read
        rec("fixed", 200.0, 2000.0, 2.5, batch=64), rec("mi", 100.0, 1000.0, 1.0, batch=64)]})
    split = {(s["model"], s["batch"]): s for s in targets.ideal_split(targets.read(str(tmp_path)))}
    assert set(split) == {("mi", 16), ("mi+graphs", 16)}
    eager, graphs = split["mi", 16], split["mi+graphs", 16]
    assert eager["over"] == "fixed" and graphs["over"] == "fixed+graphs"
    assert eager["ideal"] == pytest.approx(2.0) and eager["kernel"] == pytest.approx(1.6)
    assert eager["kernel_share"] == pytest.approx(0.8) and eager["wall"] == pytest.approx(1.25)
    assert eager["wait_share"] == pytest.approx(1.25 / 1.6) and eager["of_ideal"] == pytest.approx(0.625)
    assert graphs["kernel_share"] == pytest.approx(1.0) and graphs["of_ideal"] == pytest.approx(1.0)
    _, md = targets.report(str(tmp_path))
    row = "| followup/kernels/host_profile.json | 16 (4000) | mi over fixed | 2.00x | 2.00 / 1.25 | 1.60x (0.80) |"
    assert row in md
