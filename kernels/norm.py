"""Residual add + LayerNorm in Triton: the closing step of a post-LayerNorm block, one kernel.

add_layer_norm:   out = LayerNorm(x + residual) * weight + bias             x, residual (A, D) -> (A, D)
add_layer_norm_into_: base[rows[i]] = LayerNorm(x[i] + residual[i]) * ...  in place, rows (A,) int64
    at_rows=True: x, residual (R, D) like base, read at rows[i] too (a layer run on every row
    that writes back only its active ones: no gather before, no scatter after)

Unfused this is an add (reads 2 rows, writes 1) and a LayerNorm (reads 1, writes 1), two
launches; fused, 2 reads and 1 write in one launch, and the `_into_` form also replaces the
scatter that would copy the layer's rows into the state (a third launch and pass).

Numerics follow torch's: the sum is rounded to the input dtype (as `x + residual` stores it),
then mean and variance in float32 (biased), then the affine in float32, stored in the input
dtype. Under the CPU interpreter bf16/fp16 arithmetic is wrong, so every value is loaded as
float32 first, and its float32 -> bf16 cast truncates, so there bf16 values are rounded to
nearest by their bits first (_round_bf16; measured: truncating twice per norm took a 4-layer
encoder's bf16 error from 1.1e-3 to 1.1e-2 against the dense reference).

A destination row outside [0, base rows) is not written (as the row-copy kernel: no index
reaches outside the tensors whatever the caller checked).
"""
import torch
import triton
import triton.language as tl

from . import sizes
from .sizes import cdiv, next_power_of_2


@triton.jit
def _round_bf16(v):
    """float32 -> the float32 value of the nearest bfloat16 (ties to even), by its bits. The
    interpreter's float32 -> bfloat16 cast truncates (a GPU's rounds to nearest): after this
    the cast is exact there too."""
    bits = v.to(tl.uint32, bitcast=True)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _add_layer_norm_kernel(x_ptr, r_ptr, w_ptr, b_ptr, out_ptr, rows_ptr, n, D, n_out, eps,
                           HAS_ROWS: tl.constexpr, AT_ROWS: tl.constexpr, ROUND_BF16: tl.constexpr,
                           BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.arange(0, BLOCK_D)
    row_ok = i < n
    col_ok = c < D
    if HAS_ROWS:
        d = tl.load(rows_ptr + i, mask=row_ok, other=-1)
    else:
        d = i.to(tl.int64)
    d_ok = (d >= 0) & (d < n_out)
    if AT_ROWS:  # x and residual have base's rows: read where the row is written
        m = (row_ok & d_ok)[:, None] & col_ok[None, :]
        src = d[:, None] * D + c[None, :]
    else:
        m = row_ok[:, None] & col_ok[None, :]
        src = i.to(tl.int64)[:, None] * D + c[None, :]
    x = tl.load(x_ptr + src, mask=m, other=0.0)
    s = x.to(tl.float32) + tl.load(r_ptr + src, mask=m, other=0.0).to(tl.float32)
    if ROUND_BF16:
        s = _round_bf16(s)
    else:
        s = s.to(x.dtype).to(tl.float32)  # the sum as torch stores it, in the input dtype
    mean = tl.sum(s, axis=1) / D
    diff = tl.where(m, s - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / D + eps)
    w = tl.load(w_ptr + c, mask=col_ok, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + c, mask=col_ok, other=0.0).to(tl.float32)
    y = diff * rstd[:, None] * w[None, :] + b[None, :]
    ok = m & d_ok[:, None]
    if ROUND_BF16:
        y = _round_bf16(y)
    tl.store(out_ptr + d[:, None] * D + c[None, :], y.to(out_ptr.dtype.element_ty), mask=ok)


def _launch(out, x, residual, weight, bias, eps: float, rows, at_rows: bool = False) -> None:
    n, D = (rows.shape[0], x.shape[1]) if at_rows else x.shape
    if n == 0 or D == 0:
        return
    block_d = next_power_of_2(D)
    # GPU: ~4k elements per program (4 rows of 768, 4 warps). Interpreter: ~2 ms per program
    # whatever its size, so as many rows as the 2**20-element block limit and 2**16 allow.
    interpret = sizes.INTERPRET
    per_program = 1 << 16 if interpret else 4096
    block_r = max(1, min(next_power_of_2(n), per_program // block_d))
    _add_layer_norm_kernel[(cdiv(n, block_r),)](
        x, residual, weight, bias, out, rows if rows is not None else x, n, D, out.shape[0], eps,
        HAS_ROWS=rows is not None, AT_ROWS=at_rows, ROUND_BF16=interpret and x.dtype == torch.bfloat16, BLOCK_R=block_r,
        BLOCK_D=block_d)


def triton_add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          eps: float) -> torch.Tensor:
    x, residual = x.contiguous(), residual.contiguous()
    out = torch.empty_like(x)
    _launch(out, x, residual, weight.contiguous(), bias.contiguous(), eps, None)
    return out


def triton_add_layer_norm_into_(base: torch.Tensor, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                                bias: torch.Tensor, eps: float, rows: torch.Tensor, at_rows: bool = False) -> None:
    """In place into a contiguous base."""
    _launch(base, x.contiguous(), residual.contiguous(), weight.contiguous(), bias.contiguous(), eps,
            rows.contiguous(), at_rows)
