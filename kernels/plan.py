"""The per-forward execution plan in Triton (semantics: adaptive_encoder/reference.py::plan).

Two launches and a prefix sum: count the active tokens of every (layer, sequence), turn
the counts into offsets, then each sequence writes its active row indices for every layer.
One program per sequence holds the whole sequence (T <= BLOCK_T) in registers.
"""
import torch
import triton
import triton.language as tl

from .sizes import next_power_of_2


@triton.jit
def _plan_count_kernel(depths_ptr, mask_ptr, counts_ptr, B, T, L, BLOCK_T: tl.constexpr):
    b = tl.program_id(0)
    t = tl.arange(0, BLOCK_T)
    ok = t < T
    d = tl.load(depths_ptr + b * T + t, mask=ok, other=0)
    m = tl.load(mask_ptr + b * T + t, mask=ok, other=0) != 0
    for n in range(L):
        active = m & (d > n)
        tl.store(counts_ptr + n * B + b, tl.sum(active.to(tl.int64), axis=0))


@triton.jit
def _plan_fill_kernel(depths_ptr, mask_ptr, offsets_ptr, rows_ptr, B, T, L, BLOCK_T: tl.constexpr):
    b = tl.program_id(0)
    t = tl.arange(0, BLOCK_T)
    ok = t < T
    d = tl.load(depths_ptr + b * T + t, mask=ok, other=0)
    m = tl.load(mask_ptr + b * T + t, mask=ok, other=0) != 0
    row = (b * T + t).to(tl.int64)
    for n in range(L):
        active = m & (d > n)
        # Inclusive prefix count of active tokens = 1 + position among the active ones.
        pos = tl.cumsum(active.to(tl.int64), axis=0) - 1
        start = tl.load(offsets_ptr + n * B + b)
        tl.store(rows_ptr + start + pos, row, mask=active)


def triton_plan(depths: torch.Tensor, mask: torch.Tensor, num_layers: int):
    B, T = depths.shape
    L = int(num_layers)
    depths = depths.contiguous()
    mask_u8 = mask.contiguous().to(torch.uint8)
    counts = torch.zeros(L * B, dtype=torch.int64, device=depths.device)
    block_t = next_power_of_2(max(T, 1))
    if B > 0 and T > 0:
        _plan_count_kernel[(B,)](depths, mask_u8, counts, B, T, L, BLOCK_T=block_t)
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    total = int(offsets[-1])  # the data-dependent output size: one host sync
    rows = torch.empty(total, dtype=torch.int64, device=depths.device)
    if total > 0:
        _plan_fill_kernel[(B,)](depths, mask_u8, offsets, rows, B, T, L, BLOCK_T=block_t)
    return rows, offsets
