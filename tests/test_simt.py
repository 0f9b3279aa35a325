"""The CUDA kernels (csrc/ops_kernels.cuh, csrc/norm_kernels.cuh) run on the CPU under a SIMT
emulator (tests/native/simt.h: one thread per lane, warps meeting at every *_sync intrinsic), so
their indexing, vector widths, warp votes and shuffles are checked against the reference on a
machine without a GPU. On a GPU, test_ops.py and test_norm.py run the same kernels for real.

The emulator is compiled here with torch.utils.cpp_extension (~50 s the first time, cached after).
"""
import os

import pytest
import torch

from adaptive_encoder import reference
from test_norm import TOL  # the tolerances every norm backend is held to

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def simt():
    from torch.utils import cpp_extension

    return cpp_extension.load(name="adaptive_encoder_simt_ops",
                              sources=[os.path.join(ROOT, "tests", "native", "simt_ops.cpp")],
                              extra_include_paths=[os.path.join(ROOT, "csrc")], extra_cflags=["-O1"])


def test_emulator_models_votes_shuffles_and_indices(simt):
    blocks, threads = 3, 64
    ballots = torch.full((blocks * threads,), -1, dtype=torch.int64)
    sums = torch.full((blocks * threads,), -1.0)
    simt.lane_ops(ballots, sums, blocks, threads)
    assert ballots.eq(sum(1 << j for j in range(0, 32, 3))).all()  # lanes 0, 3, ..., 30 voted
    i = torch.arange(blocks * threads, dtype=torch.float32)
    assert torch.equal(sums, i.view(-1, 32).sum(1).repeat_interleave(32))  # each warp's own sum


def test_emulator_reports_a_vote_after_a_lane_returned(simt):
    with pytest.raises(RuntimeError, match="after a lane of the warp returned"):
        simt.ballot_after_return(torch.zeros(32, dtype=torch.int64))


def _plan_inputs(B, T, L, seed):
    """As test_ops.py's, plus sequences with no real token and a left-padded one (test_ops keeps
    its own draws, every sequence at least one token long, right-padded)."""
    gen = torch.Generator().manual_seed(seed)
    depths = torch.randint(0, L + 1, (B, T), generator=gen)
    lengths = torch.randint(0, T + 1, (B,), generator=gen)  # 0: a sequence with no real token
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    if B > 1:
        mask[1] = mask[1].flip(0)  # left padding too
    return depths, mask


def _assert_plan_is_reference(simt, depths, mask, L):
    rows, offsets = simt.plan(depths, mask, L)
    want_rows, want_offsets = reference.plan(depths, mask, L)
    assert torch.equal(offsets, want_offsets), (tuple(depths.shape), L)
    assert torch.equal(rows, want_rows), (tuple(depths.shape), L)


# T around the warp width (31, 32, 33, 100: 1-4 turns of the token loop, a partial last one);
# L * B not a multiple of the 4 warps per block; B = 0.
@pytest.mark.parametrize("B,T,L", [(1, 1, 1), (1, 31, 12), (3, 32, 4), (5, 33, 12), (2, 100, 3), (7, 65, 6),
                                   (0, 5, 3)])
def test_plan_kernels_match_reference(simt, B, T, L):
    _assert_plan_is_reference(simt, *_plan_inputs(B, T, L, seed=B * 1000 + T * 10 + L), L)


def test_plan_kernels_on_random_shapes(simt):
    """40 random (B, T, L) from a fixed seed: T up to 3 turns of the warp's token loop."""
    gen = torch.Generator().manual_seed(2026)
    for case in range(40):
        B, T, L = (int(torch.randint(lo, hi, (1,), generator=gen)) for lo, hi in ((1, 6), (1, 97), (1, 13)))
        _assert_plan_is_reference(simt, *_plan_inputs(B, T, L, seed=case), L)


def test_plan_kernels_all_active_and_none_active(simt):
    depths = torch.full((3, 40), 4)
    mask = torch.ones(3, 40, dtype=torch.bool)
    for d, m in [(depths, mask), (depths * 0, mask), (depths, ~mask)]:
        _assert_plan_is_reference(simt, d, m, 4)


def _misaligned(R, D, dtype, shift, gen):
    """(R, D) contiguous tensor whose data starts `shift` elements into its storage."""
    flat = torch.randn(R * D + shift, generator=gen).to(dtype)
    return flat[shift:].view(R, D)


# Row sizes that reach each vector width: 16-byte rows (D=768 bf16, D=4 fp32), 8 (D=2 fp32),
# 4 (D=1 fp32, D=2 bf16), 2 (D=1 bf16), and a data pointer one element off 16-byte alignment.
@pytest.mark.parametrize("dtype,D,shift", [(torch.bfloat16, 768, 0), (torch.float32, 4, 0), (torch.float32, 2, 0),
                                           (torch.float32, 1, 0), (torch.bfloat16, 2, 0), (torch.bfloat16, 1, 0),
                                           (torch.float16, 1000, 1), (torch.float32, 384, 1), (torch.uint8, 3, 1)])
def test_copy_kernel_gathers_and_scatters_like_the_reference(simt, dtype, D, shift):
    gen = torch.Generator().manual_seed(D * 10 + shift)
    R, A = 37, 23
    x = _misaligned(R, D, dtype, shift, gen)
    rows = torch.randperm(R, generator=gen)[:A]

    out = _misaligned(A, D, dtype, shift, gen).fill_(7)  # poisoned
    simt.copy_rows(out, None, x, rows, A, 1)  # gather: out[i] = x[rows[i]]
    assert torch.equal(out, reference.gather(x, rows))

    src = _misaligned(A, D, dtype, shift, gen)
    base = x.clone()
    simt.copy_rows(base, rows, src, None, A, 2)  # scatter: base[rows[i]] = src[i]
    assert torch.equal(base, reference.scatter(x, src, rows))


def test_copy_kernel_bounds_every_row(simt):
    x = torch.arange(12.0).view(4, 3)
    out = torch.full((3, 3), 7.0)
    simt.copy_rows(out, None, x, torch.tensor([2, -1, 4]), 3, 1)  # out-of-range sources read zeros
    assert torch.equal(out, torch.tensor([[6.0, 7, 8], [0, 0, 0], [0, 0, 0]]))
    base = torch.zeros(4, 3)
    simt.copy_rows(base, torch.tensor([-1, 1, 4]), x[:3].clone(), None, 3, 1)  # out-of-range targets unwritten
    assert torch.equal(base, torch.tensor([[0.0, 0, 0], [3, 4, 5], [0, 0, 0], [0, 0, 0]]))


def _norm_case(A, D, dtype, shift, seed):
    gen = torch.Generator().manual_seed(seed)
    x, r = (_misaligned(A, D, dtype, shift, gen) for _ in range(2))
    w, b = (_misaligned(1, D, dtype, shift, gen)[0] for _ in range(2))
    return x, r, w, b


# Every vector width and registers-per-lane template the CUDA op picks: fp32 16-byte vectors with
# 1/2/8/16 per lane (D 64, 256, 768, 2048), bf16/fp16 8-wide with 1/4/8 (D 8, 768, 2048), single
# elements with 1/32/64 (D 7, 1000, 2048 one element off alignment), BERT-base's 768 unaligned.
@pytest.mark.parametrize("dtype,D,shift", [(torch.float32, 64, 0), (torch.float32, 256, 0), (torch.float32, 768, 0),
                                           (torch.float32, 2048, 0), (torch.bfloat16, 8, 0),
                                           (torch.bfloat16, 768, 0), (torch.float16, 2048, 0),
                                           (torch.float16, 7, 0), (torch.float32, 1000, 0),
                                           (torch.bfloat16, 2048, 1), (torch.bfloat16, 768, 1)])
def test_norm_kernel_matches_reference(simt, dtype, D, shift):
    A = 6
    x, r, w, b = _norm_case(A, D, dtype, shift, seed=D + shift)
    out = _misaligned(A, D, dtype, shift, torch.Generator().manual_seed(0)).fill_(float("nan"))  # poisoned
    assert simt.add_layer_norm(out, None, x, r, w, b, A, False, 1e-5)
    torch.testing.assert_close(out, reference.add_layer_norm(x, r, w, b, 1e-5), **TOL[dtype])


@pytest.mark.parametrize("at_rows", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_kernel_into_rows(simt, at_rows, dtype):
    R, D = 11, 96
    gen = torch.Generator().manual_seed(int(at_rows))
    rows = torch.tensor([9, 0, 4, 10, 2])
    A = rows.numel()
    x, r = (torch.randn(R if at_rows else A, D, generator=gen).to(dtype) for _ in range(2))
    w, b = (torch.randn(D, generator=gen).to(dtype) for _ in range(2))
    base = torch.randn(R, D, generator=gen).to(dtype)
    want = base.clone()
    reference.add_layer_norm_into_(want, x, r, w, b, 1e-5, rows, at_rows=at_rows)
    got = base.clone()
    assert simt.add_layer_norm(got, rows, x, r, w, b, A, at_rows, 1e-5)
    torch.testing.assert_close(got, want, **TOL[dtype])
    untouched = torch.ones(R, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(got[untouched], base[untouched])


def test_norm_kernel_drops_out_of_range_rows_and_refuses_what_it_cannot_run(simt):
    D = 32
    x, r = torch.randn(3, D), torch.randn(3, D)
    w, b = torch.ones(D), torch.zeros(D)
    base = torch.full((4, D), 7.0)
    assert simt.add_layer_norm(base, torch.tensor([-1, 2, 4]), x, r, w, b, 3, False, 1e-5)
    assert torch.equal(base[[0, 1, 3]], torch.full((3, D), 7.0))
    torch.testing.assert_close(base[2], reference.add_layer_norm(x[1:2], r[1:2], w, b, 1e-5)[0])
    wide = torch.randn(1, 2056)  # above kMaxD: no kernel
    assert not simt.add_layer_norm(wide.clone(), None, wide, wide, wide[0], wide[0], 1, False, 1e-5)
    x64 = torch.randn(2, D, dtype=torch.float64)  # float64: the CUDA op takes the reference instead
    assert not simt.add_layer_norm(x64.clone(), None, x64, x64, x64[0], x64[0], 2, False, 1e-5)
