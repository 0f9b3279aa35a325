"""bench/targets.py: issue 10's targets read from a GPU run's files, on made-up numbers whose
verdicts are known (met, MISSED, not measured), eager and graph mode on separate lines."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def targets():
    spec = importlib.util.spec_from_file_location("bench_targets", os.path.join(ROOT, "bench", "targets.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
    _write(tmp_path / "summary.json", {
        "batch_values": [1, 8, 15], "n_values": [2, 12],
        "speed_vs_batch": {"fixed": [100, 800, 1500], "hf_sdpa": [105, 700, 1000]},  # HF faster at 1 only
        "speed_vs_n": {"fixed": [300, 100], "mi": [310, 99]},  # MI slower at N = 12
        "speedup_of_ideal_by_model": {"mi": {"1": 0.5, "8": 0.9, "15": 0.86}},
        "kernels": [{"op": "gather", "backend": "cuda", "rows": 262144, "fraction_of_copy_bw": 0.9},
                    {"op": "scatter_", "backend": "triton", "rows": 262144, "fraction_of_copy_bw": 0.7},
                    {"op": "gather", "backend": "cuda", "rows": 4096, "fraction_of_copy_bw": 0.1},  # too small
                    {"op": "gather", "backend": "torch", "rows": 262144, "fraction_of_copy_bw": 0.1}]})  # not ours
    rows = [_row("fixed", 1, 100), _row("hf_sdpa", 1, 95), _row("mi", 1, 90, 1.7, fixed_sps=100),
            _row("fixed", 16, 1000), _row("hf_sdpa", 16, 1200), _row("mi", 16, 1500, 1.7, fixed_sps=1000),
            _row("fixed+graphs", 1, 200), _row("mi+graphs", 1, 220, 1.7, fixed_sps=100),
            _row("fixed+graphs", 16, 1300), _row("mi+graphs", 16, 2000, 1.7, fixed_sps=1000)]
    _write(tmp_path / "gpu_scaling.json", {"rows": rows})
    # the follow-up's archive unpacked one folder deeper, as tar leaves it
    _write(tmp_path / "followup" / "gpu-followup" / "nsweep" / "gpu_scaling.json", {"rows": [
        _row("fixed+graphs", 1, 500, N=2), _row("mi+graphs-dense", 1, 490, 1.3, N=2)]})
    got, md = targets.report(str(tmp_path))
    v = _verdicts(got)
    assert v["correctness", "correctness.json"] == "MISSED"
    assert v["full_depth_vs_hf", "summary.json (eager)"] == "met"  # batch >= 8 only
    assert v["full_depth_vs_hf", "gpu_scaling.json (eager)"] == "MISSED"  # 1000 < 1200 at 16
    assert v["full_depth_vs_hf", "gpu_scaling.json (graph mode)"] == "met"
    assert v["copy_bandwidth", "summary.json kernels (our backends)"] == "MISSED"
    kernel_line = next(r for r in got if r["id"] == "copy_bandwidth")
    assert "4096" not in kernel_line["numbers"] and "torch" not in kernel_line["numbers"]
    assert v["mi_of_ideal", "summary.json (eager)"] == "met"  # 0.5 at batch 1 is not judged
    assert v["mi_of_ideal", "gpu_scaling.json (eager)"] == "met"  # 1.5 / 1.7 = 0.88
    assert v["mi_of_ideal", "gpu_scaling.json (graph mode)"] == "met"  # 2.0 / 1.7 = 1.18
    assert v["batch1_adaptive", "summary.json speed vs N (mi)"] == "MISSED"
    assert v["batch1_adaptive", "gpu_scaling.json (mi)"] == "MISSED"
    assert v["batch1_adaptive", "gpu_scaling.json (mi+graphs)"] == "met"
    nsweep = os.path.join("followup", "gpu-followup", "nsweep", "gpu_scaling.json")
    assert v["batch1_adaptive", f"{nsweep} (mi+graphs-dense)"] == "MISSED"
    assert v["batch1_vs_hf", "summary.json (eager)"] == "met"  # 1.05x HF time
    assert v["batch1_vs_hf", "gpu_scaling.json (eager)"] == "met"  # 0.95x
    assert v["speedup_with_batch", "gpu_scaling.json (mi, N=12)"] == "met"  # 0.9 -> 1.5
    assert "| every GPU correctness check passes | correctness.json | a ok, b FAILED | MISSED |" in md


def test_an_empty_folder_says_not_measured(targets, tmp_path):
    got, _ = targets.report(str(tmp_path))
    assert got and all(r["verdict"] == "not measured" for r in got)
    assert [r["id"] for r in got] == list(targets.TARGETS)  # every target, once, in the order
