"""Host time of the Triton kernels' Python wrappers, the launch itself left out, measured on CPU.

    python bench/wrapper_host_cpu.py [--rounds 7] [--calls 20000]

What an eager GPU forward pays per Triton call before Triton's own launcher: the attention
wrapper (12 calls per BERT-base forward) and the fused add + LayerNorm wrapper (24 where the
eager path fuses, and in every graph capture), at BERT-base shapes (200 rows, 12 heads of 64,
hidden 768, float32 on CPU). Each kernel's launch is replaced by a no-op and the wrappers take
their GPU branch (block sizes of a GPU, not the interpreter's). One thread, best of `--rounds`
x `--calls`. Prints microseconds per call. To compare two versions, run it in each checkout
(PYTHONPATH), alternating.
"""
import argparse
import os
import timeit

os.environ.setdefault("TRITON_INTERPRET", "1")  # importable without a GPU

import torch  # noqa: E402

from adaptive_encoder.kernels import attention as kernel_attention, norm as kernel_norm  # noqa: E402


class _NoLaunch:
    """kernel[grid](...) that launches nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20000)
    a = ap.parse_args()
    torch.set_num_threads(1)
    kernel_attention._varlen_attn_kernel = _NoLaunch()
    kernel_norm._add_layer_norm_kernel = _NoLaunch()
    try:  # the GPU branch of the wrappers
        from adaptive_encoder.kernels import sizes
        sizes.INTERPRET = False
    except ImportError:  # a checkout from before kernels/sizes.py read the variable on every call
        os.environ["TRITON_INTERPRET"] = "0"
    H, Dh, n = 12, 64, 200
    qkv = torch.randn(n, 3 * H * Dh)  # q, k, v as column slices of one GEMM output, as the encoder has them
    q, k, v = (qkv[:, i * H * Dh:(i + 1) * H * Dh].view(n, H, Dh) for i in range(3))
    cu = torch.tensor([0, n])
    x, r, w, b = torch.randn(n, H * Dh), torch.randn(n, H * Dh), torch.randn(H * Dh), torch.randn(H * Dh)
    fns = {"triton_varlen_attention": lambda: kernel_attention.triton_varlen_attention(q, k, v, cu, cu, n, n, 0.125),
           "triton_add_layer_norm": lambda: kernel_norm.triton_add_layer_norm(x, r, w, b, 1e-12)}
    with torch.inference_mode():
        for name, fn in fns.items():
            fn()
            best = min(timeit.repeat(fn, number=a.calls, repeat=a.rounds)) / a.calls
            print(f"{name}: {best * 1e6:.2f} us per call")


if __name__ == "__main__":
    main()
