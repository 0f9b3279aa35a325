"""AdaptiveEncoder against transformers (full depth) and the dense masked reference (mixed)."""
import copy

import pytest
import torch

from adaptive_encoder import AdaptiveEncoder, apply_adaptive_encoder
from adaptive_encoder import encoder as encoder_module
from adaptive_encoder.dense import masked_forward
from conftest import DEVICE_BACKENDS, small_bert_config


def _bert(layers=4, seed=0, device="cpu", **kw):
    from transformers import BertModel

    torch.manual_seed(seed)
    return BertModel(small_bert_config(layers=layers, **kw)).to(device).eval()


def _ragged(B, T, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids = torch.randint(0, 120, (B, T), generator=gen)
    return ids.to(device), mask.to(device), gen


def _rel(a, b, mask):
    m = mask.bool()
    return ((a - b)[m].norm() / b[m].norm()).item()


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("B,T", [(1, 1), (3, 9), (4, 30)])
def test_full_depth_equals_transformers(device, backend, B, T):
    bert = _bert(device=device)
    ids, mask, _ = _ragged(B, T, seed=B + T, device=device)
    enc = AdaptiveEncoder.from_bert(bert, backend=backend)
    with torch.no_grad():
        ref = bert(ids, attention_mask=mask).last_hidden_state
        x = bert.embeddings(input_ids=ids)
        out = enc(x, torch.full((B, T), 4, device=device), mask).last_hidden_state
        out_none = enc(x, None, mask).last_hidden_state
    assert _rel(out, ref, mask) < 1e-5
    assert torch.equal(out, out_none)
    assert torch.equal(out[mask == 0], x[mask == 0])  # padding is never computed


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixed_depths_equal_dense_reference(device, backend, seed):
    bert = _bert(device=device, seed=seed)
    ids, mask, gen = _ragged(5, 17, seed, device=device)
    depths = torch.randint(0, 5, (5, 17), generator=gen).to(device)
    enc = AdaptiveEncoder.from_bert(bert, backend=backend)
    with torch.no_grad():
        x = bert.embeddings(input_ids=ids)
        out = enc(x, depths, mask)
        ref = masked_forward(bert, x, depths, mask)
    assert _rel(out.last_hidden_state, ref, mask) < 1e-5
    # Tokens of depth 0 keep their input state exactly; so does padding.
    keep = (depths == 0) | (mask == 0)
    assert torch.equal(out.last_hidden_state[keep], x[keep])
    assert out.plan.n_max == int(depths[mask.bool()].max())


def test_functional_call_weights_are_the_ones_used():
    """torch.func.functional_call swaps parameters in the modules' `_parameters`, which the
    direct path reads (encoder._wb, the fused-weight cache): its result is that of a model
    holding those weights, and the encoder's own weights are untouched afterwards."""
    bert = _bert(seed=3)
    ids, mask, gen = _ragged(3, 11, 3)
    depths = torch.randint(0, 5, (3, 11), generator=gen)
    enc = AdaptiveEncoder.from_bert(bert)
    other = {k: v * 1.5 + 0.01 for k, v in enc.state_dict().items()}
    twin = copy.deepcopy(enc)
    twin.load_state_dict(other)
    with torch.no_grad():
        x = bert.embeddings(input_ids=ids)
        before = enc(x, depths, mask).last_hidden_state
        got = torch.func.functional_call(enc, other, (x, depths, mask)).last_hidden_state
        after = enc(x, depths, mask).last_hidden_state
        want = twin(x, depths, mask).last_hidden_state
    assert torch.equal(got, want) and not torch.equal(got, before)
    assert torch.equal(after, before)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_all_depth_zero_and_single_token(device, backend):
    bert = _bert(device=device)
    enc = AdaptiveEncoder.from_bert(bert, backend=backend)
    x = torch.randn(2, 6, 64, device=device)
    out = enc(x, torch.zeros(2, 6, dtype=torch.int32, device=device))
    assert out.plan.n_max == 0 and torch.equal(out.last_hidden_state, x)
    x1 = torch.randn(1, 1, 64, device=device)
    with torch.no_grad():
        one = enc(x1, torch.tensor([[2]], device=device)).last_hidden_state
        ref = masked_forward(bert, x1, torch.tensor([[2]], device=device))
    torch.testing.assert_close(one, ref, rtol=1e-5, atol=1e-6)


def test_compaction_computes_only_active_rows():
    """The savings are real: each layer's query/FFN inputs have exactly the active rows,
    keys/values cover all real tokens, and layers above n_max never run."""
    bert = _bert(layers=6)
    ids, mask, gen = _ragged(4, 20, seed=5)
    depths = torch.randint(1, 4, (4, 20), generator=gen)  # n_max <= 3 of 6 layers
    seen = {}
    hooks = []
    for n, layer in enumerate(bert.encoder.layer):
        for name, mod in (("q", layer.attention.self.query), ("k", layer.attention.self.key),
                          ("ffn", layer.intermediate.dense)):
            hooks.append(mod.register_forward_hook(
                lambda m, a, o, key=(n, name): seen.__setitem__(key, a[0].shape[0])))
    enc = AdaptiveEncoder.from_bert(bert)
    out = enc(bert.embeddings(input_ids=ids), depths, mask)  # with autograd: one GEMM per projection
    for h in hooks:
        h.remove()
    real = mask.bool()
    n_max = int(depths[real].max())
    for n in range(6):
        active = int((real & (depths > n)).sum())
        if n < n_max:
            assert seen[(n, "q")] == active == out.plan.layer_counts[n]
            assert seen[(n, "ffn")] == active
            assert seen[(n, "k")] == int(real.sum())
        else:
            assert (n, "q") not in seen and (n, "k") not in seen
    assert out.plan.active_fraction == pytest.approx(
        sum(int((real & (depths > n)).sum()) for n in range(6)) / (int(real.sum()) * 6))

    # Inference fuses K and V (and Q when every token is active) into one GEMM: every linear
    # layer's input rows and output width, in call order, show the same compaction.
    from torch.overrides import TorchFunctionMode

    class Linears(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.nn.functional.linear:
                self.calls.append((args[0].shape[0], args[1].shape[0]))
            return func(*args, **(kwargs or {}))

    D = bert.config.hidden_size
    with torch.no_grad(), Linears() as rec:
        fused = enc(bert.embeddings(input_ids=ids), depths, mask)
    torch.testing.assert_close(fused.last_hidden_state, out.last_hidden_state, rtol=1e-5, atol=1e-5)
    expect = []
    for n in range(n_max):
        active, keys = int((real & (depths > n)).sum()), int(real.sum())
        qkv = [(keys, 3 * D)] if active == keys else [(active, D), (keys, 2 * D)]
        expect += qkv + [(active, D), (active, bert.config.intermediate_size),
                         (active, D)]
    assert rec.calls == expect


@pytest.mark.parametrize("act", ["gelu", "gelu_python", "relu", "gelu_new"])
def test_inference_closing_in_place_matches_autograd_and_leaves_inputs_alone(act):
    """Inference adds the residual into the GEMM output in place, and applies transformers' own
    GELU in place; other activations take their own call. Same numbers as the autograd path,
    and neither the input nor any residual is written."""
    import adaptive_encoder.encoder as E

    bert = _bert(seed=4, hidden_act=act)
    ids, mask, gen = _ragged(3, 11, seed=4)
    depths = torch.randint(0, 5, (3, 11), generator=gen)
    enc = AdaptiveEncoder.from_bert(bert)
    assert E._plain_gelu(enc.family.parts(enc.layer[0]).act) == (act == "gelu")
    with torch.no_grad():
        x = bert.embeddings(input_ids=ids)
    x0 = x.clone()
    with torch.inference_mode():
        fast = enc(x, depths, mask).last_hidden_state
    slow = enc(x, depths, mask).last_hidden_state  # autograd on: every op out of place
    assert torch.equal(x, x0)
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        ref = masked_forward(bert, x, depths, mask)
    assert _rel(fast, ref, mask) < 1e-5


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_bf16_close_to_fp32_reference(device, backend):
    bert = _bert(device=device)
    ids, mask, gen = _ragged(3, 12, seed=3, device=device)
    depths = torch.randint(0, 5, (3, 12), generator=gen).to(device)
    with torch.no_grad():
        x = bert.embeddings(input_ids=ids)
        ref = masked_forward(bert, x, depths, mask)
        bf = copy.deepcopy(bert).to(torch.bfloat16)
        out = AdaptiveEncoder.from_bert(bf, backend=backend)(x.bfloat16(), depths, mask).last_hidden_state
    assert out.dtype == torch.bfloat16
    assert _rel(out.float(), ref, mask) < 3e-2


def test_bad_inputs_name_the_argument():
    bert = _bert()
    enc = AdaptiveEncoder.from_bert(bert)
    x = torch.randn(2, 5, 64)
    d = torch.ones(2, 5, dtype=torch.long)
    cases = [
        ((x, d.float()), TypeError, "depths must be an integer"),
        ((x, d.bool()), TypeError, "depths must be an integer"),
        ((x, d + 4), ValueError, r"depths must lie in \[0, 4\]"),
        ((x, d - 2), ValueError, r"depths must lie in \[0, 4\]"),
        ((x, d[:, :4]), ValueError, "depths must have shape"),
        ((torch.randn(2, 5, 32), d), ValueError, "hidden size 32"),
        ((x.double(), d), TypeError, "hidden_states dtype"),
        ((x[0], d), ValueError, "hidden_states must be"),
        ((torch.randn(0, 5, 64), d[:0]), ValueError, "empty batch"),
        ((x.long(), d), TypeError, "hidden_states must be a floating"),
        ((x, d, torch.ones(2, 4)), ValueError, "attention_mask must have shape"),
        ((x, d, torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])), ValueError, "at least one real token; sequence 1 has none"),
        # an additive mask (BERT-era code) would be read inverted: refused, not run
        ((x, d, torch.tensor([[0.0, 0, 0, -1e4, -1e4], [0, 0, 0, 0, 0]])), ValueError, "additive mask"),
        ((x, d, torch.tensor([[0.0, 0, 0, float("-inf"), 0], [0, 0, 0, 0, 0]])), ValueError, "additive mask"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            enc(*args)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="depths is on"):
            enc(x, d.cuda())
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():  # a 0/1 mask of any dtype is read alike
        outs = [enc(x, d, keep.to(dtype)).last_hidden_state for dtype in (torch.long, torch.bool, torch.float32)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    with pytest.raises(TypeError, match="expected a transformers encoder model"):
        AdaptiveEncoder.from_bert(torch.nn.Linear(2, 2))


def test_training_step_dropout_and_gradients():
    torch.manual_seed(0)
    bert = _bert(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1).train()
    ids, mask, gen = _ragged(4, 10, seed=7)
    depths = torch.randint(1, 4, (4, 10), generator=gen)  # layer 4 never runs
    depths[0, 0] = 3
    enc = AdaptiveEncoder.from_bert(bert)
    assert enc.training
    x = bert.embeddings(input_ids=ids)
    a = enc(x, depths, mask).last_hidden_state
    b = enc(x, depths, mask).last_hidden_state
    assert not torch.equal(a, b)  # dropout is active in training mode

    target = torch.randn(4, 10, 64)
    opt = torch.optim.Adam(bert.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        out = enc(bert.embeddings(input_ids=ids), depths, mask).last_hidden_state
        loss = ((out - target) ** 2)[mask.bool()].mean()
        loss.backward()
        losses.append(loss.item())
        if len(losses) == 1:
            for n, layer in enumerate(bert.encoder.layer):
                grads = [p.grad for p in layer.parameters()]
                if n < 3:
                    assert all(g is not None and g.abs().sum() > 0 for g in grads), f"layer {n}"
                else:
                    assert all(g is None for g in grads), "layer above n_max must not run"
            assert bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
        opt.step()
    assert losses[-1] < losses[0]


def test_patch_bert_for_sequence_classification():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(small_bert_config(num_labels=3)).eval()
    plain = copy.deepcopy(model)
    ids, mask, gen = _ragged(3, 11, seed=9)
    depths = torch.randint(1, 5, (3, 11), generator=gen)

    apply_adaptive_encoder(model)
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        ref_full = plain(ids, attention_mask=mask).logits
        adaptive = model(ids, attention_mask=mask, depths=depths).logits
        x = plain.bert.embeddings(input_ids=ids)
        h = masked_forward(plain.bert, x, depths, mask)
        ref_adaptive = plain.classifier(plain.bert.pooler(h))
    torch.testing.assert_close(full, ref_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adaptive, ref_adaptive, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(adaptive, full)
    # Same parameters, same names: checkpoints of the original model still load.
    assert model.state_dict().keys() == plain.state_dict().keys()
    with pytest.raises(ValueError, match="already patched"):
        apply_adaptive_encoder(model)
    from transformers import BertModel

    with pytest.raises(ValueError, match="encoder"):
        apply_adaptive_encoder(BertModel(small_bert_config(is_decoder=True)))
    from adaptive_encoder import make_plan

    with pytest.raises(ValueError, match="empty batch"):
        make_plan(torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, 4, dtype=torch.bool), 3)


def test_patch_with_depth_fn_on_bert_model():
    from transformers import BertModel

    torch.manual_seed(0)
    model = BertModel(small_bert_config()).eval()
    plain = copy.deepcopy(model)
    table = torch.randint(1, 5, (120,))
    apply_adaptive_encoder(model, depth_fn=lambda ids, m: table[ids])
    ids, mask, _ = _ragged(2, 8, seed=4)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        ref = masked_forward(plain, plain.embeddings(input_ids=ids), table[ids], mask)
    assert _rel(out, ref, mask) < 1e-5


def test_partial_stack_keeps_the_model_mode_and_runs_the_upper_layers():
    """from_model(first_layer=k) shares layers k.. without switching an eval-mode model's
    dropout on (it once did: a new ModuleList starts in training mode), and equals running
    those layers densely."""
    bert = _bert(layers=4).eval()
    upper = AdaptiveEncoder.from_model(bert, first_layer=1)
    assert not bert.training and not any(m.training for m in bert.modules())
    assert len(upper.layer) == 3 and upper.layer[0] is bert.encoder.layer[1]
    _, mask, gen = _ragged(2, 9, seed=4)
    x = torch.randn(*mask.shape, bert.config.hidden_size, generator=gen)
    depths = torch.randint(0, 4, mask.shape, generator=gen)
    ref = copy.deepcopy(bert)
    ref.encoder.layer = ref.encoder.layer[1:]  # the dense reference of layers 1..3
    with torch.no_grad():
        out = upper(x, depths, mask).last_hidden_state
        expect = masked_forward(ref, x, depths, mask)
        assert torch.equal(upper(x, depths, mask).last_hidden_state, out)  # no dropout: deterministic
    assert _rel(out, expect, mask) < 1e-5
    bert.train()
    assert AdaptiveEncoder.from_model(bert, first_layer=2).layer[0].training  # a training model stays so


@pytest.mark.parametrize("device", sorted({d for d, _ in DEVICE_BACKENDS}))
def test_autocast_matches_transformers(device):
    """Under torch.autocast (bfloat16 GEMMs, float32 states) the encoder computes what
    transformers computes under it, at full and mixed depth, with and without autograd; graph
    mode runs such a call eagerly. (It raised a dtype error at the first scatter before.)"""
    bert = _bert(device=device)
    ids, mask, gen = _ragged(3, 12, seed=5, device=device)
    depths = torch.randint(0, 5, (3, 12), generator=gen).to(device)
    enc = AdaptiveEncoder.from_bert(bert)
    with torch.no_grad():
        x = bert.embeddings(input_ids=ids)
    additive = torch.where(mask.bool(), 0.0, torch.finfo(x.dtype).min)[:, None, None, :]
    for grad in (False, True):
        with torch.set_grad_enabled(grad), torch.autocast(device, dtype=torch.bfloat16):
            full = enc(x, None, mask).last_hidden_state
            hf = bert.encoder(x, attention_mask=additive).last_hidden_state
            mixed = enc(x, depths, mask).last_hidden_state
            ref = masked_forward(bert, x, depths, mask)
            graphed = enc(x, depths, mask, cuda_graphs=True).last_hidden_state
            with encoder_module.dense_layers():  # eager dense layers (inference only)
                dense = enc(x, depths, mask).last_hidden_state
        assert full.dtype == hf.dtype == x.dtype == dense.dtype
        assert _rel(full, hf, mask) < 1e-2 and _rel(mixed, ref, mask) < 1e-2 and _rel(dense, ref, mask) < 1e-2
        assert torch.equal(graphed, mixed)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("model", ["bert", "distilbert", "mpnet"])
def test_eager_dense_layers_match_compact_ones(device, backend, model, poison):
    """encoder.dense_layers(): each layer with halted tokens runs on every row and writes back
    only its active rows. The states are the compact layers' (up to GEMM rounding on other row
    counts); halted, depth-0 and padding tokens are left as they were."""
    from test_graphs import _encoder, _inputs

    _, enc = _encoder(device, backend, model=model)
    for seed, (B, T) in enumerate([(1, 1), (1, 7), (3, 9), (2, 20), (4, 5)]):
        x, depths, mask = _inputs(B, T, seed, device)
        if seed == 4:
            mask[:] = True  # no padding: the state is the input's rows
        for grad_mode in (torch.inference_mode, torch.no_grad):
            with grad_mode():
                want = enc(x, depths, mask).last_hidden_state
                with encoder_module.dense_layers():
                    got = enc(x, depths, mask).last_hidden_state
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
            untouched = ~mask | (depths == 0)
            assert torch.equal(got[untouched], x[untouched])
    assert encoder_module.DENSE_ROWS == 0  # restored


def test_eager_dense_layers_launch_what_full_depth_launches():
    """On the Triton backend (a GPU's eager path) a dense forward issues exactly the ops of a
    full-depth forward, layer for layer; a compact one a gather and a second GEMM more per layer
    with halted tokens. Only forwards with at most DENSE_ROWS real tokens run dense, only in
    inference."""
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode

    from conftest import TRITON_DEVICE
    from test_graphs import _encoder, _inputs

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    def ops_of(depths, rows, grad=False):
        mode = Count()
        mode.ops = collections.Counter()
        with torch.enable_grad() if grad else torch.inference_mode(), encoder_module.dense_layers(rows), mode:
            enc(x, depths, mask)
        return mode.ops

    _, enc = _encoder(TRITON_DEVICE, "triton")
    x, depths, mask = _inputs(2, 9, 0, TRITON_DEVICE)
    mask[:] = True
    depths[0, 0] = 4  # every layer runs (n_max = N), each with halted tokens
    assert (depths < 4).any()
    K = int(mask.sum())
    for rows in (K, 0):  # fill the fused-weight cache (q/k/v and k/v): no weight copies counted below
        ops_of(depths, rows)
    full, dense, compact = ops_of(torch.full_like(depths, 4), K), ops_of(depths, K), ops_of(depths, K - 1)
    layers = enc.num_layers
    # full depth's ops, with the last LayerNorm of each layer in its writing-back form
    into, plain = "adaptive_encoder.triton_add_layer_norm_into_", "adaptive_encoder.triton_add_layer_norm"
    assert dense - full == collections.Counter({into: layers})
    assert full - dense == collections.Counter({plain: layers})
    assert compact - dense == collections.Counter({"adaptive_encoder.triton_gather": layers, "aten.linear": layers})
    trained = ops_of(depths, K, grad=True)  # autograd: compact layers, q/k/v apart
    assert trained["adaptive_encoder.triton_gather"] == layers and trained[into] == 0
    assert sum(trained[op] for op in ("aten.linear", "aten.addmm", "aten.mm")) == 6 * layers


def test_full_depth_is_planned_from_the_mask_without_the_plan_op():
    """depths None (full depth, the drop-in's default): no plan op and no depth statistics, the
    same states as depths N on every real token; an all-padding sequence is still refused."""
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    def run(depths, x, mask):
        mode = Count()
        mode.ops = collections.Counter()
        with torch.inference_mode(), mode:
            out = enc(x, depths, mask).last_hidden_state
        return out, mode.ops

    bert = _bert(layers=3)
    enc = AdaptiveEncoder.from_bert(bert, backend="cpu")
    ids, mask, _ = _ragged(3, 9, seed=1)
    x = bert.embeddings(input_ids=ids).detach()
    run(None, x, mask)  # fills the fused-weight cache: no weight copies counted below
    fast, fast_ops = run(None, x, mask)
    general, general_ops = run(torch.where(mask.bool(), 3, 0), x, mask)
    assert torch.equal(fast, general)
    assert general_ops["adaptive_encoder.plan"] == 1 and fast_ops["adaptive_encoder.plan"] == 0
    assert sum(fast_ops.values()) < sum(general_ops.values())
    mask[1] = 0
    with pytest.raises(ValueError, match="every sequence needs at least one real token"):
        enc(x, None, mask)


def test_eager_fuses_norms_only_from_eager_rows():
    """norm.EAGER_ROWS: an eager forward of fewer real tokens closes its blocks with torch's add and
    LayerNorm (the Triton launch costs a launch-bound GPU forward more), one of at least that many
    with the fused kernel; graph mode fuses at any size. Same results either way."""
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode

    from adaptive_encoder import norm
    from conftest import TRITON_DEVICE
    from test_graphs import _encoder, _inputs

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    def fused_calls(rows, **kw):
        mode = Count()
        mode.ops = collections.Counter()
        with torch.inference_mode(), norm.eager_rows(rows), mode:
            out = enc(x, depths, mask, **kw).last_hidden_state
        return sum(n for op, n in mode.ops.items() if "add_layer_norm" in op), out

    _, enc = _encoder(TRITON_DEVICE, "triton")
    x, depths, mask = _inputs(2, 9, 0, TRITON_DEVICE)
    K = int(mask.sum())
    at, fused = fused_calls(K)
    above, unfused = fused_calls(K + 1)
    graphed, in_graphs = fused_calls(K + 1, cuda_graphs=True)
    assert at > 0 and above == 0 and graphed > 0
    torch.testing.assert_close(unfused, fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(in_graphs, fused, atol=1e-5, rtol=1e-5)
    assert norm.EAGER_ROWS == 0  # conftest's test-size setting, restored after each block
