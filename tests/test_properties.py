"""Property-based tests (hypothesis): random shapes, dtypes, paddings, depths and row sets for
plan / gather / scatter / varlen attention / encoder, every backend against the reference,
bad inputs included. Derandomized with no example database, so CI runs the same examples
every time and stays within its time."""
from contextlib import nullcontext

import pytest
import torch

pytest.importorskip("hypothesis", reason="hypothesis (a dev dependency) is not installed here")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from adaptive_encoder import AdaptiveEncoder, graphs, ops, reference
from adaptive_encoder.attention import varlen_attention
from adaptive_encoder.dense import masked_forward
from conftest import DEVICE_BACKENDS, TRITON_DEVICE, small_bert_config

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.uint8]


@st.composite
def plan_inputs(draw, max_b=4, max_t=40, max_l=12):
    B = draw(st.integers(1, max_b))
    T = draw(st.integers(1, max_t))
    L = draw(st.integers(1, max_l))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    depths = torch.randint(0, L + 1, (B, T), generator=gen)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = torch.arange(T)[None] < lengths[:, None]
    if draw(st.booleans()):  # padding anywhere, not only at the end
        mask = torch.rand(B, T, generator=gen) < 0.7
    return depths, mask, L


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@SETTINGS
@given(inp=plan_inputs())
def test_plan_rows_match_reference_in_range_and_unique(device, backend, inp):
    depths, mask, L = inp
    depths, mask = depths.to(device), mask.to(device)
    rows, offsets = ops.plan(depths, mask, L, backend=backend)
    ref_rows, ref_offsets = reference.plan(depths, mask, L)
    assert torch.equal(rows, ref_rows) and torch.equal(offsets, ref_offsets)
    B, T = depths.shape
    for n in range(L):  # each layer's rows: in range, unique, ascending, exactly the active tokens
        r = rows[offsets[n * B]:offsets[(n + 1) * B]]
        assert ((r >= 0) & (r < B * T)).all()
        assert r.unique().numel() == r.numel() and (r.diff() > 0).all()
        active = (mask & (depths > n)).reshape(-1)
        assert torch.equal(r, active.nonzero().squeeze(1))


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@SETTINGS
@given(inp=plan_inputs())
def test_plan_state_rows_index_the_compact_state(device, backend, inp):
    """The encoder's state holds the real tokens in order (key_rows); each layer's state_rows
    pick exactly that layer's rows from it: key_rows[state_rows] == rows, in [0, K), ascending."""
    from adaptive_encoder.plan import make_plan

    depths, mask, L = inp
    if (mask.sum(1) == 0).any():
        mask[:, 0] = True  # every sequence needs a real token
    plan = make_plan(depths.to(device), mask.to(device), L, backend=backend)
    K = int(mask.sum())
    key_rows = torch.arange(K, device=device) if plan.key_rows is None else plan.key_rows
    assert plan.key_rows is not None or plan.state_rows is plan.rows
    assert plan.first_real is bool(mask[:, 0].all())  # what the patched model's position-0 check reads
    for n in range(plan.n_max):
        lp = plan.layer(n)
        assert ((lp.state_rows >= 0) & (lp.state_rows < K)).all() and (lp.state_rows.diff() > 0).all()
        assert torch.equal(key_rows[lp.state_rows], lp.rows)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@SETTINGS
@given(inp=plan_inputs())
def test_full_depth_plan_from_the_mask_equals_the_plan_op(device, backend, inp):
    """depths None: the plan made from the mask alone (no plan op, no depth statistics) is the
    one the plan op makes for depth N on every real token, field for field."""
    from adaptive_encoder.plan import make_plan

    _, mask, L = inp
    if (mask.sum(1) == 0).any():
        mask[:, 0] = True
    mask = mask.to(device)
    fast, general = make_plan(None, mask, L), make_plan(torch.where(mask, L, 0), mask, L, backend=backend)
    for name in ("rows", "offsets", "cu_k", "key_rows", "state_rows", "cu_q_table"):
        a, b = getattr(fast, name), getattr(general, name)
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), name
    for name in ("layer_counts", "layer_max_q", "max_k", "num_real", "n_max", "num_layers", "batch", "first_real"):
        assert getattr(fast, name) == getattr(general, name), name
    assert fast.first_real is bool(mask[:, 0].all())
    assert (fast.state_rows is fast.rows) == (general.state_rows is general.rows)


@SETTINGS
@given(inp=plan_inputs())
def test_plan_moves_in_one_buffer(inp):
    """Plan.to: every tensor of a host plan arrives as a view of one moved buffer, the same
    values, and each layer's view of it the same as the original's. The values through
    packed_to (CPU to CPU: the transfer is the identity); the structure on the meta device."""
    from adaptive_encoder.plan import make_plan, packed_to

    depths, mask, L = inp
    if (mask.sum(1) == 0).any():
        mask[:, 0] = True
    plan = make_plan(depths, mask, L, backend="cpu")
    assert plan.to("cpu") is plan
    names = ["rows", "offsets", "cu_k", "key_rows", "state_rows"]
    tensors = [getattr(plan, k) for k in names if getattr(plan, k) is not None] + [plan.cu_q_table.reshape(-1)]
    back = packed_to(tensors, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(tensors, back))
    assert len({t.untyped_storage().data_ptr() for t in back}) == 1
    moved = plan.to("meta")
    for k in names:
        orig, new = getattr(plan, k), getattr(moved, k)
        assert (orig is None) == (new is None)
        if new is not None:
            assert new.device.type == "meta" and new.shape == orig.shape and new.dtype == orig.dtype
    assert (moved.state_rows is moved.rows) == (plan.state_rows is plan.rows)
    assert moved.cu_q_table.shape == plan.cu_q_table.shape and moved.cu_q_table.device.type == "meta"
    for n in range(plan.n_max):
        a, b = plan.layer(n), moved.layer(n)
        assert (a.count, a.max_q, a.rows.shape, a.state_rows.shape, a.cu_q.shape) == \
            (b.count, b.max_q, b.rows.shape, b.state_rows.shape, b.cu_q.shape)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@SETTINGS
@given(inp=plan_inputs(), shift=st.sampled_from([-1, 1]))
def test_plan_refuses_out_of_range_depths_naming_where(device, backend, inp, shift):
    depths, mask, L = inp
    b, t = depths.shape[0] - 1, depths.shape[1] - 1
    depths[b, t] = -1 if shift < 0 else L + 1
    with pytest.raises(ValueError, match=rf"at \(batch {b}, position {t}\)"):
        ops.plan(depths.to(device), mask.to(device), L, backend=backend)


@st.composite
def row_inputs(draw):
    R = draw(st.integers(0, 300))
    D = draw(st.sampled_from([1, 3, 8, 33, 100, 384, 1030]))
    A = draw(st.integers(0, R))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(R, D, generator=gen) * 50).to(dtype)
    rows = torch.randperm(R, generator=gen)[:A]  # unique, any order
    src = (torch.randn(A, D, generator=gen) * 50).to(dtype)
    return x, rows, src


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@SETTINGS
@given(inp=row_inputs())
def test_gather_scatter_bitwise_equal_reference(device, backend, inp, poison):
    x, rows, src = (t.to(device) for t in inp)
    assert torch.equal(ops.gather(x, rows, backend=backend), reference.gather(x, rows))
    assert torch.equal(ops.scatter(x, src, rows, backend=backend), reference.scatter(x, src, rows))


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@SETTINGS
@given(inp=row_inputs(), bad=st.integers(-1000, 1000), dup=st.booleans())
def test_gather_scatter_refuse_bad_rows(device, backend, inp, bad, dup):
    x, rows, src = (t.to(device) for t in inp)
    R = x.shape[0]
    if dup and rows.numel() >= 2:  # a repeated row: fine for gather, refused by scatter
        rows = rows.clone()
        rows[-1] = rows[0]
        with pytest.raises(ValueError, match="unique"):
            ops.scatter(x, src, rows, backend=backend)
        return
    if 0 <= bad < R:
        bad = R + abs(bad)  # make it out of range
    rows = torch.cat([rows, torch.tensor([bad], device=device)])
    src = torch.cat([src, src[:1] if src.numel() else torch.zeros(1, x.shape[1], dtype=x.dtype, device=device)])
    with pytest.raises(ValueError, match=f"row index {bad} out of range"):
        ops.gather(x, rows, backend=backend)
    with pytest.raises(ValueError, match=f"row index {bad} out of range"):
        ops.scatter(x, src, rows, backend=backend)


@st.composite
def attention_inputs(draw):
    B = draw(st.integers(1, 3))
    H = draw(st.sampled_from([1, 2, 4]))
    Dh = draw(st.sampled_from([16, 32, 64]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    k_len = torch.randint(1, 70, (B,), generator=gen)
    q_len = torch.minimum(k_len, torch.randint(0, 70, (B,), generator=gen))  # queries: a subset of the keys
    cu_k = torch.cat([torch.zeros(1, dtype=torch.int64), k_len.cumsum(0)])
    cu_q = torch.cat([torch.zeros(1, dtype=torch.int64), q_len.cumsum(0)])
    q = torch.randn(int(cu_q[-1]), H, Dh, generator=gen)
    k = torch.randn(int(cu_k[-1]), H, Dh, generator=gen)
    v = torch.randn(int(cu_k[-1]), H, Dh, generator=gen)
    return q, k, v, cu_q, cu_k, int(q_len.max()), int(k_len.max())


def _per_sequence_attention(q, k, v, cu_q, cu_k, bias=None):
    """float64, one sequence at a time: the definition. bias: (dist (2P-1,H), q_pos, k_pos)."""
    out = torch.empty(q.shape, dtype=torch.float64)
    for b in range(cu_q.numel() - 1):
        qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        s = torch.einsum("qhd,khd->hqk", q[qs].double(), k[ks].double()) * q.shape[-1] ** -0.5
        if bias is not None:
            dist, q_pos, k_pos = bias
            P = (dist.shape[0] + 1) // 2
            s = s + dist.double()[k_pos[ks][None, :] - q_pos[qs][:, None] + P - 1].permute(2, 0, 1)
        out[qs] = torch.einsum("hqk,khd->qhd", s.softmax(-1), v[ks].double())
    return out


def _run_attention(backend, q, k, v, cu_q, cu_k, *args, bias=None):
    """varlen_attention where `backend` runs (Triton: the GPU if there is one, else the
    interpreter on CPU), the result back on CPU for the float64 definition."""
    dev = TRITON_DEVICE if backend == "triton" else "cpu"
    to = (lambda ts: tuple(t.to(dev) for t in ts))
    bias = None if bias is None else to(bias)
    return varlen_attention(*to((q, k, v, cu_q, cu_k)), *args, backend=backend, bias=bias).cpu()


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(inp=attention_inputs())
def test_varlen_attention_matches_per_sequence_definition(backend, inp):
    q, k, v, cu_q, cu_k, max_q, max_k = inp
    with torch.no_grad():
        out = _run_attention(backend, q, k, v, cu_q, cu_k, max_q, max_k)
    torch.testing.assert_close(out.double(), _per_sequence_attention(q, k, v, cu_q, cu_k), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("T", [1500, 4096])
def test_triton_attention_tiles_long_sequences(T):
    """Under the interpreter the blocks are capped (a whole-sequence block would exceed
    Triton's 2**20-element limit from T = 1024 on): a 4096-token sequence runs and is right."""
    gen = torch.Generator().manual_seed(T)
    H, Dh = 1, 16
    k = torch.randn(T, H, Dh, generator=gen)
    v = torch.randn(T, H, Dh, generator=gen)
    q_rows = torch.arange(0, T, 3)  # a compact subset of the tokens are queries
    q = torch.randn(T, H, Dh, generator=gen)[q_rows]
    cu_q = torch.tensor([0, q.shape[0]])
    cu_k = torch.tensor([0, T])
    with torch.no_grad():
        out = _run_attention("triton", q, k, v, cu_q, cu_k, q.shape[0], T)
    torch.testing.assert_close(out.double(), _per_sequence_attention(q, k, v, cu_q, cu_k), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(inp=attention_inputs(), seed=st.integers(0, 1000))
def test_varlen_attention_with_relative_bias_matches_definition(backend, inp, seed):
    """MPNet-style bias by (key - query) position: compact queries are any subset of the keys."""
    q, k, v, cu_q, cu_k, max_q, max_k = inp
    gen = torch.Generator().manual_seed(seed)
    P, H = 80, q.shape[1]
    dist = torch.randn(2 * P - 1, H, generator=gen)
    k_pos = torch.cat([torch.randperm(P, generator=gen)[:int(n)].sort().values for n in cu_k.diff()])
    q_pos = torch.cat([k_pos[cu_k[b]:cu_k[b + 1]][torch.randperm(int(cu_k[b + 1] - cu_k[b]), generator=gen)
                       [:int(cu_q[b + 1] - cu_q[b])].sort().values] for b in range(cu_q.numel() - 1)])
    with torch.no_grad():
        out = _run_attention(backend, q, k, v, cu_q, cu_k, max_q, max_k, bias=(dist, q_pos, k_pos))
    expect = _per_sequence_attention(q, k, v, cu_q, cu_k, bias=(dist, q_pos, k_pos))
    torch.testing.assert_close(out.double(), expect, rtol=1e-4, atol=1e-4)


def _random_encoder(family: str, layers: int, device):
    """A small random BERT, or an MPNet with a visible relative position bias."""
    from transformers import BertModel, MPNetConfig, MPNetModel

    if family == "bert":
        return BertModel(small_bert_config(layers=layers, hidden=32, heads=2, ffn=48)).eval().to(device)
    model = MPNetModel(MPNetConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                                   intermediate_size=48, vocab_size=120, max_position_embeddings=64))
    with torch.no_grad():  # the random init of the bias table is too small to matter
        model.encoder.relative_attention_bias.weight.normal_(0, 2)
    return model.eval().to(device)


@pytest.mark.parametrize("family", ["bert", "mpnet"])
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@settings(max_examples=7, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(inp=plan_inputs(max_b=3, max_t=12, max_l=3), seed=st.integers(0, 1000))
def test_encoder_matches_dense_reference(family, device, backend, inp, seed):
    depths, mask, L = inp
    mask[:, 0] = True  # every sequence needs a real token (tested separately)
    torch.manual_seed(seed)
    model = _random_encoder(family, L, device)
    x = torch.randn(*depths.shape, 32, device=device)
    depths, mask = depths.to(device), mask.to(device)
    with torch.no_grad():
        out = AdaptiveEncoder.from_model(model, backend=backend)(x, depths, mask).last_hidden_state
        ref = masked_forward(model, x, depths, mask)
    torch.testing.assert_close(out[mask], ref[mask], rtol=1e-4, atol=1e-4)


_GRAPH_ENCODERS: dict = {}


@pytest.mark.parametrize("family", ["bert", "mpnet"])
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("dense", [False, True], ids=["compact", "dense"])
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(inp=plan_inputs(max_b=9, max_t=40, max_l=4), seed=st.integers(0, 1000))
def test_graph_mode_matches_eager_on_random_inputs(family, device, backend, dense, inp, seed):
    """Graph mode against the eager path on random batches through ONE encoder per family,
    backend and layer kind, so later examples replay graphs and buffers that earlier ones
    captured (other rows, counts, lengths, batch sizes in the same buckets). dense: layers with
    halted tokens run on the whole state (graphs.dense_layers). On CPU the graph is the eager
    stand-in (graphs.py); on CUDA real graphs."""
    depths, mask, _ = inp
    mask[:, 0] = True
    depths = depths.clamp(max=4)
    key = (family, device, backend, dense)
    if key not in _GRAPH_ENCODERS:
        torch.manual_seed(0)
        _GRAPH_ENCODERS[key] = AdaptiveEncoder.from_model(_random_encoder(family, 4, device), backend=backend)
    enc = _GRAPH_ENCODERS[key]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*depths.shape, 32, generator=gen).to(device)
    depths, mask = depths.to(device), mask.to(device)
    with torch.inference_mode():
        want = enc(x, depths, mask).last_hidden_state
        with graphs.dense_layers() if dense else nullcontext():
            got = enc(x, depths, mask, cuda_graphs=True).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)
