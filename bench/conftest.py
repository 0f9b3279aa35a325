import benchlib

# Run order: what a reader of the results needs first, so a run cut short by its time limit
# (a GPU lease) still has the headline numbers. Within a test, the models that every plot
# compares against (full depth, MI, transformers) come first.
_TEST_ORDER = ["test_speed_vs_batch", "test_adaptive_vs_full_depth", "test_gather_scatter_bandwidth",
               "test_training_step_adaptive_vs_full", "test_plan", "test_speed_vs_n"]
if benchlib.device().type == "cuda":
    # On a GPU the kernel benchmarks take seconds and were never reached before the stage's time
    # limit (H200, 2026-11-27: the batch sweep used all 300 s): they go first there.
    _TEST_ORDER.remove("test_gather_scatter_bandwidth")
    _TEST_ORDER.insert(0, "test_gather_scatter_bandwidth")
_MODEL_ORDER = ["fixed", "mi", "hf_sdpa"]


def _rank(item):
    name = item.originalname if hasattr(item, "originalname") else item.name
    test = _TEST_ORDER.index(name) if name in _TEST_ORDER else len(_TEST_ORDER)
    params = getattr(item, "callspec", None)
    model = params.params.get("model") if params else None
    return test, _MODEL_ORDER.index(model) if model in _MODEL_ORDER else len(_MODEL_ORDER)


def pytest_collection_modifyitems(items):
    items.sort(key=_rank)  # stable: parametrization order is kept within a rank

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
