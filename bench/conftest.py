import benchlib

COLUMNS = ["group", "model", "op", "backend", "N", "batch", "rows", "samples_per_s", "gbps", "fraction_of_copy_bw",
           "active_token_layer_fraction", "measured_speedup", "ideal_speedup", "measured_over_ideal"]


def pytest_terminal_summary(terminalreporter):
    if not benchlib.RESULTS:
        return
    tr = terminalreporter
    tr.section("adaptive_encoder: measured in this run (speed-ups side by side, interleaved timing)")
    for r in benchlib.RESULTS:
        cells = [f"{k}={r[k]:.4g}" if isinstance(r[k], float) else f"{k}={r[k]}" for k in COLUMNS if k in r]
        tr.write_line("  " + "  ".join(cells))
