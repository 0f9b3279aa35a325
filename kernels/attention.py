"""Varlen attention in Triton: compact queries against all keys of their sequence.

FlashAttention-style forward: one program per (query block, sequence, head) streams the
sequence's keys in blocks with an online softmax, so the (queries x keys) score matrix is
never written to memory. Query and key offsets differ (halted tokens are keys only).

q (Aq, H, Dh), k/v (Ak, H, Dh), cu_q/cu_k (B+1,) int64 -> out (Aq, H, Dh) contiguous, q's dtype.
q, k and v may have any row stride (heads packed, elements contiguous within a row): the
column slices of one fused q/k/v GEMM output are read in place, not copied first (three
copy kernels per layer fewer).
The grid is (cdiv(max_q, BLOCK_M), B, H): max_q bounds each sequence's queries; rows past
cu_q[B] belong to no sequence and are not written.
Forward only (no dropout, no backward): the library uses it for inference.
"""
import torch
import triton
import triton.language as tl

from . import sizes
from .sizes import cdiv, next_power_of_2

LOG2E = 1.4426950408889634  # log2(e): scores go to exp2
_LOG2E = tl.constexpr(LOG2E)  # the same inside the kernel (a jit function reads constexpr globals only)


@triton.jit
def _varlen_attn_kernel(q_ptr, k_ptr, v_ptr, o_ptr, cu_q_ptr, cu_k_ptr, qk_scale, H, stride_q, stride_k, stride_v,
                        bias_ptr, q_pos_ptr, k_pos_ptr, bias_off,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        UPCAST: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    q_start = tl.load(cu_q_ptr + b)
    q_len = tl.load(cu_q_ptr + b + 1) - q_start
    if pid_m * BLOCK_M < q_len:
        k_start = tl.load(cu_k_ptr + b)
        k_len = tl.load(cu_k_ptr + b + 1) - k_start
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        q_rows = (q_start + offs_m).to(tl.int64) * stride_q + h * HEAD_DIM
        q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :], mask=(offs_m < q_len)[:, None], other=0.0)
        if UPCAST:  # the CPU interpreter computes bf16/fp16 wrongly: do the arithmetic in fp32
            q = q.to(tl.float32)
        if HAS_BIAS:  # query positions, for the relative position bias
            q_pos = tl.load(q_pos_ptr + q_start + offs_m, mask=offs_m < q_len, other=0)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
        for n0 in range(0, k_len, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            k_ok = offs_n < k_len
            kv_rows = (k_start + offs_n).to(tl.int64)
            k = tl.load(k_ptr + (kv_rows * stride_k + h * HEAD_DIM)[:, None] + offs_d[None, :], mask=k_ok[:, None],
                        other=0.0)
            v = tl.load(v_ptr + (kv_rows * stride_v + h * HEAD_DIM)[:, None] + offs_d[None, :], mask=k_ok[:, None],
                        other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            # Scores in base 2 (qk_scale = scale * log2(e)): exp2 is the GPU's native exponential,
            # exp(x) = exp2(x * log2(e)) costs a multiply more per score.
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            if HAS_BIAS:  # bias by distance: a (2P-1, H) table, no (B, H, T, T) tensor
                k_pos = tl.load(k_pos_ptr + k_start + offs_n, mask=k_ok, other=0)
                dist = k_pos[None, :] - q_pos[:, None] + bias_off
                b_ok = (offs_m < q_len)[:, None] & k_ok[None, :]
                s += tl.load(bias_ptr + dist.to(tl.int64) * H + h, mask=b_ok, other=0.0).to(tl.float32) * _LOG2E
            s = tl.where(k_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new
        out = acc / l_i[:, None]
        o_rows = (q_start + offs_m).to(tl.int64) * (H * HEAD_DIM) + h * HEAD_DIM
        tl.store(o_ptr + o_rows[:, None] + offs_d[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=(offs_m < q_len)[:, None])


def dot_precision(dtype: torch.dtype) -> str:
    """Triton dot precision for `dtype` inputs: for float32 the one torch uses for float32
    matmuls, IEEE unless the user allowed TF32 (torch.set_float32_matmul_precision("high")).
    Triton's own default is TF32, which gave 1.3e-3 relative error against float64 on an
    H200 (bench/results/h200/correctness.json, 2026-11-26) where float32 users expect float32.
    Other dtypes: the tensor cores' native path (the argument only affects float32)."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t (A, H, Dh) as the kernel reads it: any row stride, heads packed, elements contiguous
    (a column slice of a wider GEMM output qualifies as is); otherwise a contiguous copy."""
    return t if t.stride(2) == 1 and (t.shape[1] == 1 or t.stride(1) == t.shape[2]) else t.contiguous()


def triton_varlen_attention(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scale: float | None = None, bias=None):
    """bias: None or (dist (2P-1, H), q_pos (Aq,), k_pos (Ak,)); see adaptive_encoder.attention."""
    Aq, H, Dh = q.shape
    if Dh & (Dh - 1) or not 16 <= Dh <= 256:
        raise ValueError(f"triton varlen attention needs a power-of-two head dim in [16, 256], got {Dh}")
    q, k, v = _rows(q), _rows(k), _rows(v)
    out = torch.empty((Aq, H, Dh), dtype=q.dtype, device=q.device)
    B = cu_q.numel() - 1
    if Aq == 0 or B == 0 or max_q == 0:
        return out
    interpret = sizes.INTERPRET
    # Interpreter: large blocks (~ms per program), capped at 512 so a (block_m x block_n)
    # score tile stays under Triton's 2**20-element limit for any length. GPU: 64 x 64 tiles.
    block_m = min(512, max(16, next_power_of_2(max_q))) if interpret else 64
    block_n = min(512, max(16, next_power_of_2(max_k))) if interpret else 64
    grid = (cdiv(max_q, block_m), B, H)
    if bias is not None:
        dist, q_pos, k_pos = (t.contiguous() for t in bias)
        extra = (dist, q_pos, k_pos, (dist.shape[0] - 1) // 2)
    else:
        extra = (q, cu_q, cu_k, 0)  # unused pointers when HAS_BIAS is off
    qk_scale = (scale if scale is not None else Dh ** -0.5) * LOG2E
    _varlen_attn_kernel[grid](q, k, v, out, cu_q, cu_k, qk_scale, H,
                              q.stride(0), k.stride(0), v.stride(0), *extra,
                              HEAD_DIM=Dh, BLOCK_M=block_m, BLOCK_N=block_n, UPCAST=interpret,
                              HAS_BIAS=bias is not None, DOT_PRECISION=dot_precision(q.dtype))
    return out
