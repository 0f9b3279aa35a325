"""plan / gather / scatter: every backend against the PyTorch reference, autograd, opcheck."""
import os
import subprocess

import pytest
import torch

from adaptive_encoder import ops, reference
from conftest import DEVICE_BACKENDS, DEVICES, TRITON_DEVICE

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (rows R, hidden D, active A): empty, all-active, T=1-like single row, D not a block multiple.
SHAPES = [(1, 1, 1), (7, 5, 0), (9, 33, 9), (40, 100, 17), (64, 1030, 23), (300, 8, 150)]


def _rows(R, A, device, gen):
    return torch.randperm(R, generator=gen)[:A].sort().values.to(device)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("R,D,A", SHAPES)
def test_gather_scatter_match_reference(device, backend, dtype, R, D, A, poison):
    gen = torch.Generator().manual_seed(R * 1000 + D + A)
    x = torch.randn(R, D, generator=gen).to(device, dtype)
    rows = _rows(R, A, device, gen)
    src = torch.randn(A, D, generator=gen).to(device, dtype)

    out = ops.gather(x, rows, backend=backend)
    assert out.shape == (A, D) and out.dtype == dtype
    assert torch.equal(out, reference.gather(x, rows))  # bitwise: copies must be exact

    out = ops.scatter(x, src, rows, backend=backend)
    expect = reference.scatter(x, src, rows)
    assert torch.equal(out, expect)
    halted = torch.ones(R, dtype=torch.bool, device=device)
    halted[rows] = False
    assert torch.equal(out[halted], x[halted])  # copy-through of rows not in the plan


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_unsorted_rows_and_noncontiguous_input(device, backend, poison):
    x = torch.randn(16, 24, device=device).t().contiguous().t()[:, :20]  # strided view
    rows = torch.tensor([9, 2, 15, 0], device=device)
    assert torch.equal(ops.gather(x, rows, backend=backend), x[rows])
    src = torch.randn(4, 20, device=device)
    assert torch.equal(ops.scatter(x, src, rows, backend=backend), x.index_copy(0, rows, src))


def _plan_inputs(B, T, L, gen, p_pad=0.3, device="cpu"):
    depths = torch.randint(0, L + 1, (B, T), generator=gen)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    return depths.to(device), mask.to(device)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
# (70, 33, 12): several chunks of the C++ CPU op's parallel loop over sequences.
@pytest.mark.parametrize("B,T,L", [(1, 1, 1), (1, 1, 6), (3, 7, 4), (5, 33, 12), (2, 130, 3), (70, 33, 12)])
def test_plan_matches_reference(device, backend, B, T, L, poison):
    gen = torch.Generator().manual_seed(B * 100 + T + L)
    depths, mask = _plan_inputs(B, T, L, gen, device=device)
    rows, offsets = ops.plan(depths, mask, L, backend=backend)
    ref_rows, ref_offsets = reference.plan(depths, mask, L)
    assert torch.equal(offsets, ref_offsets)
    assert torch.equal(rows, ref_rows)
    # The definition, spelled out for one (layer, sequence): active = real and depth > n.
    n, b = L - 1, B - 1
    sel = rows[offsets[n * B + b]:offsets[n * B + b + 1]]
    t = torch.arange(T, device=device)
    expect = b * T + t[mask[b] & (depths[b] > n)]
    assert torch.equal(sel, expect)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_unchecked_plan_takes_out_of_range_depths_as_the_definition_does(device, backend, poison):
    """check=False (what make_plan runs: it checks the range on numbers it reads anyway): a
    depth below 0 is in no layer, one above L in every layer, exactly as mask & (depths > n)."""
    gen = torch.Generator().manual_seed(7)
    depths = torch.randint(-3, 9, (37, 21), generator=gen).to(device)
    mask = (torch.rand(37, 21, generator=gen) < 0.8).to(device)
    rows, offsets = ops.plan(depths, mask, 5, backend=backend, check=False)
    ref_rows, ref_offsets = reference.plan(depths, mask, 5)
    assert torch.equal(rows, ref_rows) and torch.equal(offsets, ref_offsets)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_plan_edge_sets(device, backend, poison):
    mask = torch.ones(2, 5, dtype=torch.bool, device=device)
    rows, offsets = ops.plan(torch.zeros(2, 5, dtype=torch.int64, device=device), mask, 3, backend=backend)
    assert rows.numel() == 0 and torch.equal(offsets, torch.zeros(7, dtype=torch.int64, device=device))
    rows, offsets = ops.plan(torch.full((2, 5), 3, device=device), mask, 3, backend=backend)
    assert torch.equal(rows, torch.arange(10, device=device).repeat(3))
    assert offsets.tolist() == [0, 5, 10, 15, 20, 25, 30]


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_gradcheck(device, backend):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 6, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    src = torch.randn(4, 6, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    rows = torch.tensor([7, 0, 3, 4], device=device)
    assert torch.autograd.gradcheck(lambda a: ops.gather(a, rows, backend=backend), (x,))
    assert torch.autograd.gradcheck(lambda a, s: ops.scatter(a, s, rows, backend=backend), (x, src))
    assert torch.autograd.gradgradcheck(lambda a, s: ops.scatter(a, s, rows, backend=backend), (x, src))
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    assert torch.autograd.gradcheck(lambda a: ops.gather(a, empty, backend=backend).sum() + a.sum(), (x,))


def _registered_ops():
    """(op, kind, device): the C++ ops on every device, the Triton ones where Triton runs here
    (the GPU when there is one, else the interpreter on CPU)."""
    out = []
    ns = torch.ops.adaptive_encoder
    for device in DEVICES:
        for prefix in ("", "triton_"):
            if prefix and device not in (TRITON_DEVICE, "cuda"):
                continue
            out += [(getattr(ns, prefix + kind).default, kind, device) for kind in ("gather", "scatter", "plan",
                                                                                     "scatter_")]
    return out


@pytest.mark.parametrize("op,kind,device", _registered_ops(), ids=lambda v: str(v))
def test_opcheck(op, kind, device):
    x = torch.randn(8, 5, dtype=torch.float64, device=device, requires_grad=True)
    rows = torch.tensor([1, 6, 2], device=device)
    if kind == "gather":
        args = (x, rows)
    elif kind == "scatter":
        args = (x, torch.randn(3, 5, dtype=torch.float64, device=device, requires_grad=True), rows)
    elif kind == "scatter_":  # in place, inference only: no autograd to check
        args = (x.detach().clone(), torch.randn(3, 5, dtype=torch.float64, device=device), rows)
    else:
        gen = torch.Generator().manual_seed(1)
        depths, mask = _plan_inputs(3, 6, 4, gen, device=device)
        args = (depths, mask, 4)
    # plan's output size depends on the data, which only the AOT-dispatch check cannot model.
    tests = ("test_schema", "test_autograd_registration", "test_faketensor") if kind == "plan" else None
    torch.library.opcheck(op, args, test_utils=tests) if tests else torch.library.opcheck(op, args)


@pytest.mark.parametrize("device,backend", [db for db in DEVICE_BACKENDS if db[1] != "torch"])
def test_torch_compile_traces_ops(device, backend):
    def step(x, rows, w):
        h = ops.gather(x, rows, backend=backend) @ w
        return ops.scatter(x, h, rows, backend=backend)

    x = torch.randn(12, 8, device=device)
    w = torch.randn(8, 8, device=device)
    rows = torch.tensor([0, 5, 11], device=device)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, rows, w), step(x, rows, w))


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_bad_inputs_raise_clear_errors(device, backend):
    x = torch.randn(5, 4, device=device)
    rows = torch.tensor([1, 2], device=device)
    with pytest.raises(TypeError, match="rows must be int64"):
        ops.gather(x, rows.int(), backend=backend)
    with pytest.raises(ValueError, match="x must be 2-D"):
        ops.gather(x[None], rows, backend=backend)
    with pytest.raises(ValueError, match="rows must be 1-D"):
        ops.gather(x, rows[None], backend=backend)
    with pytest.raises(ValueError, match=r"src must be \(2, 4\)"):
        ops.scatter(x, torch.randn(3, 4, device=device), rows, backend=backend)
    with pytest.raises(TypeError, match="dtype"):
        ops.scatter(x, torch.randn(2, 4, device=device, dtype=torch.float64), rows, backend=backend)
    with pytest.raises(TypeError, match="depths must be int64"):
        ops.plan(torch.zeros(2, 3, device=device), torch.ones(2, 3, dtype=torch.bool, device=device), 2)
    with pytest.raises(ValueError, match="must match"):
        ops.plan(torch.zeros(2, 3, dtype=torch.int64, device=device),
                 torch.ones(2, 4, dtype=torch.bool, device=device), 2)


def test_backend_selection_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend"):
        ops.resolve_backend("cpu", "fast")
    with pytest.raises(RuntimeError, match="runs on cuda tensors"):
        ops.resolve_backend("cpu", "cuda")
    monkeypatch.setenv(ops.ENV_VAR, "torch")
    assert ops.resolve_backend("cpu") == "torch"
    monkeypatch.delenv(ops.ENV_VAR)
    assert ops.resolve_backend("cpu") == "cpu"  # the C++ extension is built in CI: no fallback
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ops.resolve_backend("cpu", "triton")


def test_cpu_kernel_checks_bounds_even_unchecked(cpp_errors_raise):
    x = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="out of range"):
        ops.gather(x, torch.tensor([0, 4]), backend="cpu", check=False)
    with pytest.raises(RuntimeError, match="out of range"):
        ops.scatter(x, torch.randn(1, 3), torch.tensor([-1]), backend="cpu", check=False)


def test_cpp_error_probe_tells_a_crash_from_a_raise(tmp_path):
    """The probe behind the cpp_errors_raise fixture, under a preloaded library that mimics the
    GPU machine of 2026-11-27 (our C++ errors crash, torch's own raise): it must see both."""
    from conftest import _cpp_error_crashes

    lib = tmp_path / "crash.so"
    src = os.path.join(os.path.dirname(__file__), "native", "crash_on_cpp_error.c")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(lib), src, "-ldl"], check=True)
    assert _cpp_error_crashes("ours", str(lib))
    assert not _cpp_error_crashes("torch", str(lib))

BAD_ROWS = [([4], "row index 4 out of range"), ([0, -1], "row index -1 out of range"),
            ([100000], "row index 100000 out of range")]


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("rows,msg", BAD_ROWS)
def test_public_ops_refuse_bad_rows(device, backend, rows, msg):
    x = torch.randn(4, 3, device=device)
    r = torch.tensor(rows, device=device)
    with pytest.raises(ValueError, match=msg):
        ops.gather(x, r, backend=backend)
    with pytest.raises(ValueError, match=msg):
        ops.scatter(x, torch.randn(len(rows), 3, device=device), r, backend=backend)
    with pytest.raises(ValueError, match=r"out of range \[0, 0\)"):
        ops.gather(x[:0], r, backend=backend)
    with pytest.raises(ValueError, match="unique"):
        ops.scatter(x, torch.randn(3, 3, device=device), torch.tensor([1, 3, 1], device=device), backend=backend)
    # Unique, in-range rows pass the check.
    ok = torch.tensor([3, 0], device=device)
    assert torch.equal(ops.gather(x, ok, backend=backend), x[ok])


@pytest.mark.parametrize("device", [d for d in DEVICES if d == TRITON_DEVICE or d == "cuda"])
def test_unchecked_kernels_never_touch_memory_out_of_bounds(device, poison):
    """With the check off, the Triton and CUDA kernels mask by the row bounds: an out-of-range
    source row reads zeros, an out-of-range destination row is dropped (no crash, no write)."""
    backends = [b for d, b in DEVICE_BACKENDS if d == device and b in ("triton", "cuda")]
    assert backends
    x = torch.randn(4, 3, device=device)
    for backend in backends:
        rows = torch.tensor([2, 4, -1, 100000, 0], device=device)
        out = ops.gather(x, rows, backend=backend, check=False)
        assert torch.equal(out[[0, 4]], x[[2, 0]])
        assert torch.equal(out[1:4], torch.zeros(3, 3, device=device))
        src = torch.randn(5, 3, device=device)
        out = ops.scatter(x, src, rows, backend=backend, check=False)
        expect = x.clone()
        expect[2], expect[0] = src[0], src[4]
        assert torch.equal(out, expect)
        empty = ops.gather(x[:0], torch.tensor([0, 7], device=device), backend=backend, check=False)
        assert torch.equal(empty, torch.zeros(2, 3, device=device))


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("R,D,A", SHAPES)
def test_inplace_scatter_matches_reference(device, backend, dtype, R, D, A):
    gen = torch.Generator().manual_seed(R + D + A)
    x = torch.randn(R, D, generator=gen).to(device, dtype)
    rows = _rows(R, A, device, gen)
    src = torch.randn(A, D, generator=gen).to(device, dtype)
    base = x.clone()
    assert ops.scatter_(base, src, rows, backend=backend) is base
    assert torch.equal(base, reference.scatter(x, src, rows))


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_inplace_scatter_refuses_what_it_cannot_do(device, backend):
    x = torch.randn(6, 4, device=device)
    rows = torch.tensor([1, 3], device=device)
    with pytest.raises(ValueError, match="contiguous"):
        ops.scatter_(x.t().contiguous().t(), torch.randn(2, 4, device=device), rows, backend=backend)
    with pytest.raises(RuntimeError, match="inference"):
        ops.scatter_(x.clone().requires_grad_(), torch.randn(2, 4, device=device), rows, backend=backend)
    with pytest.raises(ValueError, match="unique"):
        ops.scatter_(x, torch.randn(2, 4, device=device), torch.tensor([1, 1], device=device), backend=backend)


def test_launch_sizes_match_triton():
    """kernels/sizes.py's cdiv and next_power_of_2 (plain ints, for the wrappers' host time) give
    Triton's answers wherever the wrappers call them (n >= 1, b >= 1), and the interpreter flag
    is the environment's."""
    import triton

    from adaptive_encoder.kernels import sizes

    for n in list(range(1, 2100)) + [2 ** 20 - 1, 2 ** 20, 2 ** 20 + 1, 10 ** 9]:
        assert sizes.next_power_of_2(n) == triton.next_power_of_2(n), n
        for b in (1, 3, 16, 64, 512):
            assert sizes.cdiv(n, b) == triton.cdiv(n, b), (n, b)
    assert sizes.cdiv(0, 64) == 0
    assert sizes.INTERPRET == (os.environ.get("TRITON_INTERPRET") == "1")
