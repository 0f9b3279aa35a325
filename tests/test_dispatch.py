"""The direct path (ops.direct / ops.call): kernels called without the dispatcher in plain eager
code, through it wherever something wants to see the ops; in-place ops mark their tensor changed
either way."""
import contextlib

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from adaptive_encoder import AdaptiveEncoder, attention, norm, ops
from conftest import DEVICE_BACKENDS, TRITON_DEVICE


class _PassThrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _FunctionPassThrough(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _Sub(torch.Tensor):
    pass


def test_direct_holds_only_in_plain_eager_code():
    x = torch.randn(3, 4)
    weight = torch.nn.Parameter(torch.ones(4))
    assert ops.direct(x)
    with torch.no_grad():
        assert ops.direct(x, weight)  # a parameter is a plain tensor; nothing will be recorded
    assert not ops.direct(torch.ones(2, requires_grad=True))  # autograd would record the op
    assert not ops.direct(x, x.as_subclass(_Sub))
    with ops.via_dispatcher():
        assert not ops.direct(x)
    assert ops.direct(x)  # restored
    with _PassThrough():
        assert not ops.direct(x)
    with _FunctionPassThrough():
        assert not ops.direct(x)
    seen = []
    torch.func.vmap(lambda row: seen.append(ops.direct(row)) or row)(x)
    torch.func.jvp(lambda t: seen.append(ops.direct(t)) or t, (x,), (x,))
    with torch.autograd.forward_ad.dual_level():
        seen.append(ops.direct(torch.autograd.forward_ad.make_dual(x, x)))
    assert seen == [False, False, False]
    # Inside a traced region it is constant False (no graph break: fullgraph would raise).
    traced = torch.compile(lambda t: t + int(ops.direct(t)), backend="eager", fullgraph=True)
    torch.testing.assert_close(traced(x), x)


def test_call_takes_the_kernel_directly_or_the_op():
    took = []
    op = lambda t: took.append("op") or t  # noqa: E731
    kernel = lambda t: took.append("kernel") or t  # noqa: E731
    x = torch.randn(2)
    ops.call(op, kernel, x, tensors=(x,))
    with ops.via_dispatcher():
        ops.call(op, kernel, x, tensors=(x,))
    with _PassThrough():
        ops.call(op, kernel, x, tensors=(x,))
    assert took == ["kernel", "op", "op"]


def _counting(monkeypatch, module, name, calls):
    op = getattr(module, name)

    def counted(*args):
        calls[name] = calls.get(name, 0) + 1
        return op(*args)
    monkeypatch.setattr(module, name, counted)


def test_encoder_reaches_the_triton_kernels_without_the_dispatcher(monkeypatch):
    """In eager inference the custom ops are never called (their kernels are), and the output is
    the same bit for bit as through them; with via_dispatcher() every kernel call goes through
    them: attention once a layer, the fused LayerNorm twice (the last one into the state in a
    compact layer)."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                     max_position_embeddings=16)
    enc = AdaptiveEncoder.from_model(BertModel(cfg).eval(), backend="triton").to(TRITON_DEVICE)
    x = torch.randn(2, 6, 32, device=TRITON_DEVICE)
    depths = torch.tensor([[2, 1, 2, 1, 1, 2], [1, 2, 2, 2, 1, 1]], device=TRITON_DEVICE)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], dtype=torch.bool, device=TRITON_DEVICE)
    calls = {}
    _counting(monkeypatch, attention, "_triton_op", calls)
    for name in ("_triton_add_layer_norm", "_triton_add_layer_norm_into_"):
        _counting(monkeypatch, norm, name, calls)
    with torch.inference_mode():
        direct = enc(x, depths, mask).last_hidden_state
        assert calls == {}
        with ops.via_dispatcher():
            dispatched = enc(x, depths, mask).last_hidden_state
    # Layer 1: every real token active (full state); layer 2: compact (its last norm writes into the state).
    assert calls == {"_triton_op": 2, "_triton_add_layer_norm": 3, "_triton_add_layer_norm_into_": 1}
    torch.testing.assert_close(direct, dispatched, rtol=0, atol=0)


def _in_place_calls(backend, device):
    base = torch.zeros(5, 16, device=device)
    src = torch.ones(2, 16, device=device)
    rows = torch.tensor([0, 3], device=device)
    w, b = torch.ones(16, device=device), torch.zeros(16, device=device)
    return base, {
        "scatter_": lambda: ops.scatter_(base, src, rows, backend=backend),
        "add_layer_norm_into_": lambda: norm.add_layer_norm_into_(base, src, src * 2, w, b, 1e-5, rows,
                                                                  backend=backend),
    }


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("way", ["direct", "dispatcher"])
def test_in_place_ops_mark_their_tensor_changed(device, backend, way):
    """A tensor autograd saved and an op then overwrote in place: backward must refuse it, as it
    does after torch's own in-place ops, not compute a gradient from the new values. Our C++
    ops have no ADInplaceOrView kernel and called directly neither have the Triton ones, so the
    library bumps the version counter itself (ops.bump_version)."""
    for name in ("scatter_", "add_layer_norm_into_"):
        base, calls = _in_place_calls(backend, device)
        w = torch.ones(5, 16, device=device, requires_grad=True)
        loss = (w * base).sum()  # saves base for backward
        before = base._version
        with ops.via_dispatcher() if way == "dispatcher" else contextlib.nullcontext():
            calls[name]()
        assert base._version > before, f"{name} on {backend}: version counter not bumped"
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()
        with torch.inference_mode():  # an inference tensor has no counter: nothing to bump, no error
            base, calls = _in_place_calls(backend, device)
            calls[name]()


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_gather_and_scatter_give_the_same_either_way(device, backend):
    """The direct path (under no_grad the C++ ops run below their autograd kernel) against the
    dispatcher's, with gradients enabled (then both go through autograd) and without."""
    x = torch.randn(7, 8, device=device, requires_grad=True)
    rows = torch.tensor([5, 0, 2], device=device)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            got = ops.gather(x, rows, backend=backend)
            back = ops.scatter(x, got * 2, rows, backend=backend)
            with ops.via_dispatcher():
                want = ops.gather(x, rows, backend=backend)
                want_back = ops.scatter(x, want * 2, rows, backend=backend)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        torch.testing.assert_close(back, want_back, rtol=0, atol=0)
        assert (got.grad_fn is not None) == grad and (back.grad_fn is not None) == grad
    back.sum().backward()
    assert x.grad is not None
