"""Do the C++ ops' own checks (TORCH_CHECK) reach Python as RuntimeError on this machine?

    python -X faulthandler bench/cpp_errors.py

A diagnostic for the H200 run of 2026-11-27, where `tests/test_ops.py::
test_cpu_kernel_checks_bounds_even_unchecked` died with SIGSEGV (torch 2.11) while the same
extension built against torch 2.14 on the CPU machine raises. Each case prints before it calls,
so the last line printed names the call that crashed: torch's own check, ours straight
through the dispatcher (torch.ops), or through the Python autograd wrapper (ops.gather).
Reproduced nowhere else: torch 2.11+cu130 with Python 3.11 and 3.12, CPU and CUDA builds
(gcc 12 here, gcc 13.3 there) all raise. A c10::Error records a backtrace when it is made
(pytorch/pytorch#117645: the unwinder can crash on a library with bad unwind tables).
"""
import torch

import adaptive_encoder._C  # noqa: F401  (registers the ops)
from adaptive_encoder import ops

x = torch.randn(4, 3)
ones = torch.ones(2, 3, dtype=torch.long)
CASES = [
    # torch's own C++ check first: if this one crashes too, the machine's torch is at fault, not this extension
    ("torch's own TORCH_CHECK (mm of 2x3 and 4x5)", lambda: torch.ones(2, 3) @ torch.ones(4, 5)),
    ("torch.ops plan, num_layers 0", lambda: torch.ops.adaptive_encoder.plan(ones, ones.bool(), 0)),
    ("torch.ops gather, row 4 of 4", lambda: torch.ops.adaptive_encoder.gather(x, torch.tensor([0, 4]))),
    ("torch.ops scatter, row -1", lambda: torch.ops.adaptive_encoder.scatter(x, torch.randn(1, 3), torch.tensor([-1]))),
    ("ops.gather(check=False), row 4", lambda: ops.gather(x, torch.tensor([0, 4]), backend="cpu", check=False)),
]
for name, fn in CASES:
    print("calling:", name, flush=True)
    try:
        fn()
        print("  no error (wrong: the kernel must refuse)", flush=True)
    except RuntimeError as e:
        print("  RuntimeError:", str(e).splitlines()[0][:100], flush=True)
print("all cases returned")
