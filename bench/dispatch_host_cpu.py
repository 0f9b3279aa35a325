"""Host time the dispatcher adds to an eager forward on the GPU's code path, measured on CPU.

    TRITON_INTERPRET=1 python bench/dispatch_host_cpu.py [--rounds 5] [--backends triton cpu]

The encoder on backend "triton" (on a GPU: the Triton attention and fused add + LayerNorm;
here the Triton gather and scatter too) with every Triton kernel replaced by its
plain-PyTorch reference, on a tiny encoder (hidden 32, 2 heads of 16, 12 layers) so that
the arithmetic is small: what is timed is mostly host work, Python and the dispatcher.
Then the same on backend "cpu" (the C++ ops, which the GPU's "cuda" backend shares; under
no_grad their direct path skips the Python autograd kernel of gather and scatter).
Each forward runs with the kernels called directly (ops.DIRECT, the default) and through
the dispatcher (ops.via_dispatcher(): every kernel behind its torch.library custom op),
under inference_mode and under no_grad, interleaved, best of `--rounds` x 200 calls, one thread; the
outputs of both ways are compared. Batches: one 8-token sequence at full depth and with
mixed depths, and 8 documents of a tenth of IMDB length with TREC MI depths. Also printed:
the library's op calls per forward, by op (a dispatch mode counting them), and the saving
per call that the two times imply. Prints one JSON line at the end.
"""
import argparse
import collections
import contextlib
import json
import os
import sys
import timeit

if os.environ.get("TRITON_INTERPRET") != "1":
    sys.exit("run with TRITON_INTERPRET=1 (backend 'triton' on CPU tensors; the kernels themselves are replaced)")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import benchlib  # noqa: E402
from adaptive_encoder import AdaptiveEncoder, kernels, ops, reference  # noqa: E402

# Each Triton kernel's function -> its reference (same arguments and results; cheap at these sizes).
STAND_INS = {
    "triton_varlen_attention": lambda q, k, v, cu_q, cu_k, max_q, max_k, scale=None, bias=None:
        reference.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, bias=bias),
    "triton_gather": reference.gather, "triton_scatter": reference.scatter, "triton_scatter_": reference.scatter_,
    "triton_add_layer_norm": reference.add_layer_norm, "triton_add_layer_norm_into_": reference.add_layer_norm_into_,
    "triton_plan": reference.plan,
}


class CountLibraryOps(TorchDispatchMode):
    """Calls of the library's ops (namespace adaptive_encoder). A dispatch mode turns the direct
    path off (ops.direct), so every call reaches the dispatcher and is counted."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "adaptive_encoder":
            self.calls[func.__name__.split(".")[0]] += 1
        return func(*args, **(kwargs or {}))


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--number", type=int, default=200, help="forwards per timing")
    ap.add_argument("--backends", nargs="+", default=["triton", "cpu"], choices=["triton", "cpu"])
    a = ap.parse_args()
    torch.set_num_threads(1)  # host work is one thread; tiny ops on two only add wake-up jitter
    for name, fn in STAND_INS.items():
        setattr(kernels, name, fn)
    bert = benchlib.bert(12, 32, 2, 64)
    mixed = torch.tensor([[12, 3, 5, 12, 1, 7, 9, 2]])
    one = torch.ones(1, 8, dtype=torch.bool)
    batch8 = benchlib.make_batch("mi", 12, 8, seed=0, scale=0.1)
    batches = {"1 x 8 tokens, full depth": (None, one), "1 x 8 tokens, mixed depths": (mixed, one),
               f"8 documents ({int(batch8[1].sum())} tokens), TREC MI": batch8}
    cases = {(backend, name): b for backend in a.backends for name, b in batches.items()}
    out = {"rounds": a.rounds, "number": a.number, "torch": torch.__version__, "cases": {}}
    for (backend, name), (depths, mask) in cases.items():
        enc = AdaptiveEncoder.from_model(bert, backend=backend).eval()
        case = f"backend {backend}, {name}"
        x = torch.randn(*mask.shape, 32)
        fwd = lambda: enc(x, depths, mask).last_hidden_state  # noqa: E731
        with torch.inference_mode():
            counter = CountLibraryOps()
            with counter:
                fwd()
            direct = fwd()
            with ops.via_dispatcher():
                torch.testing.assert_close(direct, fwd(), rtol=0, atol=0)
        row = {"library op calls per forward": dict(counter.calls)}
        calls = sum(counter.calls.values())
        for grad_mode, ctx in (("inference_mode", torch.inference_mode), ("no_grad", torch.no_grad)):
            best = {"direct": [], "dispatcher": []}
            with ctx():
                for r in range(a.rounds + 1):  # round 0 warms both ways up, untimed
                    for way in best:
                        with ops.via_dispatcher() if way == "dispatcher" else contextlib.nullcontext():
                            t = timeit.timeit(fwd, number=a.number) / a.number
                        if r:
                            best[way].append(t)
            us = {k: min(v) * 1e6 for k, v in best.items()}
            saved = us["dispatcher"] - us["direct"]
            row[grad_mode] = {"direct_us": round(us["direct"], 1), "dispatcher_us": round(us["dispatcher"], 1),
                              "saved_us": round(saved, 1), "saved_fraction": round(saved / us["dispatcher"], 3),
                              "saved_us_per_call": round(saved / max(calls, 1), 2)}
            print(f"{case}, {grad_mode}: {us['direct']:.0f} us direct, {us['dispatcher']:.0f} us through the "
                  f"dispatcher per forward (difference {saved:.0f} us, {saved / us['dispatcher']:.0%}; "
                  f"{calls} library op calls, {saved / max(calls, 1):.1f} us each)")
        print(f"  library op calls per forward: {dict(counter.calls)}")
        out["cases"][case] = row
    print(json.dumps(out))


if __name__ == "__main__":
    main()
