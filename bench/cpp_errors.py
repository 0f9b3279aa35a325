"""Do the C++ ops' own checks (TORCH_CHECK) reach Python as RuntimeError on this machine?

    python -X faulthandler bench/cpp_errors.py [--inline]

A diagnostic for the H200 runs of 2026-11-27, where every failing TORCH_CHECK of this
extension died with SIGSEGV (torch 2.11+cu130, gcc 13.3 there) while the same source raises
RuntimeError on the CPU machine (torch 2.11, 2.13 and 2.14; Python 3.11 and 3.12; CPU and CUDA
builds with gcc 12). Each case prints before it calls, so the last line printed names the call
that crashed:
1. torch's own C++ check: if it crashes too, the machine's torch is at fault, not this extension;
2. ours straight through the dispatcher (torch.ops), then through the Python wrapper (ops.gather);
3. with --inline, a five-line extension built here by torch.utils.cpp_extension.load_inline
   (g++ only, no CUDA, none of our code; ~40 s to build): if it crashes, the compiler / torch
   pair is at fault; if it raises, something in our build is.
Suspect: a c10::Error records a backtrace when it is made (pytorch/pytorch#117645: the unwinder
can crash on a library with bad unwind tables).
"""
import sys

import torch

import adaptive_encoder._C  # noqa: F401  (registers the ops)
from adaptive_encoder import ops

_INLINE = """
#include <torch/extension.h>
torch::Tensor must_be_2d(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 2, "must_be_2d: got ", x.dim(), " dims");
  return x;
}
"""


def _inline_check():
    from torch.utils.cpp_extension import load_inline

    mod = load_inline("cpp_errors_inline", _INLINE, functions=["must_be_2d"], verbose=False)
    mod.must_be_2d(torch.ones(3))


x = torch.randn(4, 3)
ones = torch.ones(2, 3, dtype=torch.long)
CASES = [
    ("torch's own TORCH_CHECK (mm of 2x3 and 4x5)", lambda: torch.ones(2, 3) @ torch.ones(4, 5)),
    ("torch.ops plan, num_layers 0", lambda: torch.ops.adaptive_encoder.plan(ones, ones.bool(), 0)),
    ("torch.ops gather, row 4 of 4", lambda: torch.ops.adaptive_encoder.gather(x, torch.tensor([0, 4]))),
    ("torch.ops scatter, row -1", lambda: torch.ops.adaptive_encoder.scatter(x, torch.randn(1, 3), torch.tensor([-1]))),
    ("ops.gather(check=False), row 4", lambda: ops.gather(x, torch.tensor([0, 4]), backend="cpu", check=False)),
]
if "--inline" in sys.argv[1:]:
    CASES.append(("TORCH_CHECK in a load_inline extension (g++ here, none of our code)", _inline_check))
for name, fn in CASES:
    print("calling:", name, flush=True)
    try:
        fn()
        print("  no error (wrong: the check must refuse)", flush=True)
    except RuntimeError as e:
        print("  RuntimeError:", str(e).splitlines()[0][:100], flush=True)
print("all cases returned")
