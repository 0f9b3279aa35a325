"""bench/plot.py: pytest-benchmark JSON -> summary.json, PNGs, Markdown."""
import json
import os

import pytest

from conftest import bench_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def plot():
    return bench_module("plot")


def _record(group, model, N, batch, sps, meas=1.0, ideal=1.0):
    return {"group": group, "model": model, "N": N, "batch": batch, "device": "cpu", "samples_per_s": sps,
            "active_token_layer_fraction": 0.5, "measured_speedup": meas, "ideal_speedup": ideal,
            "measured_over_ideal": meas / ideal}


def test_summary_plots_and_markdown(plot, tmp_path):
    recs = [_record("speed_vs_n", m, n, 1, 10.0 * n + (m == "mi")) for m in ("fixed", "mi") for n in (3, 1, 2)]
    recs += [_record("speed_vs_batch", "mi", b, b, 5.0 * b, meas=1.5, ideal=2.0) for b in (2, 1)]
    recs += [_record("speed_vs_batch", "layers_only_mi", 12, b, 6.0 * b, meas=1.5 + 0.5 * b, ideal=2.0) for b in (1, 2)]
    recs += [{"group": "kernels", "op": "gather", "backend": "cpu", "rows": 64, "gbps": 3.0, "copy_gbps": 6.0,
              "fraction_of_copy_bw": 0.5}]
    recs += [{"bench": "savings", "shape": "L8", "measured_speedup": 2.2, "ideal_speedup": 2.7,
              "measured_over_ideal": 2.2 / 2.7, "active_token_layer_fraction": 0.26}]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": [{"name": str(i), "extra_info": r} for i, r in enumerate(recs)]
                                + [{"name": "no-info", "extra_info": {}}]}))
    assert plot.main([str(path), "--out", str(tmp_path / "out"), "--command", "pytest bench"]) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["device"] == "cpu" and s["command"] == "pytest bench"
    assert s["speed_vs_n"] == {"fixed": [10.0, 20.0, 30.0], "mi": [11.0, 21.0, 31.0]}  # sorted by N
    assert s["n_values"] == [1, 2, 3]
    assert s["speed_vs_batch"] == {"layers_only_mi": [6.0, 12.0], "mi": [5.0, 10.0]}
    assert s["speedup_of_ideal"] == {"1": 0.75, "2": 0.75}
    assert s["layers_only_speedup"] == {"1": 2.0, "2": 2.5}
    assert s["measured_over_layers_only"] == {"1": 0.75, "2": 0.6}
    for name in ("speed_vs_n.png", "speed_vs_batch.png", "speedup_vs_batch.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| speed_vs_batch | mi | 2 | 2 | 10.0 |" in md and "| gather | cpu | 64 | 3.00 | 50% |" in md
    assert "2.20x faster than full depth" in md


def test_cut_run_records_survive_and_are_plotted(plot, tmp_path, monkeypatch):
    """A run cut short (a GPU lease's limit) leaves no or a broken pytest-benchmark JSON: each
    benchmark's record went to $BENCH_RECORDS the moment it ended, and plot.py falls back to it."""
    import importlib
    import sys

    monkeypatch.setenv("BENCH_RECORDS", str(tmp_path / "records.jsonl"))
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    sys.modules.pop("benchlib", None)
    benchlib = importlib.import_module("benchlib")
    try:
        recs = [_record("speed_vs_batch", m, 12, b, 4.0 * b) for m in ("fixed", "mi") for b in (1, 2)]
        for r in recs:
            benchlib.record(r)
    finally:
        sys.modules.pop("benchlib", None)  # the bench suite imports its own, without the variable
    assert plot.load_records(str(tmp_path / "records.jsonl")) == recs
    (tmp_path / "benchmark.json").write_text("")  # what the interrupted H200 run left
    assert plot.main([str(tmp_path / "benchmark.json"), "--out", str(tmp_path)]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["speed_vs_batch"] == {"fixed": [4.0, 8.0], "mi": [4.0, 8.0]}
    (tmp_path / "records.jsonl").unlink()
    with pytest.raises(json.JSONDecodeError):  # nothing to fall back to: an error, not an empty plot
        plot.load_records(str(tmp_path / "benchmark.json"))


def test_scaling_plot_merges_runs(tmp_path):
    """bench/plot_scaling.py: gpu.sh's and gpu_followup.sh's scaling JSONs, merged (the first
    file wins a (model, batch) measured twice), drawn and tabulated."""
    mod = bench_module("plot_scaling")

    def row(model, batch, sps, ideal=1.0):
        return dict(batch=batch, model=model, samples_per_s=sps, speedup=sps / (100.0 * batch), ideal=ideal,
                    measured_over_ideal=sps / (100.0 * batch) / ideal, host_over_gpu=1.0 / batch)
    first = {"device": "gpu", "rows": [row("fixed", b, 100.0 * b) for b in (1, 16)] + [row("mi", 16, 2000.0, 1.7)]}
    second = {"device": "gpu", "rows": [row("fixed", 1, 1.0), row("mi+graphs", 2, 300.0, 1.7)]}
    paths = []
    for i, data in enumerate((first, second)):
        paths.append(str(tmp_path / f"s{i}.json"))
        with open(paths[-1], "w") as f:
            json.dump(data, f)
    assert mod.main(paths + ["--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "scaling.png").stat().st_size > 10_000
    md = (tmp_path / "out" / "scaling.md").read_text()
    assert "| 1 | fixed | 100 |" in md and "| 1 | fixed | 1 |" not in md  # the first file's row kept
    assert "| 2 | mi+graphs | 300 |" in md and md.count("\n| ") == 5  # header + 4 rows
