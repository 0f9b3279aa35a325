import benchlib


def pytest_terminal_summary(terminalreporter):
    if not benchlib.RESULTS:
        return
    tr = terminalreporter
    tr.section("adaptive_encoder: side-by-side ratios (one run, interleaved timing)")
    for r in benchlib.RESULTS:
        tr.write_line("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
