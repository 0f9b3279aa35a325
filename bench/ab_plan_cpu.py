"""The plan op on the host: C++ CPU op against the plain-PyTorch reference, one line.

    python bench/ab_plan_cpu.py

MI depths of IMDB-length documents padded to 512 tokens, N = 12, batch 1 / 8 / 64 / 128;
best of 5 x n calls each. To compare two builds (e.g. before and after a change to
csrc/ops.cpp), build the other one elsewhere and run this script under each, alternating:

    git archive <commit> | tar -x -C /tmp/old && (cd /tmp/old && python setup.py -q build_ext --inplace)
    for i in 1 2 3; do PYTHONPATH=/tmp/old python bench/ab_plan_cpu.py; python bench/ab_plan_cpu.py; done
"""
import os
import sys
import timeit

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from adaptive_encoder import ops  # noqa: E402


def main():
    out = []
    T, N = 512, 12
    for B in (1, 8, 64, 128):
        depths, mask = benchlib.make_batch("mi", N, B, seed=B, scale=1.0)
        depths = torch.nn.functional.pad(depths, (0, T - depths.shape[1]))
        mask = torch.nn.functional.pad(mask, (0, T - mask.shape[1]))
        for backend in ("cpu", "torch"):
            n = 200 if B < 64 else 20
            t = min(timeit.repeat(lambda: ops.plan(depths, mask, N, backend=backend, check=False), number=n,
                                  repeat=5)) / n
            out.append(f"B{B} {backend} {t * 1e6:.0f} us")
    print(f"{ops.__file__}: " + ", ".join(out))


if __name__ == "__main__":
    main()
