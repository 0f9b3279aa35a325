"""Varlen attention (compact queries vs all keys of their sequence): Triton kernel vs reference."""
import pytest
import torch
import torch.nn.functional as F

from adaptive_encoder import attention
from adaptive_encoder.attention import varlen_attention
from conftest import DEVICE_BACKENDS, DEVICES, TRITON_DEVICE


def _case(B, max_len, H, Dh, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    k_len = torch.randint(1, max_len + 1, (B,), generator=gen)
    q_len = torch.minimum(torch.randint(0, max_len + 1, (B,), generator=gen), k_len)  # 0 allowed
    cu_q = torch.cat([torch.zeros(1, dtype=torch.long), q_len.cumsum(0)]).to(device)
    cu_k = torch.cat([torch.zeros(1, dtype=torch.long), k_len.cumsum(0)]).to(device)
    q = torch.randn(int(q_len.sum()), H, Dh, generator=gen).to(device, dtype)
    k = torch.randn(int(k_len.sum()), H, Dh, generator=gen).to(device, dtype)
    v = torch.randn(int(k_len.sum()), H, Dh, generator=gen).to(device, dtype)
    return q, k, v, cu_q, cu_k, int(q_len.max()), int(k_len.max())


def _per_sequence_sdpa(q, k, v, cu_q, cu_k):
    """The definition, one sequence at a time, in float64."""
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    for b in range(cu_q.numel() - 1):
        qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        if qs.start == qs.stop:
            continue
        o = F.scaled_dot_product_attention(q[qs].double().transpose(0, 1), k[ks].double().transpose(0, 1),
                                           v[ks].double().transpose(0, 1))
        out[qs] = o.transpose(0, 1)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("B,max_len,H,Dh", [(1, 1, 1, 16), (3, 9, 2, 64), (4, 37, 2, 64), (2, 70, 1, 32)])
def test_triton_and_reference_match_per_sequence_sdpa(device, dtype, tol, B, max_len, H, Dh, poison):
    if device == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # CPU SDPA half support varies; the kernel's fp16 path is the bf16 one
    q, k, v, cu_q, cu_k, mq, mk = _case(B, max_len, H, Dh, dtype, device, seed=B * 100 + max_len)
    expect = _per_sequence_sdpa(q, k, v, cu_q, cu_k)
    backends = [b for d, b in DEVICE_BACKENDS if d == device and b in ("torch", "triton", "cpu")]
    assert "torch" in backends and ("triton" in backends or device != TRITON_DEVICE)
    if "triton" in backends:
        with torch.no_grad():
            assert attention._triton_applies(q, 0.0)  # the kernel itself runs below, no fallback
    for backend in backends:
        with torch.no_grad():
            out = varlen_attention(q, k, v, cu_q, cu_k, mq, mk, backend=backend)
        assert out.dtype == dtype and out.shape == q.shape
        assert torch.isfinite(out).all(), backend
        if q.numel():
            err = (out.double() - expect).norm() / expect.norm()
            assert err < tol, (backend, float(err))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_rows_in_no_sequence_are_ignored(device, with_bias, poison):
    """Graph mode pads q and k with rows past the last offset (in no sequence) and bounds
    max_q / max_k by the longest sequence, not by the row count: every backend gives the real
    rows exactly what it gives without the extra rows, whatever those hold (NaN here), and
    the reference gives zeros on them."""
    q, k, v, cu_q, cu_k, mq, mk = _case(5, 12, 2, 16, torch.float32, device, seed=11)
    extra_q, extra_k = 37, 23  # more than max_q / max_k: a padded tail may be the longest run
    nan = float("nan")
    qp = torch.cat([q, torch.full((extra_q, *q.shape[1:]), nan, device=device)])
    kp = torch.cat([k, torch.full((extra_k, *k.shape[1:]), nan, device=device)])
    vp = torch.cat([v, torch.full((extra_k, *v.shape[1:]), nan, device=device)])
    bias = padded_bias = None
    if with_bias:
        gen = torch.Generator().manual_seed(12)
        dist = torch.randn(2 * 12 - 1, 2, generator=gen).to(device)
        pos = lambda cu: torch.cat([torch.arange(int(cu[b + 1] - cu[b])) for b in range(5)]).to(device)  # noqa: E731
        bias = (dist, pos(cu_q), pos(cu_k))
        padded_bias = (dist, F.pad(bias[1], (0, extra_q)), F.pad(bias[2], (0, extra_k)))
    backends = [b for d, b in DEVICE_BACKENDS if d == device and b in ("torch", "triton", "cpu")]
    for backend in backends:
        with torch.no_grad():
            want = varlen_attention(q, k, v, cu_q, cu_k, mq, mk, backend=backend, bias=bias)
            got = varlen_attention(qp, kp, vp, cu_q, cu_k, mq, mk, backend=backend, bias=padded_bias)
        assert got.shape == qp.shape
        torch.testing.assert_close(got[:q.shape[0]], want, atol=1e-6, rtol=1e-5, msg=backend)
        if backend == "torch":
            assert torch.equal(got[q.shape[0]:], torch.zeros_like(got[q.shape[0]:]))
    one = (q[:4], k[:6], v[:6], torch.tensor([0, 4], device=device), torch.tensor([0, 6], device=device))
    with torch.no_grad():  # one sequence with a tail: the reference's one-sequence shortcut must not take it
        want = varlen_attention(*one, 4, 6, backend="torch")
        got = varlen_attention(torch.cat([one[0], qp[-3:]]), torch.cat([one[1], kp[-2:]]),
                               torch.cat([one[2], vp[-2:]]), *one[3:], 4, 6, backend="torch")
    torch.testing.assert_close(got[:4], want)


def test_triton_reads_column_slices_of_a_fused_projection_in_place():
    """q, k, v as the encoder makes them: column slices of one (A, 3*H*Dh) GEMM output, row
    stride 3*H*Dh. The kernel reads them as they are (no copy) and matches the reference."""
    from adaptive_encoder.kernels.attention import _rows

    _, _, _, cu_q, cu_k, mq, mk = _case(3, 9, 2, 16, torch.float32, TRITON_DEVICE, seed=21)
    A = int(cu_k[-1])
    cu_q = cu_k  # every token a query, as at full depth
    fused = torch.randn(A, 3 * 2 * 16, generator=torch.Generator().manual_seed(22)).to(TRITON_DEVICE)
    q, k, v = (t.reshape(A, 2, 16) for t in fused.chunk(3, dim=-1))
    assert not q.is_contiguous() and all(_rows(t).data_ptr() == t.data_ptr() for t in (q, k, v))
    with torch.no_grad():
        got = varlen_attention(q, k, v, cu_q, cu_k, mk, mk, backend="triton")
        want = varlen_attention(q.contiguous(), k.contiguous(), v.contiguous(), cu_q, cu_k, mk, mk, backend="torch")
    assert got.is_contiguous()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    odd = torch.randn(A, 16, 2, device=TRITON_DEVICE).transpose(1, 2)  # heads not packed: copied first
    assert _rows(odd).is_contiguous() and _rows(odd).data_ptr() != odd.data_ptr()


def test_reference_handles_gradients_and_triton_is_not_used_for_them():
    q, k, v, cu_q, cu_k, mq, mk = _case(3, 8, 2, 16, torch.float64, TRITON_DEVICE, seed=3)
    q.requires_grad_()
    k.requires_grad_()
    v.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, c: varlen_attention(a, b, c, cu_q, cu_k, mq, mk, backend="triton"), (q, k, v))


def test_bad_shapes_raise():
    q = torch.randn(3, 2, 16)
    with pytest.raises(ValueError, match=r"q \(Aq,H,Dh\)"):
        varlen_attention(q, torch.randn(4, 2, 8), torch.randn(4, 2, 8), torch.tensor([0, 3]), torch.tensor([0, 4]), 3, 4)
    with pytest.raises(ValueError, match="cu_q and cu_k"):
        varlen_attention(q, torch.randn(4, 2, 16), torch.randn(4, 2, 16), torch.tensor([0, 3]),
                         torch.tensor([0, 2, 4]), 3, 4)


def test_triton_float32_dot_precision_follows_torch(monkeypatch):
    """Triton's default float32 dot is TF32 (1.3e-3 error on an H200, 2026-11-26): the kernel
    uses IEEE float32 unless the user allowed TF32 for torch's own float32 matmuls."""
    from adaptive_encoder.kernels.attention import dot_precision

    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert dot_precision(torch.float32) == "ieee"
        torch.set_float32_matmul_precision("high")
        assert dot_precision(torch.float32) == "tf32"
        assert dot_precision(torch.bfloat16) == "tf32"  # no effect off float32: the native path
    finally:
        torch.set_float32_matmul_precision(old)


@pytest.mark.parametrize("with_bias", [False, True])
def test_triton_attention_op_passes_opcheck(with_bias):
    """The kernel is registered as a custom op (schema, fake tensor, no autograd: inference only)."""
    q, k, v, cu_q, cu_k, mq, mk = _case(3, 9, 2, 16, torch.float32, TRITON_DEVICE, seed=5)
    dist = q_pos = k_pos = None
    if with_bias:
        gen = torch.Generator().manual_seed(6)
        dist = torch.randn(2 * 9 - 1, 2, generator=gen).to(TRITON_DEVICE)
        q_pos = torch.cat([torch.arange(int(cu_q[b + 1] - cu_q[b])) for b in range(3)]).to(TRITON_DEVICE)
        k_pos = torch.cat([torch.arange(int(cu_k[b + 1] - cu_k[b])) for b in range(3)]).to(TRITON_DEVICE)
    torch.library.opcheck(torch.ops.adaptive_encoder.triton_varlen_attention.default,
                          (q, k, v, cu_q, cu_k, mq, mk, 0.25, dist, q_pos, k_pos),
                          test_utils=("test_schema", "test_faketensor"))


def test_cpp_attention_runs_without_padding_and_passes_opcheck(monkeypatch):
    """On CPU tensors the default backend is the C++ op (no call into the padded reference);
    with gradients needed the reference runs. Schema and fake tensor checked by opcheck."""
    from adaptive_encoder import reference

    assert attention._HAS_CPP, "the C++ extension lacks varlen_attention: rebuild it"
    q, k, v, cu_q, cu_k, mq, mk = _case(4, 37, 2, 64, torch.float32, "cpu", seed=9)
    expect = _per_sequence_sdpa(q, k, v, cu_q, cu_k)
    calls = []
    real = reference.varlen_attention
    monkeypatch.setattr(reference, "varlen_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    with torch.no_grad():
        out = varlen_attention(q, k, v, cu_q, cu_k, mq, mk)
    assert calls == [] and torch.allclose(out.double(), expect, atol=1e-5)
    q.requires_grad_()
    varlen_attention(q, k, v, cu_q, cu_k, mq, mk).sum().backward()
    assert calls == [1] and q.grad is not None
    torch.library.opcheck(torch.ops.adaptive_encoder.varlen_attention.default,
                          (q.detach(), k, v, cu_q, cu_k, 0.125, None, None, None),
                          test_utils=("test_schema", "test_faketensor"))


def test_cpp_attention_refuses_bad_offsets(cpp_errors_raise):
    q, k, v = torch.randn(3, 2, 16), torch.randn(4, 2, 16), torch.randn(4, 2, 16)
    op = torch.ops.adaptive_encoder.varlen_attention
    with pytest.raises(RuntimeError, match="cu_k must run from 0 to at most 4"):
        op(q, k, v, torch.tensor([0, 3]), torch.tensor([0, 5]), 0.25, None, None, None)
    with pytest.raises(RuntimeError, match="non-decreasing"):
        op(q, k, v, torch.tensor([0, 2, 1, 3]), torch.tensor([0, 1, 2, 4]), 0.25, None, None, None)
    with pytest.raises(RuntimeError, match="has queries but no keys"):
        op(q, k, v, torch.tensor([0, 3, 3]), torch.tensor([0, 0, 4]), 0.25, None, None, None)


def test_flash_route_plumbing(monkeypatch):
    """attention.FLASH (CUDA-only: PyTorch's FlashAttention-2 varlen forward) checked here with the
    aten op stood in for by the reference on the same arguments: the route passes int32 offsets,
    the bounds and the scale, returns the op's first output, takes only calls without a bias, and
    is off unless switched on. (On a GPU bench/gpu_check.py compares the real op.)"""
    from adaptive_encoder import reference

    calls = []

    def fake(q, k, v, cq, ck, max_q, max_k, dropout_p, causal, debug, scale):
        assert cq.dtype == ck.dtype == torch.int32 and dropout_p == 0.0 and not causal and not debug
        calls.append((max_q, max_k, scale))
        return (reference.varlen_attention(q, k, v, cq.long(), ck.long(), max_q, max_k, scale=scale), None)

    monkeypatch.setattr(attention, "_aten_flash", fake)
    monkeypatch.setattr(attention, "_flash_applies", lambda q, p, bias: attention.FLASH and bias is None and p == 0)
    gen = torch.Generator().manual_seed(0)
    cu = torch.tensor([0, 3, 7])
    q, k, v = (torch.randn(7, 2, 16, generator=gen) for _ in range(3))
    want = reference.varlen_attention(q, k, v, cu, cu, 4, 4, scale=0.3)
    with torch.inference_mode():
        varlen_attention(q, k, v, cu, cu, 4, 4, scale=0.3, backend="cuda")
        assert calls == []  # off by default
        with attention.flash():
            got = varlen_attention(q, k, v, cu, cu, 4, 4, scale=0.3, backend="cuda")
            assert calls == [(4, 4, 0.3)]
            bias = (torch.zeros(7, 2), torch.arange(7) % 4, torch.arange(7) % 4)
            varlen_attention(q, k, v, cu, cu, 4, 4, scale=0.3, backend="cuda", bias=bias)
            assert len(calls) == 1  # a position bias: not FlashAttention's
    torch.testing.assert_close(got, want)
    assert not attention.FLASH  # restored
