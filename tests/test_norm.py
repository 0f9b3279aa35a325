"""add_layer_norm / add_layer_norm_into_: every backend against the reference, edge shapes,
bad input, autograd (the reference runs), opcheck of the kernels' custom ops."""
import pytest
import torch
import torch.nn.functional as F

from adaptive_encoder import norm, reference
from conftest import DEVICE_BACKENDS, TRITON_DEVICE

# On CUDA tensors backend "cuda" runs the Triton kernel unless norm.CUDA_CPP asks for the C++
# one (csrc/norm_cuda.cu): "cuda-cpp" is backend "cuda" with that setting on.
NORM_BACKENDS = DEVICE_BACKENDS + ([("cuda", "cuda-cpp")] if torch.cuda.is_available() else [])


@pytest.fixture
def backend(request):
    """The backend name to pass for a NORM_BACKENDS entry, inside its setting."""
    if request.param != "cuda-cpp":
        yield request.param
        return
    with norm.cuda_cpp():
        assert norm.kernel_backend(torch.zeros(2, 8, device="cuda"), "cuda") == "cuda", "no C++ CUDA kernel built"
        yield "cuda"


# Tolerances against the reference: float32 within reduction order; bf16/fp16 one unit in the
# last place of the output (the kernels' float32 affine rounds once, torch's too, but the
# statistics' summation order differs).
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=3e-2, rtol=1.6e-2),
       torch.float16: dict(atol=4e-3, rtol=2e-3), torch.float64: dict(atol=1e-12, rtol=1e-12)}
# (rows A, hidden D): empty, one element, D not a power of two, BERT-base's 768, a wide row.
SHAPES = [(0, 8), (1, 1), (5, 7), (33, 64), (9, 768), (3, 1000)]


def _case(A, D, dtype, device, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    x, r = (torch.randn(A, D, generator=gen) * scale for _ in range(2))
    w, b = torch.randn(D, generator=gen), torch.randn(D, generator=gen)
    return tuple(t.to(device, dtype) for t in (x, r, w, b))


def _dtypes(backend):
    return [torch.float32, torch.bfloat16, torch.float16] + ([torch.float64] if backend in ("torch", "cpu") else [])


@pytest.mark.parametrize("device,backend", NORM_BACKENDS, indirect=["backend"])
@pytest.mark.parametrize("A,D", SHAPES)
def test_add_layer_norm_matches_reference(device, backend, A, D, poison):
    for dtype in _dtypes(backend):
        x, r, w, b = _case(A, D, dtype, device, seed=A * 100 + D)
        got = norm.add_layer_norm(x, r, w, b, 1e-5, backend=backend)
        want = reference.add_layer_norm(x, r, w, b, 1e-5)
        assert got.shape == (A, D) and got.dtype == dtype
        torch.testing.assert_close(got, want, **TOL[dtype])
        if dtype == torch.float32 and A:  # the definition, spelled out in float64
            s = (x.double() + r.double())
            want64 = (s - s.mean(1, keepdim=True)) / (s.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt() \
                * w.double() + b.double()
            torch.testing.assert_close(got.double(), want64, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device,backend", NORM_BACKENDS, indirect=["backend"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_rounds_as_torch(device, backend, dtype):
    """In bf16/fp16 the kernels round as torch does (to nearest), so their error against float64
    is torch's own, not more: a cast that truncated (the interpreter's bf16 cast) would double it."""
    x, r, w, b = _case(256, 96, dtype, device, seed=11)
    want = reference.add_layer_norm(*(t.double() for t in (x, r, w, b)), 1e-5)
    err = lambda out: float((out.double() - want).norm() / want.norm())  # noqa: E731
    assert err(norm.add_layer_norm(x, r, w, b, 1e-5, backend=backend)) <= 1.1 * err(
        reference.add_layer_norm(x, r, w, b, 1e-5))


@pytest.mark.parametrize("device,backend", NORM_BACKENDS, indirect=["backend"])
@pytest.mark.parametrize("R,D,A", [(1, 1, 1), (7, 5, 0), (40, 100, 17), (300, 64, 150), (12, 768, 5)])
@pytest.mark.parametrize("at_rows", [False, True])
def test_add_layer_norm_into_writes_only_its_rows(device, backend, R, D, A, at_rows, poison):
    for dtype in (torch.float32, torch.bfloat16):
        gen = torch.Generator().manual_seed(R + D + A)
        x, r, w, b = _case(R if at_rows else A, D, dtype, device, seed=R * 7 + A)
        base = torch.randn(R, D, generator=gen).to(device, dtype)
        rows = torch.randperm(R, generator=gen)[:A].to(device)  # unsorted
        before = base.clone()
        out = norm.add_layer_norm_into_(base, x, r, w, b, 1e-5, rows, at_rows=at_rows, backend=backend)
        assert out is base
        want = before.clone()
        reference.add_layer_norm_into_(want, x, r, w, b, 1e-5, rows, at_rows)
        torch.testing.assert_close(base, want, **TOL[dtype])
        if at_rows and A:  # the definition: the rows of x and residual where each is written
            torch.testing.assert_close(base[rows], reference.add_layer_norm(x[rows], r[rows], w, b, 1e-5),
                                       **TOL[dtype])
        kept = torch.ones(R, dtype=torch.bool, device=device)
        kept[rows] = False
        assert torch.equal(base[kept], before[kept])  # the other rows untouched, bitwise


@pytest.mark.parametrize("device,backend", NORM_BACKENDS, indirect=["backend"])
def test_large_values_and_strided_inputs(device, backend):
    """Statistics of rows with a large common offset (cancellation) and non-contiguous inputs."""
    x, r, w, b = _case(6, 96, torch.float32, device, seed=3)
    x = x + 1e3
    xt = torch.randn(96, 6, device=device).t()  # strided (6, 96)
    for a in (x, xt):
        torch.testing.assert_close(norm.add_layer_norm(a, r, w, b, 1e-12, backend=backend),
                                   reference.add_layer_norm(a, r, w, b, 1e-12), atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_bad_input_is_refused_with_a_message(backend):
    x, r, w, b = _case(4, 8, torch.float32, "cpu", seed=0)
    cases = [((x, r[:, :7], w, b), ValueError, "x and residual"), ((x, r, w[:7], b), ValueError, "weight and bias"),
             ((x, r.double(), w, b), TypeError, "one floating-point dtype"),
             ((x.long(), r.long(), w.long(), b.long()), TypeError, "floating-point"),
             ((x[0], r[0], w, b), ValueError, r"\(A, D\)"), ((x, r, w, None), TypeError, "bias must be a tensor")]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            norm.add_layer_norm(*args, 1e-5, backend=backend)
    with pytest.raises(ValueError, match="eps must be > 0"):
        norm.add_layer_norm(x, r, w, b, 0.0, backend=backend)
    base = torch.zeros(5, 8)
    for rows, msg in ((torch.tensor([0, 1, 2, 5]), "out of range"), (torch.tensor([0, 1, 1, 2]), "unique"),
                      (torch.tensor([0, 1, -1, 2]), "out of range")):
        with pytest.raises(ValueError, match=msg):
            norm.add_layer_norm_into_(base, x, r, w, b, 1e-5, rows, backend=backend)
    assert torch.equal(base, torch.zeros(5, 8))  # refused before anything was written
    with pytest.raises(ValueError, match="contiguous"):
        norm.add_layer_norm_into_(torch.zeros(8, 5).t(), x, r, w, b, 1e-5, torch.arange(4), backend=backend)
    with pytest.raises(ValueError, match=r"src must be \(3, 8\)"):
        norm.add_layer_norm_into_(base, x, r, w, b, 1e-5, torch.arange(3), backend=backend)
    with pytest.raises(ValueError, match=r"with at_rows, x and residual must be like base \(5, 8\)"):
        norm.add_layer_norm_into_(base, x, r, w, b, 1e-5, torch.arange(3), at_rows=True, backend=backend)
    with pytest.raises(ValueError, match="out of range"):
        norm.add_layer_norm_into_(base, *_case(5, 8, torch.float32, "cpu", seed=0), 1e-5, torch.tensor([5]),
                                  at_rows=True, backend=backend)
    assert torch.equal(base, torch.zeros(5, 8))


def test_gradients_take_the_reference():
    """The kernels are forward only: with a gradient needed the reference runs, and its
    gradients are LayerNorm's (gradcheck in float64)."""
    x, r, w, b = (t.requires_grad_() for t in _case(3, 6, torch.float64, "cpu", seed=4))
    assert torch.autograd.gradcheck(lambda *a: norm.add_layer_norm(*a, 1e-5, backend="cpu"), (x, r, w, b))
    with torch.no_grad():
        assert norm.add_layer_norm(x, r, w, b, 1e-5, backend="cpu").grad_fn is None
    base = torch.zeros(4, 6, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="for inference"):
        norm.add_layer_norm_into_(base, x, r, w, b, 1e-5, torch.arange(3))


def test_kernel_choice():
    x = torch.zeros(2, 8)
    assert norm.kernel_backend(x, "cpu") == "cpu" and norm.kernel_backend(x, "torch") is None
    assert norm.kernel_backend(x.to(TRITON_DEVICE), "triton") == "triton"
    assert norm.kernel_backend(torch.zeros(2, 20000, device=TRITON_DEVICE), "triton") is None  # wider than a block
    assert norm.kernel_backend(x.double().to(TRITON_DEVICE), "triton") is None
    with norm.unfused():
        assert not norm.FUSED
    assert norm.FUSED


def test_custom_ops_pass_opcheck():
    """Schemas and fake tensors of the C++ ops and the Triton ops (inference only: no autograd)."""
    x, r, w, b = _case(5, 16, torch.float32, "cpu", seed=1)
    rows = torch.tensor([3, 0, 6, 1, 4])
    ns = torch.ops.adaptive_encoder
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(ns.add_layer_norm.default, (x, r, w, b, 1e-5), test_utils=utils)
    torch.library.opcheck(ns.add_layer_norm_into_.default, (torch.zeros(7, 16), x, r, w, b, 1e-5, rows),
                          test_utils=utils)
    x7, r7 = (torch.randn(7, 16) for _ in range(2))
    torch.library.opcheck(ns.add_layer_norm_into_.default, (torch.zeros(7, 16), x7, r7, w, b, 1e-5, rows, True),
                          test_utils=utils)
    torch.library.opcheck(ns.triton_add_layer_norm_into_.default,
                          tuple(a.to(TRITON_DEVICE) for a in (torch.zeros(7, 16), x7, r7, w, b))
                          + (1e-5, rows.to(TRITON_DEVICE), True), test_utils=utils)
    t = tuple(a.to(TRITON_DEVICE) for a in (x, r, w, b))
    torch.library.opcheck(ns.triton_add_layer_norm.default, (*t, 1e-5), test_utils=utils)
    if torch.cuda.is_available():  # the C++ CUDA kernels of the same two ops
        c = tuple(a.cuda() for a in (x, r, w, b))
        torch.library.opcheck(ns.add_layer_norm.default, (*c, 1e-5), test_utils=utils)
        torch.library.opcheck(ns.add_layer_norm_into_.default,
                              (torch.zeros(7, 16, device="cuda"), x7.cuda(), r7.cuda(), *c[2:], 1e-5, rows.cuda(), True),
                              test_utils=utils)
    torch.library.opcheck(ns.triton_add_layer_norm_into_.default,
                          (torch.zeros(7, 16, device=TRITON_DEVICE), *t, 1e-5, rows.to(TRITON_DEVICE)),
                          test_utils=utils)


def test_cpp_op_refuses_out_of_range_rows(cpp_errors_raise):
    """Even unchecked from Python, the C++ op never writes outside base."""
    x, r, w, b = _case(2, 4, torch.float32, "cpu", seed=2)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.adaptive_encoder.add_layer_norm_into_(torch.zeros(3, 4), x, r, w, b, 1e-5, torch.tensor([0, 3]))
    with pytest.raises(RuntimeError, match="with at_rows, x and residual must have base's rows"):
        torch.ops.adaptive_encoder.add_layer_norm_into_(torch.zeros(3, 4), x, r, w, b, 1e-5, torch.tensor([0]), True)
    x3, r3 = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.adaptive_encoder.add_layer_norm_into_(torch.zeros(3, 4), x3, r3, w, b, 1e-5, torch.tensor([3]), True)


@pytest.mark.parametrize("kernel", ["triton"] + (["cuda-cpp"] if torch.cuda.is_available() else []))
def test_gpu_kernels_drop_out_of_range_rows(kernel):
    """Unchecked, the Triton kernel (and on a GPU the C++ CUDA one, which cannot check without a
    sync) masks a destination row outside base instead of writing it."""
    if kernel == "cuda-cpp":
        with norm.cuda_cpp():
            return _drops_out_of_range_rows("cuda")
    _drops_out_of_range_rows("triton")


def _drops_out_of_range_rows(backend):
    x, r, w, b = _case(3, 8, torch.float32, TRITON_DEVICE, seed=6)
    base = torch.zeros(4, 8, device=TRITON_DEVICE)
    norm.add_layer_norm_into_(base, x, r, w, b, 1e-5, torch.tensor([1, 9, -2], device=TRITON_DEVICE),
                              backend=backend, check=False)
    torch.testing.assert_close(base[1], F.layer_norm(x[0] + r[0], (8,), w, b, 1e-5))
    assert torch.equal(base[[0, 2, 3]], torch.zeros(3, 8, device=TRITON_DEVICE))
    # at_rows: an out-of-range row is neither read (x has base's rows) nor written
    x4, r4 = (t.to(TRITON_DEVICE) for t in _case(4, 8, torch.float32, "cpu", seed=7)[:2])
    base.zero_()
    norm.add_layer_norm_into_(base, x4, r4, w, b, 1e-5, torch.tensor([2, 4, -1], device=TRITON_DEVICE),
                              at_rows=True, backend=backend, check=False)
    torch.testing.assert_close(base[2], F.layer_norm(x4[2] + r4[2], (8,), w, b, 1e-5))
    assert torch.equal(base[[0, 1, 3]], torch.zeros(3, 8, device=TRITON_DEVICE))


def test_encoder_closes_blocks_with_the_fused_kernel(monkeypatch):
    """Inference with the Triton backend: both closing steps of every layer run the fused kernel,
    the last one of a compact layer writing into the state, with the same result as unfused;
    not with gradients, not under norm.unfused(), not with the C++ backend (slower on CPU)."""
    from transformers import BertModel

    from adaptive_encoder import AdaptiveEncoder
    from conftest import small_bert_config

    torch.manual_seed(0)
    bert = BertModel(small_bert_config(layers=3)).eval().to(TRITON_DEVICE)
    x = torch.randn(2, 9, 64, device=TRITON_DEVICE)
    depths = torch.tensor([[3, 1, 2, 3, 1, 1, 3, 2, 2], [1, 1, 3, 2, 2, 3, 1, 1, 3]], device=TRITON_DEVICE)
    mask = torch.ones(2, 9, dtype=torch.bool, device=TRITON_DEVICE)
    calls = []
    real = norm.unchecked
    monkeypatch.setattr(norm, "unchecked", lambda k, *a: calls.append((k, a[5] is not None)) or real(k, *a))
    enc = AdaptiveEncoder.from_model(bert, backend="triton")
    with torch.no_grad():
        fused = enc(x, depths, mask).last_hidden_state
        # layer 1 on every token (2 closing steps), layers 2 and 3 compact (the last step into the state)
        assert calls == [("triton", into) for into in (False, False, False, True, False, True)]
        calls.clear()
        with norm.unfused():
            unfused = enc(x, depths, mask).last_hidden_state
        AdaptiveEncoder.from_model(bert.cpu(), backend="cpu")(x.cpu(), depths.cpu(), mask.cpu())
    enc.to(TRITON_DEVICE)(x, depths, mask)  # gradients enabled: the reference path
    assert calls == []
    torch.testing.assert_close(fused, unfused, atol=2e-5, rtol=2e-5)


def test_encoder_fuses_every_size_with_the_cuda_kernel(monkeypatch):
    """With norm.CUDA_CPP (the C++ CUDA kernel, launched from C++) the eager path fuses below
    norm.EAGER_ROWS too, which holds the Triton kernel back from small forwards; with the Triton
    kernel it does not. Simulated on CPU: kernel_backend answers "cuda" for backend "cpu" (the
    op of that name then runs its CPU kernel, the same arithmetic)."""
    from transformers import BertModel

    from adaptive_encoder import AdaptiveEncoder
    from conftest import small_bert_config

    torch.manual_seed(0)
    bert = BertModel(small_bert_config(layers=3)).eval()
    x = torch.randn(2, 9, 64)
    depths = torch.tensor([[3, 1, 2, 3, 1, 1, 3, 2, 2], [1, 1, 3, 2, 2, 3, 1, 1, 3]])
    calls = []
    real = norm.unchecked
    monkeypatch.setattr(norm, "unchecked", lambda k, *a: calls.append((k, a[5] is not None)) or real(k, *a))
    enc = AdaptiveEncoder.from_model(bert, backend="cpu")
    with torch.no_grad(), norm.eager_rows(10 ** 6):
        unfused = enc(x, depths).last_hidden_state  # CPU tensors: torch's add and LayerNorm
        monkeypatch.setattr(norm, "kernel_backend", lambda t, b: "triton")
        enc(x, depths)  # the Triton kernel below EAGER_ROWS: not fused
        assert calls == []
        monkeypatch.setattr(norm, "kernel_backend", lambda t, b: "cuda")
        fused = enc(x, depths).last_hidden_state
    # layer 1 on every token (2 closing steps), layers 2 and 3 compact (the last step into the state)
    assert calls == [("cuda", into) for into in (False, False, False, True, False, True)]
    torch.testing.assert_close(fused, unfused, atol=2e-5, rtol=2e-5)
