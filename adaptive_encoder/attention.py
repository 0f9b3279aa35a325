"""Attention of compact queries against all keys of their sequence (varlen form).

q (Aq, H, Dh), k/v (Ak, H, Dh); cu_q/cu_k (B+1,) int64 offsets of each sequence's queries
and keys (they differ: halted tokens are keys but not queries). Output (Aq, H, Dh), the
dtype of q. Rows at or past cu_q[B] / cu_k[B] are in no sequence (graph mode pads its
buffers to fixed sizes): their output is unspecified (the kernels leave it unwritten, the
reference gives zeros) and they are never anyone's keys. max_q / max_k bound the query and
key count of every sequence (the Triton grid and the reference's padding), not the row counts.

Three implementations (and, with FLASH on, PyTorch's FlashAttention-2 on CUDA bf16/fp16):
the padded-SDPA reference (any case, differentiable, dropout), the Triton kernel
(kernels/attention.py) and the C++ CPU op (csrc/attention.cpp: one SDPA call per sequence, no
padding); both kernels are forward only, without dropout. The Triton
kernel runs when the backend is "triton", or by default on CUDA tensors, where it applies:
power-of-two head dim in [16, 256]. The C++ op runs by default on CPU tensors (backend
"cpu"). Either only when no gradient is needed; everything else, e.g. training, takes the
reference. Both kernels are custom ops (`adaptive_encoder::varlen_attention` and
`adaptive_encoder::triton_varlen_attention`), so torch.compile treats each as one opaque call
(the Triton launch grid depends on max_q, an unbacked size when the plan is traced); plain
eager calls reach the Triton kernel without the custom op's dispatch (ops.call).
"""
import torch

from . import ops, reference, settings

# PyTorch's own FlashAttention-2 varlen forward (aten::_flash_attention_forward) instead of the
# Triton kernel, on CUDA bf16/fp16 without a position bias: H200 run 5's follow-up kernel suite
# (bench/results/h200/followup) had it at 4.3x the Triton kernel at batch 8 (both launch-bound:
# a C++ launch against Triton's Python launcher) and 1.41x at batch 64 with MI's compact queries
# (GPU-bound), 0.95x at batch 64 with every query. Off (False) until a forward-level A/B on a GPU
# measures it (gpu_scaling.py --flash); `flash()` turns it on inside a block.
FLASH = False


# The C++ op exists when the extension was built from these sources (an older build lacks it).
_HAS_CPP = ops.cpp_available("cpu") and hasattr(torch.ops.adaptive_encoder, "varlen_attention")


def _like_q(q, *args):
    """Fake (meta) output of both kernels: a contiguous tensor like q."""
    return torch.empty_like(q, memory_format=torch.contiguous_format)


if _HAS_CPP:
    torch.library.register_fake("adaptive_encoder::varlen_attention")(_like_q)


def _no_grad_needed(q, k, v, bias) -> bool:
    return not torch.is_grad_enabled() or not any(
        t is not None and t.requires_grad for t in (q, k, v, *(bias if bias is not None else ())))


def _triton_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
               max_q: int, max_k: int, scale: float, dist: torch.Tensor | None, q_pos: torch.Tensor | None,
               k_pos: torch.Tensor | None) -> torch.Tensor:
    from .kernels import triton_varlen_attention  # imported late: TRITON_INTERPRET is read at import

    bias = None if dist is None else (dist, q_pos, k_pos)
    return triton_varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, bias=bias)


# The custom op, for torch.compile and anything else that looks at ops; eager calls reach the
# kernel directly (ops.call: ~10-40 us less host time a call).
_triton_op = torch.library.custom_op("adaptive_encoder::triton_varlen_attention", _triton_kernel, mutates_args=())
_triton_op.register_fake(_like_q)


def _triton_applies(q, dropout_p: float) -> bool:
    """Whether the Triton kernel computes this case (the caller checks that no gradient is needed)."""
    if dropout_p > 0 or not ops.triton_available(q.device.type):
        return False
    Dh = q.shape[-1]
    return Dh & (Dh - 1) == 0 and 16 <= Dh <= 256


def flash():
    """Inside: CUDA bf16/fp16 attention without a bias runs PyTorch's FlashAttention-2 (FLASH)."""
    return settings.switched(globals(), "FLASH", True)


def _flash_applies(q, dropout_p: float, bias) -> bool:
    """Whether FLASH takes this call: CUDA bf16/fp16, no bias, no dropout, head dim a multiple of 8
    up to 256, eager (not traced), and the aten op present."""
    Dh = q.shape[-1]
    return (FLASH and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and bias is None and dropout_p == 0
            and Dh % 8 == 0 and Dh <= 256 and not torch.compiler.is_compiling()
            and hasattr(torch.ops.aten, "_flash_attention_forward"))


def _aten_flash(*args, **kwargs):
    return torch.ops.aten._flash_attention_forward(*args, **kwargs)


def _flash(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scale: float) -> torch.Tensor:
    """FlashAttention-2 varlen forward: int32 offsets, no dropout, not causal. q/k/v need a
    contiguous last dimension only (a fused projection's column slices qualify); rows past
    cu_q[B] are left unwritten, as the Triton kernel leaves them."""
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return _aten_flash(q, k, v, cu_q.to(torch.int32), cu_k.to(torch.int32), max_q, max_k, 0.0, False, False,
                       scale=scale)[0]


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     cu_q: torch.Tensor, cu_k: torch.Tensor, max_q: int, max_k: int,
                     scale: float | None = None, dropout_p: float = 0.0, backend: str | None = None,
                     bias=None) -> torch.Tensor:
    """bias: None or (dist (2P-1, H) float, q_pos (Aq,) int64, k_pos (Ak,) int64) with positions
    in [0, P): scores[i, j] += dist[k_pos[j] - q_pos[i] + P - 1] (a relative position bias by
    distance, as MPNet's; no (B, H, T, T) tensor in the Triton kernel)."""
    if q.dim() != 3 or k.shape != v.shape or k.dim() != 3 or q.shape[1:] != k.shape[1:]:
        raise ValueError(f"varlen_attention: q (Aq,H,Dh) and k, v (Ak,H,Dh) expected, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if cu_q.shape != cu_k.shape or cu_q.dim() != 1:
        raise ValueError("varlen_attention: cu_q and cu_k must both be (B+1,)")
    if bias is not None:
        dist, q_pos, k_pos = bias
        if dist.dim() != 2 or dist.shape[1] != q.shape[1] or dist.shape[0] % 2 != 1:
            raise ValueError(f"varlen_attention: bias table must be (2P-1, H={q.shape[1]}), got {tuple(dist.shape)}")
        if q_pos.shape != (q.shape[0],) or k_pos.shape != (k.shape[0],):
            raise ValueError("varlen_attention: bias positions must be (Aq,) and (Ak,)")
    scale_or_default = q.shape[-1] ** -0.5 if scale is None else scale
    dist, q_pos, k_pos = bias if bias is not None else (None, None, None)
    backend = backend or ops.resolve_backend(q.device)  # argument, else $ADAPTIVE_ENCODER_BACKEND, else default
    if _no_grad_needed(q, k, v, bias):
        if _HAS_CPP and backend == "cpu" and dropout_p == 0:
            return torch.ops.adaptive_encoder.varlen_attention(q, k, v, cu_q, cu_k, scale_or_default, dist, q_pos,
                                                               k_pos)
        if backend in ("triton", "cuda") and _flash_applies(q, dropout_p, bias):
            return _flash(q, k, v, cu_q, cu_k, max_q, max_k, scale_or_default)
        if (backend == "triton" or (backend == "cuda" and q.is_cuda)) and _triton_applies(q, dropout_p):
            return ops.call(_triton_op, _triton_kernel, q, k, v, cu_q, cu_k, max_q, max_k, scale_or_default, dist,
                            q_pos, k_pos, tensors=(q, k, v))
    return reference.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, dropout_p=dropout_p,
                                      bias=bias)
