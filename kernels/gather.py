"""Row gather / scatter in Triton: one row-copy kernel serves both.

gather:  out[i] = x[rows[i]]                      x (R, D), rows (A,) int64 -> (A, D)
scatter: out = base.clone(); out[rows[i]] = src[i]  base (R, D), src (A, D) -> (R, D)

Any dtype: values are only loaded and stored, never computed on (the interpreter gets
bf16 arithmetic wrong, plain loads/stores are exact).

Every load and store is masked by the row bounds of its tensor, whatever the caller
checked: a source row outside [0, n_src) reads zeros, a destination row outside [0, n_dst)
is not written. So no index can touch memory outside the tensors.
"""
import torch
import triton
import triton.language as tl

from .sizes import cdiv, next_power_of_2


@triton.jit
def _copy_rows_kernel(
    dst_ptr, src_ptr, dst_rows_ptr, src_rows_ptr, n, D, n_dst, n_src,
    HAS_DST_ROWS: tl.constexpr, HAS_SRC_ROWS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_d = tl.program_id(1)
    i = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    c = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = i < n
    if HAS_DST_ROWS:
        d = tl.load(dst_rows_ptr + i, mask=row_ok, other=0)
    else:
        d = i.to(tl.int64)
    if HAS_SRC_ROWS:
        s = tl.load(src_rows_ptr + i, mask=row_ok, other=0)
    else:
        s = i.to(tl.int64)
    m = row_ok[:, None] & (c[None, :] < D)
    src_ok = (s >= 0) & (s < n_src)
    dst_ok = (d >= 0) & (d < n_dst)
    vals = tl.load(src_ptr + s[:, None] * D + c[None, :], mask=m & src_ok[:, None], other=0)
    tl.store(dst_ptr + d[:, None] * D + c[None, :], vals, mask=m & dst_ok[:, None])


def _blocks(n: int, D: int):
    # Large blocks: the interpreter costs ~ms per program instance; on a GPU 4-16 KiB tiles
    # per program are also a good copy granularity.
    block_d = min(next_power_of_2(max(D, 1)), 1024)
    block_r = max(1, min(next_power_of_2(max(n, 1)), 8192 // block_d))
    return block_r, block_d


def _copy_rows(dst, src, dst_rows, src_rows, n: int, D: int) -> None:
    if n == 0 or D == 0:
        return
    block_r, block_d = _blocks(n, D)
    grid = (cdiv(n, block_r), cdiv(D, block_d))
    _copy_rows_kernel[grid](
        dst, src,
        dst_rows if dst_rows is not None else src,  # unused pointer when the flag is off
        src_rows if src_rows is not None else src,
        n, D, dst.shape[0], src.shape[0],
        HAS_DST_ROWS=dst_rows is not None, HAS_SRC_ROWS=src_rows is not None,
        BLOCK_R=block_r, BLOCK_D=block_d,
    )


def triton_gather(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    rows = rows.contiguous()
    out = torch.empty((rows.shape[0], x.shape[1]), dtype=x.dtype, device=x.device)
    _copy_rows(out, x, None, rows, rows.shape[0], x.shape[1])
    return out


def triton_scatter_(base: torch.Tensor, src: torch.Tensor, rows: torch.Tensor) -> None:
    """In place into a contiguous base."""
    _copy_rows(base, src.contiguous(), rows.contiguous(), None, rows.shape[0], base.shape[1])


def triton_scatter(base: torch.Tensor, src: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    out = base.contiguous().clone()
    _copy_rows(out, src.contiguous(), rows.contiguous(), None, rows.shape[0], base.shape[1])
    return out
