"""Graph mode (adaptive_encoder/graphs.py) against the eager path: same states for any depths.

On CUDA tensors the layers are real CUDA graphs. On CPU tensors the same bucketed path runs
and a "replay" calls the captured function again, so these tests check the bucketing, the
dummy rows (in no sequence; NaN under the poison fixture) and that a replay reads nothing of
the call that captured it."""
import copy
import pickle
import threading
from contextlib import nullcontext

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from adaptive_encoder import AdaptiveEncoder, apply_adaptive_encoder, graphs
from conftest import DEVICE_BACKENDS, small_bert_config


def _encoder(device, backend, layers=4, seed=0, model="bert"):
    from transformers import BertModel, DistilBertConfig, DistilBertModel, MPNetConfig, MPNetModel

    torch.manual_seed(seed)
    if model == "mpnet":  # a relative position bias, by distance, shared by the layers
        net = MPNetModel(MPNetConfig(vocab_size=120, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=66))
        net.encoder.relative_attention_bias.weight.data.normal_(0, 1)
    elif model == "distilbert":
        cfg = DistilBertConfig(vocab_size=120, dim=64, n_layers=layers, n_heads=4, hidden_dim=128,
                               max_position_embeddings=64)
        net = DistilBertModel(cfg)
    else:
        net = BertModel(small_bert_config(layers=layers))
    net = net.to(device).eval()
    return net, AdaptiveEncoder.from_model(net, backend=backend)


def _inputs(B, T, seed, device, layers=4, p_pad=0.3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 64, generator=gen)
    depths = torch.randint(0, layers + 1, (B, T), generator=gen)
    mask = torch.rand(B, T, generator=gen) > p_pad
    mask[:, 0] = True
    return x.to(device), depths.to(device), mask.to(device)


def test_buckets():
    seen = set()
    for n in range(1, 5000):
        b = graphs.bucket(n)
        assert b >= n and (b == 16 or b <= 1.25 * n), (n, b)
        assert b >= graphs.bucket(n - 1) if n > 1 else True
        seen.add(b)
    assert len([b for b in seen if 1024 < b <= 2048]) == 4  # four sizes per octave
    assert [graphs.batch_bucket(b) for b in (1, 2, 3, 5, 8, 9, 16, 17)] == [1, 2, 4, 8, 8, 16, 16, 32]


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("model", ["bert", "distilbert", "mpnet"])
@pytest.mark.parametrize("dense", [False, True], ids=["compact", "dense"])
def test_graph_mode_matches_eager(device, backend, model, dense, request):
    """Many inputs through one encoder: the first of each bucket captures, later ones replay
    with other rows, counts and data; every state equals the eager path's. dense: every layer
    with halted tokens runs on the whole state and writes back its active rows
    (graphs.dense_layers)."""
    if device == "cpu":  # not on CUDA: deterministic mode may pick index kernels that sync, which capture forbids
        request.getfixturevalue("poison")
    _, enc = _encoder(device, backend, model=model)
    cache = graphs.cache_for(enc, torch.device(device))
    cases = [(1, 1), (1, 7), (3, 9), (2, 9), (3, 9), (5, 4), (1, 7), (3, 9), (8, 3), (3, 9), (2, 20), (2, 19)]
    with torch.inference_mode(), graphs.dense_layers() if dense else nullcontext():
        for seed, (B, T) in enumerate(cases):
            x, depths, mask = _inputs(B, T, seed, device)
            if seed == 4:
                mask[:] = True  # no padding: no key gather
            if seed == 5:
                depths[:] = 4  # every token every layer
            if seed == 6:
                depths[:] = 0  # nothing to run
            want = enc(x, depths, mask).last_hidden_state
            got = enc(x, depths, mask, cuda_graphs=True).last_hidden_state
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
            assert torch.equal(got[~mask], x[~mask])  # padding never computed
            halted = mask & (depths == 0)
            assert torch.equal(got[halted], x[halted])  # nor a token of depth 0, dense or not
    assert cache.captures > 0 and cache.replays > 0, (cache.captures, cache.replays)
    stacks = [key for key in cache.graphs if key[0] == "stack"]
    kinds = {key[1] for key in cache.graphs if key[0] != "stack"}
    # Forwards whose every layer runs on the whole state (full depth, seed 5; every forward with
    # dense layers) are one graph per stack (graphs.STACK); the rest one per layer, compact ones
    # only when not dense.
    assert stacks and (not kinds if dense else any(isinstance(k, int) for k in kinds) and "dense" not in kinds), \
        (stacks, kinds)
    assert graphs.DENSE_ROWS == 0  # restored


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS[:1] + DEVICE_BACKENDS[-1:])
def test_replays_read_only_the_buffers(device, backend):
    """Two inputs in the same buckets but with other data, rows and counts: the second replays
    the first one's graphs and must still give its own eager result."""
    _, enc = _encoder(device, backend)
    cache = graphs.cache_for(enc, torch.device(device))
    x1, d1, m1 = _inputs(3, 10, 1, device)
    x2, d2, m2 = _inputs(3, 10, 2, device)
    d1[:], d2[:] = 2, 2
    m1[:, :7], m1[:, 7:] = True, False  # 21 real tokens
    m2[:, :7], m2[:, 7:] = True, False
    m2[0, 6] = False  # 20: the same bucket (24 rows)
    d1[1, 3] = 1  # layer 2: 20 queries
    d2[2, 4], d2[0, 0] = 1, 1  # 18 queries, other rows: the same bucket (20)
    with torch.inference_mode():
        enc(x1, d1, m1, cuda_graphs=True)
        captured = cache.captures
        got = enc(x2, d2, m2, cuda_graphs=True).last_hidden_state
        want = enc(x2, d2, m2).last_hidden_state
    assert cache.captures == captured == 2 and cache.replays == 2
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS[:1] + DEVICE_BACKENDS[-1:])
@pytest.mark.parametrize("plan_on_host", [True, False])
@pytest.mark.parametrize("dense", [False, True], ids=["compact", "dense"])
def test_where_graph_mode_plans_depths_given_on_the_device(device, backend, plan_on_host, dense):
    """Depths and mask on the states' device: graph mode copies them to the host and plans
    there (graphs.PLAN_ON_HOST), or plans on the device inside graphs.device_plan(); the same
    states either way, with compact or dense layers (whose rows are then written on the device),
    and the settings are back after. On CPU tensors both are the host."""
    from adaptive_encoder.plan import to_host

    _, enc = _encoder(device, backend)
    x, depths, mask = _inputs(5, 12, 3, device)
    hd, hm = to_host(depths, mask)  # one transfer of both
    assert hd.device.type == hm.device.type == "cpu" and hd.dtype == torch.int64 and hm.dtype == torch.bool
    assert torch.equal(hd, depths.cpu()) and torch.equal(hm, mask.cpu())
    with torch.inference_mode():
        want = enc(x, depths, mask).last_hidden_state
        with nullcontext() if plan_on_host else graphs.device_plan(), \
                graphs.dense_layers() if dense else nullcontext():
            assert graphs.PLAN_ON_HOST is plan_on_host
            out = enc(x, depths, mask, cuda_graphs=True)
    assert graphs.PLAN_ON_HOST is True and graphs.DENSE_ROWS == 0
    expect = "cpu" if plan_on_host or device == "cpu" else device
    assert out.plan.rows.device.type == out.plan.cu_k.device.type == expect
    torch.testing.assert_close(out.last_hidden_state, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("B,T,seed", [(1, 9, 0), (6, 40, 1), (33, 17, 2)])
def test_both_ways_of_filling_the_layer_rows_agree(B, T, seed):
    """graphs._fill_layer_rows: one slice copy per layer (host plans) and one indexed fill for
    all layers (device plans) write the same table, only the first A_n entries of row 2+n."""
    from adaptive_encoder.plan import make_plan

    _, depths, mask = _inputs(B, T, seed, "cpu", layers=6)
    plan = make_plan(depths, mask, 6)
    tables = []
    for per_layer in (True, False):
        ints = torch.full((plan.n_max + 2, graphs.bucket(plan.num_real + 1)), -7, dtype=torch.int64)
        graphs._fill_layer_rows(ints, plan, plan.n_max, per_layer=per_layer)
        tables.append(ints)
    assert torch.equal(tables[0], tables[1])
    for n in range(plan.n_max):
        c = plan.layer_counts[n]
        assert torch.equal(tables[0][2 + n, :c], plan.state_rows[plan.layer_slice(n)])
        assert (tables[0][2 + n, c:] == -7).all()
    assert (tables[0][:2] == -7).all()


@pytest.mark.parametrize("B,T,seed", [(1, 9, 0), (6, 40, 1)])
def test_layers_on_the_whole_state_write_back_only_their_rows(B, T, seed):
    """graphs._tables: row 2+n holds layer n's state rows, then the first dummy row K up to K^
    (what a layer on every row writes back: the at_rows form of its last LayerNorm); and
    layer_sizes makes every layer with halted tokens "dense" once K^ <= dense_rows."""
    from adaptive_encoder.plan import make_plan

    _, depths, mask = _inputs(B, T, seed, "cpu", layers=6)
    depths = depths.clamp(min=1)  # layer 1 on every token: an "all" layer
    depths[0, 0], mask[0, 0] = 6, True  # every layer runs
    plan = make_plan(depths, mask, 6)
    K, k_hat = plan.num_real, graphs.bucket(plan.num_real + 1)
    ints, offsets = graphs._tables(plan, T, k_hat, graphs.batch_bucket(B), plan.n_max)
    assert ints.shape == (plan.n_max + 2, k_hat) and offsets.shape == (plan.n_max + 1, graphs.batch_bucket(B) + 1)
    for n in range(plan.n_max):
        c = plan.layer_counts[n]
        assert torch.equal(ints[2 + n, :c], plan.state_rows[plan.layer_slice(n)])
        assert (ints[2 + n, c:] == K).all()
    counts = plan.layer_counts[:plan.n_max]
    assert counts[0] == K and min(counts) < K  # an "all" layer and layers with halted tokens
    for rows, dense in ((k_hat - 1, False), (k_hat, True)):
        kinds = [s[0] for s in graphs.layer_sizes(counts, K, B, T, rows)]
        assert kinds == ["all" if c == K else "dense" if dense else graphs.bucket(c) for c in counts]


def test_graph_count_is_bounded():
    """Past max_graphs the least recently replayed graphs go; later inputs capture again."""
    _, enc = _encoder("cpu", "cpu")
    cache = graphs.cache_for(enc, torch.device("cpu"))
    cache.max_graphs = 5
    with torch.inference_mode():
        for seed, (B, T) in enumerate([(1, 3), (2, 30), (3, 9), (1, 3), (4, 50), (2, 30)]):
            x, d, m = _inputs(B, T, seed, "cpu")
            torch.testing.assert_close(enc(x, d, m, cuda_graphs=True).last_hidden_state,
                                       enc(x, d, m).last_hidden_state, atol=2e-5, rtol=1e-5)
            assert len(cache.graphs) <= 5
    assert cache.captures > 5


def test_a_failed_capture_runs_that_layer_eagerly():
    """A capture that fails (on a GPU: an op that waits for it) after the layer ran: the call's
    result stands, the key runs eagerly from then on, the error is kept for diagnosis."""
    _, enc = _encoder("cpu", "cpu")
    cache = graphs.cache_for(enc, torch.device("cpu"))

    class Refuses(graphs.EagerGraph):
        def run_and_capture(self, fn, pool=None, stream=None):
            fn()
            raise graphs.CaptureFailed("RuntimeError: operation not permitted when stream is capturing")

    cache.graph_cls = Refuses
    with torch.inference_mode():
        for seed in (0, 1, 0):
            x, d, m = _inputs(2, 8, seed, "cpu")
            torch.testing.assert_close(enc(x, d, m, cuda_graphs=True).last_hidden_state,
                                       enc(x, d, m).last_hidden_state, atol=2e-5, rtol=1e-5)
    assert cache.captures == 0 and cache.replays == 0
    assert cache.capture_errors and "not permitted" in cache.capture_errors[0]
    assert len(cache.capture_errors) == len(cache.graphs)  # each key tried once


# Ops that wait for the GPU (their output's size or value is read on the host) or read host
# memory: a CUDA graph capture refuses them, and the layer would then run eagerly on every call.
_UNCAPTURABLE = {"_local_scalar_dense", "item", "nonzero", "masked_select", "unique", "_unique", "_unique2",
                 "unique_consecutive", "unique_dim", "bincount", "equal", "is_nonzero", "allclose", "lift_fresh",
                 "lift_fresh_copy"}


class _FlagsUncapturable(TorchDispatchMode):
    def __init__(self, allow=()):
        super().__init__()
        self.allow, self.found = set(allow), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.__name__.split(".")[0]
        bool_index = name in ("index", "index_put", "index_put_") and any(
            t is not None and t.dtype == torch.bool for t in args[1])  # a mask index is a nonzero
        unsized = name == "repeat_interleave" and kwargs.get("output_size") is None and (
            len(args) < 4 or args[3] is None)
        if (name in _UNCAPTURABLE - self.allow) or bool_index or unsized:
            self.found.append(str(func))
        return func(*args, **kwargs)


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in DEVICE_BACKENDS if d == "cpu"])
@pytest.mark.parametrize("model", ["bert", "distilbert", "mpnet"])
@pytest.mark.parametrize("dense", [False, True], ids=["compact", "dense"])
def test_captured_layers_never_wait_for_the_device(device, backend, model, dense):
    """What a graph captures issues no op that a CUDA capture refuses (found on CPU, before a
    GPU session spends its minutes on it; on a GPU such a layer would run eagerly, its error in
    capture_errors). The torch backend's attention reads the offsets of a one-sequence batch on
    CPU tensors only (a shortcut it never takes on a GPU), so `item` is allowed there."""
    _, enc = _encoder(device, backend, model=model)
    cache = graphs.cache_for(enc, torch.device(device))
    flags = _FlagsUncapturable(allow={"item", "_local_scalar_dense"} if backend == "torch" else ())

    class Strict(graphs.EagerGraph):
        def run_and_capture(self, fn, pool=None, stream=None):
            def watched():
                with flags:
                    fn()
            super().run_and_capture(watched)

    cache.graph_cls = Strict
    with torch.inference_mode(), graphs.dense_layers() if dense else nullcontext():
        for seed, (B, T) in enumerate([(1, 7), (3, 9), (2, 20), (3, 9)]):
            x, d, m = _inputs(B, T, seed, device)
            enc(x, d, m, cuda_graphs=True)
    assert cache.captures > 0 and cache.replays > 0 and not cache.capture_errors
    assert not flags.found, sorted(set(flags.found))


def test_the_uncapturable_check_finds_waits():
    """The check above finds each way a layer could wait for the device."""
    x, rows = torch.randn(6, 3), torch.tensor([0, 2])
    cases = [lambda: x[x[:, 0] > 0], lambda: x.sum().item(), lambda: torch.nonzero(x),
             lambda: torch.repeat_interleave(rows, rows), lambda: torch.tensor([1.0]),
             lambda: torch.bincount(rows), lambda: x.masked_select(x > 0)]
    for case in cases:
        flags = _FlagsUncapturable()
        with flags:
            case()
        assert flags.found, case
    flags = _FlagsUncapturable()
    with flags:  # what the layers do use
        x[rows], x.index_put((rows,), x[:2]), torch.repeat_interleave(rows, rows, output_size=2)
    assert not flags.found, flags.found


def test_new_weights_recapture():
    """A graph bakes in weight addresses; an in-place update bumps the version: recapture."""
    net, enc = _encoder("cpu", "cpu")
    x, d, m = _inputs(2, 8, 0, "cpu")
    with torch.inference_mode():
        enc(x, d, m, cuda_graphs=True)
    captured = graphs.cache_for(enc, torch.device("cpu")).captures
    with torch.no_grad():
        for p in net.encoder.layer[0].parameters():
            p.mul_(1.5)
    with torch.inference_mode():
        got = enc(x, d, m, cuda_graphs=True).last_hidden_state
        want = enc(x, d, m).last_hidden_state
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    assert graphs.cache_for(enc, torch.device("cpu")).captures == captured + 1  # layer 0 only


def test_swapped_module_or_new_hook_is_seen():
    """A layer's graphs are sealed to its modules: a swapped Linear recaptures (its new weights),
    a hook added afterwards sends the call down the eager path, where the hook fires."""
    net, enc = _encoder("cpu", "cpu")
    cache = graphs.cache_for(enc, torch.device("cpu"))
    x, d, m = _inputs(2, 8, 0, "cpu")
    d[:] = 4
    x2, d2, m2 = _inputs(3, 30, 1, "cpu")  # other buckets: layer 2 gets graphs under two keys
    with torch.inference_mode():
        enc(x2, d2, m2, cuda_graphs=True)
        enc(x, d, m, cuda_graphs=True)
        captured = cache.captures
        old = net.encoder.layer[2].output.dense
        new = torch.nn.Linear(old.in_features, old.out_features).eval()  # a new module trains by default
        net.encoder.layer[2].output.dense = new
        got = enc(x, d, m, cuda_graphs=True).last_hidden_state
        want = enc(x, d, m).last_hidden_state
        assert cache.captures == captured + 1
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
        # (layer, seal) of every graph kept: a layer's graph holds its seal, a stack's one per layer
        seals = [(n, seal) for k, entry in cache.graphs.items()
                 for n, seal in (enumerate(entry[0]) if k[0] == "stack" else [(k[0], entry[0][0])])]
        assert seals and all(seal.layer is net.encoder.layer[n] for n, seal in seals)
        assert not any(old is m for _, seal in seals for m in seal.modules)  # old graphs gone
        calls = []
        net.encoder.layer[3].attention.output.register_forward_hook(lambda *a: calls.append(1))
        enc(x, d, m, cuda_graphs=True)
    assert calls == [1] and cache.captures == captured + 1


def test_what_graphs_cannot_run_exactly_runs_eagerly():
    net, enc = _encoder("cpu", "cpu")
    cache = graphs.cache_for(enc, torch.device("cpu"))
    x, d, m = _inputs(2, 8, 0, "cpu")
    with torch.no_grad():
        want = enc(x, d, m).last_hidden_state
    enc.train()  # dropout: eager
    torch.manual_seed(0)
    a = enc(x, d, m, cuda_graphs=True).last_hidden_state
    torch.manual_seed(0)
    b = enc(x, d, m).last_hidden_state
    assert torch.equal(a, b) and a.requires_grad
    enc.eval()
    net.encoder.layer[2].output.dropout.train()  # one module in training mode: dropout, eagerly
    with torch.no_grad():
        torch.manual_seed(0)
        a = enc(x, d, m, cuda_graphs=True).last_hidden_state
        torch.manual_seed(0)
        b = enc(x, d, m).last_hidden_state
    assert torch.equal(a, b) and not torch.equal(a, want)
    net.encoder.layer[2].output.dropout.eval()
    handle = net.encoder.layer[1].output.register_forward_hook(lambda *a: None)  # the module path: eager
    with torch.no_grad():
        hooked = enc(x, d, m, cuda_graphs=True).last_hidden_state
    handle.remove()
    assert cache.captures == 0
    torch.testing.assert_close(hooked, want, atol=2e-5, rtol=1e-5)


def test_a_module_keeping_its_mode_elsewhere_runs_eagerly():
    """The seal reads mode and hooks from modules' instance dicts; a module whose `training`
    lives elsewhere (a class property) cannot be sealed: the forward runs eagerly, and right."""
    class Odd(torch.nn.Module):
        training = property(lambda self: False, lambda self, value: None)

    net, enc = _encoder("cpu", "cpu")
    net.encoder.layer[1].odd = Odd()
    assert "training" not in net.encoder.layer[1].odd.__dict__
    x, d, m = _inputs(2, 8, 0, "cpu")
    with torch.inference_mode():
        got = enc(x, d, m, cuda_graphs=True).last_hidden_state
        want = enc(x, d, m).last_hidden_state
    assert graphs.cache_for(enc, torch.device("cpu")).captures == 0
    assert torch.equal(got, want)


def test_threads_copies_and_pickles():
    net, enc = _encoder("cpu", "cpu")
    enc.cuda_graphs = True
    inputs = [_inputs(2, 8, s, "cpu") for s in range(6)]
    with torch.inference_mode():
        want = [enc(*i, cuda_graphs=False).last_hidden_state for i in inputs]
    errors = []

    def work(k):
        try:
            with torch.inference_mode():
                for j in range(6):
                    i = (k + j) % 6
                    torch.testing.assert_close(enc(*inputs[i]).last_hidden_state, want[i], atol=2e-5, rtol=1e-5)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    for clone in (copy.deepcopy(enc), pickle.loads(pickle.dumps(enc))):
        with torch.inference_mode():
            torch.testing.assert_close(clone(*inputs[0]).last_hidden_state, want[0], atol=2e-5, rtol=1e-5)
        assert graphs.cache_for(clone, torch.device("cpu")) is not graphs.cache_for(enc, torch.device("cpu"))
    graphs.clear(enc)
    assert graphs.cache_for(enc, torch.device("cpu")).captures == 0


def test_patched_model_with_graphs():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(small_bert_config(layers=4)).eval()
    ref = copy.deepcopy(model)
    apply_adaptive_encoder(model, cuda_graphs=True)
    apply_adaptive_encoder(ref)
    ids = torch.randint(0, 120, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    depths = torch.randint(1, 5, (3, 10))
    with torch.inference_mode():
        torch.testing.assert_close(model(ids, attention_mask=mask, depths=depths).logits,
                                   ref(ids, attention_mask=mask, depths=depths).logits, atol=2e-5, rtol=1e-5)
    assert graphs.cache_for(model.bert.encoder, torch.device("cpu")).captures > 0


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_model_built_in_inference_mode(device, backend):
    """Weights made under torch.inference_mode have no version counter: the fused-weight and
    graph caches must still work (they raised "Inference tensors do not track version counter"),
    and a weight changed in place there (unseen by any version check) must not leave a stale
    fused copy behind (it did: the q/k/v weights stayed cached, 7.6e-4 off transformers)."""
    with torch.inference_mode():
        net, enc = _encoder(device, backend)
        x, d, m = _inputs(2, 8, 0, device)
        additive = torch.where(m, 0.0, torch.finfo(x.dtype).min)[:, None, None, :]
        for step in range(2):
            graphed = enc(x, d, m, cuda_graphs=True).last_hidden_state
            eager = enc(x, d, m).last_hidden_state
            full = enc(x, None, m).last_hidden_state
            full_graphed = enc(x, None, m, cuda_graphs=True).last_hidden_state
            hf = net.encoder(x, attention_mask=additive).last_hidden_state
            torch.testing.assert_close(graphed, eager, atol=2e-5, rtol=1e-5)
            for out in (full, full_graphed):
                torch.testing.assert_close(out[m], hf[m], atol=2e-5, rtol=1e-5)
            net.encoder.layer[0].attention.self.query.weight.mul_(2.0)  # in place, no version bump
            net.encoder.layer[1].attention.self.value.bias.add_(0.5)


def test_auto_rule():
    """graphs.auto: graph mode on a GPU up to AUTO_ROWS active rows per layer on average, never on CPU."""
    N, rows = 12, graphs.AUTO_ROWS
    assert graphs.auto(rows * N, N, "cuda") and not graphs.auto(rows * N + 1, N, "cuda")
    assert graphs.auto(1, N, torch.device("cuda", 0)) and not graphs.auto(1, N, "cpu")
    # H200 run 5's points (tokens per forward x active share): graph mode won on every one below, lost above
    for won in (3574 * N, 1790 * N, 7160 * N):
        assert graphs.auto(won, N, "cuda")
    for lost in (14295 * N, 28590 * N, 14320 * N):
        assert not graphs.auto(lost, N, "cuda")


@pytest.mark.parametrize("full_depth", [False, True])
def test_auto_chooses_by_token_layers(monkeypatch, full_depth):
    """cuda_graphs="auto" counts the forward's active token-layers (padding and depth 0 count
    nothing, depths None is N per real token) and runs graph mode at or below the rule's limit,
    eagerly above, with the eager results either way. The CPU never pays (graphs.auto), so the
    rule is replaced here by one that allows the CPU: what is checked is the count and the route."""
    net, enc = _encoder("cpu", "cpu")
    x, d, m = _inputs(3, 9, 0, "cpu")
    d[0, 0] = 0  # a depth-0 real token: no layer
    token_layers = int((m.sum() * enc.num_layers) if full_depth else torch.where(m, d, 0).sum())
    depths = None if full_depth else d
    seen = []
    cache = graphs.cache_for(enc, torch.device("cpu"))
    with torch.inference_mode():
        eager = enc(x, depths, m).last_hidden_state
        for limit, graphed in ((token_layers, True), (token_layers - 1, False)):
            monkeypatch.setattr(graphs, "auto", lambda t, n, dev, limit=limit: seen.append((t, n, str(dev))) or t <= limit)
            before = cache.captures + cache.replays
            got = enc(x, depths, m, cuda_graphs="auto").last_hidden_state
            assert seen[-1] == (token_layers, enc.num_layers, "cpu")
            assert (cache.captures + cache.replays > before) == graphed
            torch.testing.assert_close(got, eager, atol=2e-5, rtol=1e-5)
    # the encoder's own setting, and the real rule: on CPU always eager
    monkeypatch.undo()
    enc.cuda_graphs = "auto"
    before = cache.captures + cache.replays
    with torch.inference_mode():
        torch.testing.assert_close(enc(x, depths, m).last_hidden_state, eager, atol=0, rtol=0)
    assert cache.captures + cache.replays == before


def test_cuda_graphs_setting_is_checked():
    net, enc = _encoder("cpu", "cpu")
    x, d, m = _inputs(2, 5, 0, "cpu")
    for bad in ("yes", 1, "Auto"):
        with pytest.raises(ValueError, match="cuda_graphs must be True, False or \"auto\""):
            enc(x, d, m, cuda_graphs=bad)
        with pytest.raises(ValueError, match="cuda_graphs"):
            AdaptiveEncoder.from_model(net, cuda_graphs=bad)


@pytest.mark.parametrize("change", ["none", "other layer", "swapped child", "train mode", "forward hook", "pre-hook",
                                    "new parameter", "data swapped", "in place", "parameter removed"])
def test_seal_breaks_on_every_change(change):
    """graphs.Seal.holds: True for the layer as sealed, False after any change a graph could not see."""
    net, enc = _encoder("cpu", "cpu")
    layer = net.encoder.layer[1]
    layer.eval()
    seal = graphs.Seal(layer)
    dense = layer.intermediate.dense
    target = layer
    if change == "other layer":
        target = net.encoder.layer[2]
    elif change == "swapped child":
        layer.intermediate.dense = torch.nn.Linear(dense.in_features, dense.out_features).eval()
    elif change == "train mode":
        layer.output.dropout.train()
    elif change == "forward hook":
        layer.attention.self.register_forward_hook(lambda *a: None)
    elif change == "pre-hook":
        layer.output.LayerNorm.register_forward_pre_hook(lambda *a: None)
    elif change == "new parameter":
        dense.bias = torch.nn.Parameter(dense.bias.detach().clone())
    elif change == "data swapped":
        dense.weight.data = dense.weight.detach().clone()
    elif change == "in place":
        with torch.no_grad():
            dense.weight.add_(1.0)
    elif change == "parameter removed":
        dense.bias = None
    assert seal.holds(target) == (change == "none")


@pytest.mark.parametrize("dense", [False, True], ids=["full-depth", "dense"])
def test_a_stack_of_whole_state_layers_is_one_graph(dense):
    """graphs.STACK: a forward whose layers all run on the whole state captures one graph for the
    stack and replays it with one launch; per_layer() captures one per layer. Same results, and
    a later forward in the same buckets replays the stack; a changed layer recaptures it."""
    net, enc = _encoder("cpu", "cpu")
    cache = graphs.cache_for(enc, torch.device("cpu"))
    x, d, m = _inputs(2, 8, 0, "cpu")
    if not dense:
        d[:] = enc.num_layers
    d[0, 0] = enc.num_layers  # n_max = N
    x2 = torch.randn_like(x)
    with torch.inference_mode(), graphs.dense_layers() if dense else nullcontext():
        want, want2 = enc(x, d, m).last_hidden_state, enc(x2, d, m).last_hidden_state
        with graphs.per_layer():
            torch.testing.assert_close(enc(x, d, m, cuda_graphs=True).last_hidden_state, want, atol=2e-5, rtol=1e-5)
        assert cache.captures == enc.num_layers and not any(k[0] == "stack" for k in cache.graphs)
        got = enc(x, d, m, cuda_graphs=True).last_hidden_state
        assert cache.captures == enc.num_layers + 1
        replays = cache.replays
        got2 = enc(x2, d, m, cuda_graphs=True).last_hidden_state
        assert cache.replays == replays + 1 and cache.captures == enc.num_layers + 1  # one launch
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(got2, want2, atol=2e-5, rtol=1e-5)
        with torch.no_grad():
            net.encoder.layer[2].output.dense.weight.mul_(1.5)
        want3 = enc(x2, d, m).last_hidden_state
        got3 = enc(x2, d, m, cuda_graphs=True).last_hidden_state
        assert cache.captures == enc.num_layers + 2  # the stack again, after layer 2 changed
        torch.testing.assert_close(got3, want3, atol=2e-5, rtol=1e-5)


def test_kernel_settings_capture_their_own_graphs():
    """A graph replays the kernels of its capture: a forward under another kernel setting
    (attention.FLASH, norm.FUSED, norm.CUDA_CPP, torch's float32 matmul precision, cuBLAS's
    reduced-precision reductions) captures its own graphs, and one under the first settings
    again replays the first ones. Otherwise an A/B of two settings in one process (gpu_scaling's
    +graphs-flash, +graphs-cudanorm arms) would time the same kernels twice."""
    from adaptive_encoder import attention, norm

    net, enc = _encoder("cpu", "cpu")
    cache = graphs.cache_for(enc, torch.device("cpu"))
    x, d, m = _inputs(2, 8, 0, "cpu")
    precision = torch.get_float32_matmul_precision()
    with torch.inference_mode():
        enc(x, d, m, cuda_graphs=True)
        first = cache.captures
        settings = [attention.flash, norm.unfused, norm.cuda_cpp]
        for setting in settings:
            with setting():
                enc(x, d, m, cuda_graphs=True)
        try:
            torch.set_float32_matmul_precision("high" if precision == "highest" else "highest")
            enc(x, d, m, cuda_graphs=True)
        finally:
            torch.set_float32_matmul_precision(precision)
        matmul = torch.backends.cuda.matmul
        reduced = matmul.allow_bf16_reduced_precision_reduction
        try:
            matmul.allow_bf16_reduced_precision_reduction = not reduced
            enc(x, d, m, cuda_graphs=True)
        finally:
            matmul.allow_bf16_reduced_precision_reduction = reduced
        assert cache.captures == first * (len(settings) + 3)
        replays = cache.replays
        enc(x, d, m, cuda_graphs=True)
    assert cache.captures == first * (len(settings) + 3) and cache.replays == replays + first
