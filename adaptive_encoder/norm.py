"""Residual add + LayerNorm as one op: the closing step of every post-LayerNorm block.

    add_layer_norm(x (A,D), residual (A,D), weight (D,), bias (D,), eps) -> (A,D)
        LayerNorm(x + residual) * weight + bias, in x's dtype
    add_layer_norm_into_(base (R,D) contiguous, x, residual, weight, bias, eps, rows (A,) int64,
                         at_rows=False) -> base
        base[rows[i]] = that row, in place (rows unique, in [0, R)); at_rows: x and residual are
        (R,D) like base and read at rows[i] too (a dense layer writing back its active rows)

Why: a BERT layer closes twice with `LayerNorm(dropout(linear(h)) + residual)`. Unfused that
is an add and a LayerNorm, two launches and five passes over the rows; fused one launch and
three. The `_into_` form writes a compact layer's output rows straight into the state, so
the scatter after it (a third launch and pass) goes too. In a launch-bound forward (small
batches on a GPU, bench/NOTES.md) each layer issues 2-3 ops fewer of its 10-13.

Four implementations, one definition (adaptive_encoder.reference): the reference, the C++
CPU op (csrc/norm.cpp), the C++ CUDA op (csrc/norm_cuda.cu) and the Triton kernel
(kernels/norm.py). On CUDA tensors (backend "cuda" or "triton") the Triton kernel runs, or
with CUDA_CPP on and backend "cuda" the C++ one (same arithmetic, launched from C++: a
launch-bound forward pays ~5-10 us of host time per call instead of Triton's Python launch).
On CPU tensors torch's add and LayerNorm were faster than the C++ op (_CPU_TIMES), so they
stay the default there and what the encoder runs; the C++ op runs when asked for by name
(backend="cpu"). The kernels are forward only: when a gradient is needed the reference runs.
dtypes float32, bfloat16, float16 (float64 on the CPU op and the reference); the Triton
kernel takes D up to 16384 (one row per block), the CUDA op up to 2048 (a row in one warp's
registers; wider rows take the Triton kernel). The sum is rounded to the input dtype before
the statistics, as `x + residual` stores it.

FUSED (True): whether the encoder uses these ops; `unfused()` turns them off inside a block
(benchmarks timing both in one run). EAGER_ROWS: the eager path uses the Triton kernel only
from that many real tokens (`eager_rows()`); graph mode always. CUDA_CPP (False): the C++
CUDA kernel instead of the Triton one under backend "cuda" (`cuda_cpp()`), at every size.
Not for threads that want different settings at once.
"""
import os

import torch

from . import ops, reference, settings

FUSED = True

# The eager path fuses only forwards of at least EAGER_ROWS real tokens. Below that a GPU forward
# is launch-bound, and one Triton launch (Python) costs the host more than torch's add and
# LayerNorm (two C++ launches): H200 run 5's follow-up (bench/results/h200/followup), eager
# fixed / MI with the fused kernel against without, batch 2-15 (0.7k-2.8k tokens): 0.82-0.95x,
# 0.6-0.65 ms more host time per forward (24 calls). The kernel itself moves 3 row passes for 5:
# 2.56x the pair's speed at 65k rows. 10240 is where run 5's eager forwards stop being
# launch-bound (host/GPU 1.00 at 3.6k tokens, 0.89 at 14k) and where cuda_graphs="auto" hands
# smaller forwards to graph mode, which always fuses (a graph replays no launch).
EAGER_ROWS = 10240

# Why the C++ op is not the default on CPU tensors (nor what the encoder runs there): float32,
# best of 7 x 3 x 10 calls, torch's add in place (as the encoder adds into the GEMM output) and
# LayerNorm, on the 2-core machine (2026-11-27; a throwaway script timing
# torch.ops.adaptive_encoder.add_layer_norm against them): rows x hidden -> (C++, torch) us,
# one thread (two runs each) and two threads (the extension built with OpenMP).
_CPU_TIMES = {"1 thread": {(4096, 256): ((1220, 1244), (772, 729)), (512, 768): ((403, 436), (266, 269)),
                           (16384, 768): ((35192, 33698), (33251, 31954))},
              "2 threads": {(4096, 256): (568, 367), (512, 768): (183, 100), (16384, 768): (19233, 17390)}}
# The C++ CUDA kernel (csrc/norm_cuda.cu) under backend "cuda", in place of the Triton kernel and
# whatever the row count (its launch is C++, so the eager path fuses small forwards too). Off
# until a GPU run measures it against the Triton kernel and torch's pair (gpu_scaling.py
# --cudanorm; targets.py's settings table decides).
CUDA_CPP = False
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TRITON_MAX_D = 16384
_CUDA_MAX_D = 2048  # csrc/norm_cuda.cu's kMaxD
_HAS_CPP = ops.cpp_available("cpu") and hasattr(torch.ops.adaptive_encoder, "add_layer_norm")
# The CUDA op exists when the extension was built with CUDA from these sources.
_HAS_CUDA_CPP = _HAS_CPP and torch._C._dispatch_has_kernel_for_dispatch_key("adaptive_encoder::add_layer_norm", "CUDA")


def unfused():
    """Inside: the encoder closes its blocks with an add and torch's LayerNorm (FUSED off)."""
    return settings.switched(globals(), "FUSED", False)


def eager_rows(rows: int):
    """Inside: eager forwards of at least `rows` real tokens use the fused kernel (EAGER_ROWS)."""
    return settings.switched(globals(), "EAGER_ROWS", rows)


def cuda_cpp():
    """Inside: backend "cuda" computes add_layer_norm with the C++ CUDA kernel (CUDA_CPP)."""
    return settings.switched(globals(), "CUDA_CPP", True)


def _out_like(x, *args):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _into_fake(base, *args):
    return None


if _HAS_CPP:
    torch.library.register_fake("adaptive_encoder::add_layer_norm")(_out_like)
    torch.library.register_fake("adaptive_encoder::add_layer_norm_into_")(_into_fake)


def _triton_kernel(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float) -> torch.Tensor:
    from .kernels import triton_add_layer_norm  # imported late: TRITON_INTERPRET is read at import

    return triton_add_layer_norm(x, residual, weight, bias, eps)


def _triton_kernel_into_(base: torch.Tensor, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor, eps: float, rows: torch.Tensor, at_rows: bool = False) -> None:
    from .kernels import triton_add_layer_norm_into_

    triton_add_layer_norm_into_(base, x, residual, weight, bias, eps, rows, at_rows)


# The custom ops, for torch.compile and anything else that looks at ops; eager calls reach the
# kernels directly (ops.call: ~10-40 us less host time a call).
_triton_add_layer_norm = torch.library.custom_op("adaptive_encoder::triton_add_layer_norm", _triton_kernel,
                                                 mutates_args=())
_triton_add_layer_norm_into_ = torch.library.custom_op("adaptive_encoder::triton_add_layer_norm_into_",
                                                       _triton_kernel_into_, mutates_args=("base",))
_triton_add_layer_norm.register_fake(_out_like)
_triton_add_layer_norm_into_.register_fake(_into_fake)


def kernel_backend(x: torch.Tensor, backend: str | None = None) -> str | None:
    """The kernel that computes add_layer_norm for x (A,D) under `backend`: "cpu" (the C++ op,
    only when asked for by name or $ADAPTIVE_ENCODER_BACKEND: on CPU tensors torch's add and
    LayerNorm are the faster default, see _CPU_TIMES), "cuda" (the C++ CUDA op: backend "cuda"
    with CUDA_CPP on), "triton", or None (the reference)."""
    name = ops.resolve_backend(x.device, backend)
    asked = backend is not None or os.environ.get(ops.ENV_VAR) is not None
    if name == "cpu" and asked and _HAS_CPP and x.device.type == "cpu" \
            and (x.dtype in _KERNEL_DTYPES or x.dtype == torch.float64):
        return "cpu"
    if x.dtype not in _KERNEL_DTYPES:
        return None
    if name == "cuda" and CUDA_CPP and _HAS_CUDA_CPP and x.is_cuda and x.shape[-1] <= _CUDA_MAX_D:
        return "cuda"
    if (name == "triton" or (name == "cuda" and x.is_cuda)) and ops.triton_available(x.device.type) \
            and x.shape[-1] <= _TRITON_MAX_D:
        return "triton"
    return None


def unchecked(kernel: str, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              eps: float, into: tuple | None = None) -> torch.Tensor:
    """The kernel `kernel` (kernel_backend's answer, not None) without the public functions' checks
    (~8 us of Python a call, two calls a layer): what they call after checking, and what the
    encoder calls, which checked dtypes and shapes (encoder._fuse_norms, _fusable) and whose rows
    come from a plan. into: None, or (base, rows, at_rows) as add_layer_norm_into_; returns base
    then. The C++ ops are called through torch.ops (forward only, they have no Python autograd
    kernel to skip); the Triton ones directly or through their custom ops, as ops.call decides."""
    if kernel in ("cpu", "cuda"):
        if into is None:
            return torch.ops.adaptive_encoder.add_layer_norm(x, residual, weight, bias, eps)
        base, rows, at_rows = into
        torch.ops.adaptive_encoder.add_layer_norm_into_(base, x, residual, weight, bias, eps, rows, at_rows)
        ops.bump_version(base)  # the C++ ops do not
        return base
    if into is None:
        return ops.call(_triton_add_layer_norm, _triton_kernel, x, residual, weight, bias, eps,
                        tensors=(x, residual, weight, bias))
    base, rows, at_rows = into
    ops.call(_triton_add_layer_norm_into_, _triton_kernel_into_, base, x, residual, weight, bias, eps, rows, at_rows,
             tensors=(base, x, residual, weight, bias), mutated=base)
    return base


def _check(x, residual, weight, bias, eps, op: str) -> None:
    for name, t in (("x", x), ("residual", residual), ("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a tensor")
    if x.dim() != 2 or residual.shape != x.shape:
        raise ValueError(f"{op}: x and residual must be (A, D) alike, got {tuple(x.shape)} and {tuple(residual.shape)}")
    if weight.shape != (x.shape[1],) or bias.shape != (x.shape[1],):
        raise ValueError(f"{op}: weight and bias must be ({x.shape[1]},), got {tuple(weight.shape)} and "
                         f"{tuple(bias.shape)}")
    if not x.is_floating_point() or any(t.dtype != x.dtype for t in (residual, weight, bias)):
        raise TypeError(f"{op}: x, residual, weight and bias must share one floating-point dtype, got "
                        f"{[str(t.dtype) for t in (x, residual, weight, bias)]}")
    if any(t.device != x.device for t in (residual, weight, bias)):
        raise ValueError(f"{op}: x, residual, weight and bias must be on one device")
    if not eps > 0:
        raise ValueError(f"{op}: eps must be > 0, got {eps}")


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                   backend: str | None = None) -> torch.Tensor:
    """LayerNorm(x + residual) * weight + bias. x, residual (A,D); weight, bias (D,); one dtype."""
    _check(x, residual, weight, bias, eps, "add_layer_norm")
    kernel = None if _needs_grad(x, residual, weight, bias) else kernel_backend(x, backend)
    if kernel is not None:
        return unchecked(kernel, x, residual, weight, bias, float(eps))
    return reference.add_layer_norm(x, residual, weight, bias, eps)


def add_layer_norm_into_(base: torch.Tensor, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor, eps: float, rows: torch.Tensor, at_rows: bool = False,
                         backend: str | None = None, check: bool = True) -> torch.Tensor:
    """In place: base[rows[i]] = LayerNorm(x[j] + residual[j]) * weight + bias with j = i, or
    j = rows[i] with at_rows (x and residual then (R,D) like base); returns base. base (R,D)
    contiguous, of x's dtype; rows (A,) int64, unique, in [0, R) (`check=False` skips that check,
    and its host sync, for rows from a plan). For inference (no autograd)."""
    _check(x, residual, weight, bias, eps, "add_layer_norm_into_")
    if at_rows:
        ops._check_rows(base, rows, "add_layer_norm_into_", "base")
        if x.shape != base.shape or x.dtype != base.dtype or x.device != base.device:
            raise ValueError(f"add_layer_norm_into_: with at_rows, x and residual must be like base "
                             f"{tuple(base.shape)} {base.dtype} on {base.device}, got {tuple(x.shape)} {x.dtype} "
                             f"on {x.device}")
    else:
        ops._check_scatter(base, x, rows, "add_layer_norm_into_")
    if not base.is_contiguous():
        raise ValueError("add_layer_norm_into_: base must be contiguous")
    if _needs_grad(base, x, residual, weight, bias):
        raise RuntimeError("add_layer_norm_into_ is for inference: use add_layer_norm and scatter for gradients")
    if check:
        ops.check_rows_in_range(rows, base.shape[0], "add_layer_norm_into_", unique=True)
    kernel = kernel_backend(x, backend)
    if kernel is not None:
        unchecked(kernel, x, residual, weight, bias, float(eps), (base, rows, at_rows))
    else:
        reference.add_layer_norm_into_(base, x, residual, weight, bias, eps, rows, at_rows)
    return base
