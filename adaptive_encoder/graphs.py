"""CUDA graphs for the layer stack: one graph launch per layer instead of 10-13 kernel launches.

Small batches on a GPU are launch-bound (bench/NOTES.md, "First GPU speed numbers": the host
issues ~0.5 ms of work per layer whatever the batch), so the rows a depth plan saves cannot
show. A graph replays a layer's kernels with one launch, but only for fixed shapes and fixed
addresses, and the plan's row counts change with every input. So, in graph mode:

- The state is kept compact over the real tokens, (K^, D) with K^ = bucket(K + 1): rows K..K^-1
  are dummy rows (at least one). Padding tokens never enter.
- Layer n's queries are indices into that state, padded to A^ = bucket(A_n) with the first
  dummy row. Dummy rows and padded queries belong to no sequence (past the last offset), so
  attention leaves their outputs unwritten and never uses them as keys: real sequences see
  exactly their own keys, as in the eager path. What lands on dummy rows is never read.
- Sequences are padded to B^ (a power of two) with empty ones, so every offsets table has a
  fixed length. The attention grid is bounded by T^ = bucket(T + 1) (no sequence is longer
  than the padded length T), not by the row count: a grid over A^ rows per sequence would
  launch ~A^ * B^ / 64 programs per head, nearly all idle: quadratic in the batch.
- Buffers (compact state and integer tables per K^, offset tables per B^) are allocated once
  and filled each forward by a few ops: the tables are built where the plan is (on the host
  for a host-side plan; depths given on the GPU are copied to the host first, PLAN_ON_HOST)
  and copied in two transfers. A layer's graph reads them at fixed addresses, so it is keyed
  by (layer, A^, "all" or "dense", K^, B^, the grid bounds, the kernel settings) and replayed
  for every input that lands in those buckets. MPNet's distance table is refilled each call at
  a fixed address.
- A layer on every row of the state (all its tokens active, or a dense layer) ends with its last
  LayerNorm writing only the layer's rows into the state (add_layer_norm_into_'s at_rows form;
  a copy or a masked copy of the whole state before: one kernel and pass fewer per layer).
- A forward whose layers all run on the whole state (full depth, or dense layers) is one graph for
  the whole stack, keyed by its sizes and number of layers (STACK): one launch per forward.
- Dense layers (DENSE_ROWS, off by default): when the state is small, a layer with halted tokens
  may run on every row of the state and write back only its active rows, which is a full-depth
  layer's kernels; on a GPU below some size a GEMM costs the same on fewer rows, and the compact
  layer's gather and split projection do not.

Buckets are four sizes per octave (at most 25 % padded rows). The first time a key is seen,
the layer runs eagerly (that is this call's result) and is then captured, so the capture never
runs work twice. A graph bakes in the weights' addresses: each layer is sealed (`Seal`: its
submodules, parameter tensors, their storage and version counters, eval mode, no hooks),
checked in microseconds on every call, and its graphs are recaptured when the seal breaks.

`Graph` is the CUDA graph; `EagerGraph` "replays" by calling the captured function again with
the same buffers, which lets CPU tests check the bucketing and the buffer discipline (a replay
sees only what is in the buffers, never a Python value of the call that captured it).
"""
import threading
import weakref
from collections import OrderedDict
from contextlib import nullcontext
from functools import partial

import torch

from . import attention, norm, settings
from .plan import to_device


# Graphs kept per encoder: a server that sees every length and batch size would otherwise
# keep one per (layer, row bucket, state bucket, batch bucket) forever. Past this many, the
# least recently replayed go (a later input in their buckets captures again).
MAX_GRAPHS = 4096

# Depths and mask on the GPU in graph mode: copy them to the host (one transfer, which waits for
# the GPU once) and plan there, instead of planning on the device (~30 launches and 2 waits for
# the GPU, then ~15 more launches for the tables). A setting only so that a benchmark can time
# both in one run (bench/gpu_scaling.py, "+devplan").
PLAN_ON_HOST = True

# Dense layers on few rows. On a GPU a GEMM over a few hundred rows may take about as long
# whatever its row count (its tiles fill part of one wave), so a compact layer (gather, q GEMM,
# k/v GEMM, the rest, scatter: 13 kernels) may cost more than the same layer on every row (11,
# bench/NOTES.md "Open for a GPU session" item 6). A forward whose compact state has at most DENSE_ROWS rows
# (K^) runs each layer that has halted tokens on every row of the state instead, and writes back
# only the active rows: one masked copy where a full-depth layer has its plain copy, so the
# same kernels as full depth; the halted rows' work is wasted and the layers above the deepest
# token are still skipped. 0 (never) until a GPU run measures the crossover (gpu_scaling's
# mi+graphs-dense against mi+graphs).
DENSE_ROWS = 0

# One graph for the whole stack when every layer of a forward runs on the whole state ("all" or
# dense layers: full depth, or dense MI): such layers issue the same kernels on the same
# buffers, so the stack's graph is keyed by the sizes and the number of layers alone and replays
# with one launch instead of one per layer. H200 run 5's follow-up: a batch-1 graph-mode forward
# is host-bound at ~1.0 ms, 12 cudaGraphLaunch calls of it 197 us (16 us each). Off with
# `per_layer()` (a benchmark's A/B).
STACK = True


# cuda_graphs="auto": graph mode for a forward of at most AUTO_ROWS active rows per layer on
# average (its token-layers over the encoder's layers), eager above. H200 run 5 (bench/results/h200,
# bf16 BERT-base, IMDB lengths): graph mode won at 1.8k-7.2k rows per layer (fixed and MI at
# batch 1 and 16, MI at batch 64: 1.19x-6.1x) and lost at 14.3k (fixed at batch 64, 0.89x;
# fixed and MI at batch 128, 0.80x / 0.76x), where the GPU is the limit and graph mode's own
# GPU time is higher: the follow-up's kernel profile at batch 128 puts about half of it on the
# bucket's padded rows and half on the GEMM cuBLAS picks at the bucketed row count. 10240 lies
# between.
AUTO_ROWS = 10240


def kernel_choice() -> tuple:
    """The settings that pick which kernels a layer launches (attention.FLASH, norm.FUSED,
    norm.CUDA_CPP; torch's float32 matmul precision, TF32 or not in cuBLAS and the Triton
    attention; cuBLAS's reduced-precision reductions for bf16 / fp16). A graph bakes in the
    kernels of its capture, so this is part of its key: a forward under other settings captures
    its own graphs instead of replaying another's kernels (an A/B of two settings in one
    process would otherwise time one of them twice)."""
    matmul = torch.backends.cuda.matmul
    return (attention.FLASH, norm.FUSED, norm.CUDA_CPP, torch.get_float32_matmul_precision(),
            matmul.allow_bf16_reduced_precision_reduction, matmul.allow_fp16_reduced_precision_reduction)


def auto(token_layers: int, num_layers: int, device) -> bool:
    """cuda_graphs="auto"'s choice for a forward on `device` of `token_layers` active (token,
    layer) pairs through `num_layers` layers: graph mode on a GPU, up to AUTO_ROWS per layer."""
    return torch.device(device).type == "cuda" and token_layers <= AUTO_ROWS * num_layers


def check_mode(value):
    """value, if it is a cuda_graphs setting (True, False or "auto"); else ValueError."""
    if value is not True and value is not False and value != "auto":
        raise ValueError(f'cuda_graphs must be True, False or "auto", got {value!r}')
    return value


def device_plan():
    """Inside: graph mode plans depths given on the GPU there (PLAN_ON_HOST off)."""
    return settings.switched(globals(), "PLAN_ON_HOST", False)


def per_layer():
    """Inside: one graph per layer always (STACK off)."""
    return settings.switched(globals(), "STACK", False)


def dense_layers(rows: int = 1 << 62):
    """Inside: forwards whose compact state has at most `rows` rows run dense layers (DENSE_ROWS);
    by default every forward."""
    return settings.switched(globals(), "DENSE_ROWS", rows)


def bucket(n: int, floor: int = 16) -> int:
    """Smallest m * 2**e >= n with m in 4..7: four sizes per octave, at most 25 % above n."""
    if n <= floor:
        return floor
    e = n.bit_length() - 3
    return -(-n >> e) << e  # ceil(n / 2**e) * 2**e, and ceil(n / 2**e) lies in 4..8


def batch_bucket(b: int) -> int:
    """Sequences, padded with empty ones: the next power of two."""
    return 1 << max(b - 1, 0).bit_length()


class EagerGraph:
    """A stand-in for a CUDA graph: replay() calls the captured function again."""

    def run_and_capture(self, fn, pool=None, stream=None):
        fn()
        self._fn = fn

    def replay(self):
        self._fn()


class CaptureFailed(RuntimeError):
    """A layer ran, but its capture failed: that key runs eagerly from then on."""


class Graph:
    """torch.cuda.CUDAGraph around one function that reads and writes only fixed buffers.

    Captured on a side stream with capture_begin/capture_end rather than `torch.cuda.graph`,
    whose entry synchronizes the device, collects garbage and empties the allocator's cache:
    tens of milliseconds per capture, and a pool of documents at batch 1 captures hundreds.
    One side stream for all captures of a cache: cuBLAS keeps a workspace per stream."""

    def run_and_capture(self, fn, pool=None, stream=None):
        """Run fn once (this call's result), then capture it, both on the capture stream: the
        eager run is the warm-up (cuBLAS workspace, Triton compile) that capture needs. A
        capture that fails raises CaptureFailed, after the eager run's work is done."""
        self._graph = torch.cuda.CUDAGraph()
        side = stream if stream is not None else torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream(side.device))
        try:
            with torch.cuda.device(side.device), torch.cuda.stream(side):
                fn()
                try:
                    # thread_local: another thread's CUDA work (another encoder) does not break it
                    self._graph.capture_begin(pool=pool, capture_error_mode="thread_local")
                    try:
                        fn()
                    finally:
                        self._graph.capture_end()
                except RuntimeError as e:  # e.g. an op that waits for the GPU, which capture forbids
                    raise CaptureFailed(f"{type(e).__name__}: {e}") from e
        finally:
            torch.cuda.current_stream(side.device).wait_stream(side)

    def replay(self):
        self._graph.replay()


class Buffers:
    """The fixed tensors the layer graphs of one state size K^ read and write.

    state (K^, D): the compact state. ints (N+2, K^) int64: row 0 each state row's position in
    its sequence (for a relative position bias), row 1 the real tokens' flattened rows (first
    K entries), row 2+n layer n's query rows into the state (first A_n entries, then K: the
    first dummy row). tables {T^: (2T^-1, H)}: a relative position bias's distance table per
    padded length. offsets(B^) (N+1, B^+1) int64: row 0 the key offsets, row 1+n layer n's query offsets."""

    def __init__(self, num_layers: int, k_hat: int, dim: int, dtype, device):
        self.num_layers, self.device = num_layers, device
        self.state = torch.zeros(k_hat, dim, dtype=dtype, device=device)
        self.ints = torch.zeros(num_layers + 2, k_hat, dtype=torch.int64, device=device)
        self.tables: dict = {}
        self._offsets: dict = {}

    def offsets(self, b_hat: int) -> torch.Tensor:
        if b_hat not in self._offsets:
            self._offsets[b_hat] = torch.zeros(self.num_layers + 1, b_hat + 1, dtype=torch.int64, device=self.device)
        return self._offsets[b_hat]


class GraphCache:
    """Buffers and captured layer graphs of one encoder; one forward at a time (the lock)."""

    def __init__(self, graph_cls, device=None):
        self.graph_cls, self.device = graph_cls, device
        self.lock = threading.Lock()
        self.buffers: dict = {}
        # key -> (Seals, graph, None) or (Seals, None, the layers' function) if its capture failed;
        # least recently used first
        self.graphs: OrderedDict = OrderedDict()
        self.max_graphs = MAX_GRAPHS
        self.seals: dict = {}  # layer index -> Seal of the layer as last checked
        self.done = None  # CUDA event: the last graph-mode forward's work is finished
        self.captures = 0  # graphs captured so far (benchmarks report them)
        self.capture_errors: list = []  # "key: error" of each capture that failed (that key runs eagerly)
        self.replays = 0
        cuda = graph_cls is Graph
        self.pool = torch.cuda.graph_pool_handle() if cuda else None
        # Where every capture of this cache runs (and its warm-up: cuBLAS keeps a workspace per
        # stream), on the encoder's GPU.
        self.stream = torch.cuda.Stream(device=device) if cuda else None

    def get_buffers(self, num_layers, k_hat, dim, dtype, device) -> Buffers:
        key = (k_hat, dim, dtype, str(device))
        if key not in self.buffers:
            self.buffers[key] = Buffers(num_layers, k_hat, dim, dtype, device)
        return self.buffers[key]

    def run(self, key, seals: tuple, make_fn) -> None:
        """Replay the graph of `key` if it was captured under these seals (its layers' Seals, one
        per layer it runs: each layer unchanged since; == compares them by identity); else run
        make_fn()() now and capture it. The seals hold the tensors the graph baked in, so none of
        their memory is freed while the graph lives."""
        hit = self.graphs.get(key)
        if hit is not None and hit[0] == seals:
            if hit[1] is not None:
                hit[1].replay()
                self.replays += 1
            else:  # its capture failed once: eager, as it was then
                hit[2]()
            self.graphs.move_to_end(key)
            return
        graph, fn = self.graph_cls(), make_fn()
        try:  # runs once (this call's result), then records without running: never twice
            graph.run_and_capture(fn, pool=self.pool, stream=self.stream)
        except CaptureFailed as e:
            self.capture_errors.append(f"{key}: {e}")
            graph = None
            if self.stream is not None:  # the failed capture may leave its pool bound to that stream
                self.stream = torch.cuda.Stream(device=self.device)
        self.graphs[key] = (seals, graph, fn if graph is None else None)
        self.graphs.move_to_end(key)
        self.captures += graph is not None
        while len(self.graphs) > self.max_graphs:  # least recently used first
            self.graphs.popitem(last=False)

    def layer_seal(self, encoder, n: int, eligible):
        """The Seal of layer n, rebuilt when the layer changed; None if it cannot run in graph
        mode (eligible(its LayerParts) False, or a module of it in training mode or hooked)."""
        layer = encoder.layer[n]
        hit = self.seals.get(n)
        if hit is not None and hit.holds(layer):
            return hit
        seal = Seal(layer)
        if not seal.holds(layer) or not eligible(encoder.family.parts(layer)):
            return None
        if hit is not None:
            # The layer changed: its graphs and the stacks' bake in what it was (and keep it alive).
            for key in [k for k in self.graphs if k[0] == n or k[0] == "stack"]:
                del self.graphs[key]
        self.seals[n] = seal
        return seal


class Seal:
    """What a layer's graphs assume about it, checkable in microseconds on every call (the
    module attribute lookups of a full walk cost tens): the same submodules under the same
    names, the same parameter tensors with the same storage and version, every module in eval
    mode and without hooks. A module's class and code are read when the seal is made."""

    def __init__(self, layer):
        self.layer = layer
        self.modules = list(layer.modules())
        # The modules' own dicts, read directly: nn.Module attribute lookups cost ~0.4 us each.
        self.links = [(m._modules, name, child) for m in self.modules for name, child in m._modules.items()]
        self.params = [(m._parameters, name, t, t.data_ptr(), None if t.is_inference() else t._version)
                       for m in self.modules for name, t in m._parameters.items() if t is not None]
        # Mode and hooks read from each module's instance dict (where nn.Module keeps them): the
        # same attribute reads cost 3x as much at a call site that sees ten module classes.
        self.states = [m.__dict__ for m in self.modules]

    def holds(self, layer) -> bool:
        if layer is not self.layer:
            return False
        for modules, name, child in self.links:
            if modules.get(name) is not child:
                return False
        try:
            for state in self.states:
                if state["training"] or state["_forward_hooks"] or state["_forward_pre_hooks"]:
                    return False
        except KeyError:  # a module that keeps them elsewhere (a class property): never sealed, eager
            return False
        for params, name, t, ptr, version in self.params:
            if params.get(name) is not t or t.data_ptr() != ptr or (version is not None and t._version != version):
                return False
        return True


# Caches by encoder, outside the module: copies and pickles of an encoder start without one,
# and a freed encoder's graphs go with it.
_CACHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def cache_for(encoder, device) -> GraphCache:
    """The encoder's graph cache for `device`: CUDA graphs per GPU, the eager stand-in on CPU."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with _CACHES_LOCK:
        per = _CACHES.setdefault(encoder, {})
        if str(device) not in per:
            per[str(device)] = GraphCache(Graph if device.type == "cuda" else EagerGraph, device)
        return per[str(device)]


def clear(encoder) -> None:
    """Free the encoder's graphs and buffers (they are rebuilt on the next graph-mode call)."""
    with _CACHES_LOCK:
        _CACHES.pop(encoder, None)


def run(encoder, x: torch.Tensor, plan, backend: str, eligible) -> torch.Tensor | None:
    """The layer stack of `plan` in graph mode. x (B,T,D); eligible(parts):
    whether a layer can be captured (plain modules, no hooks: the encoder's direct path).
    Returns the (B*T, D) state, as AdaptiveEncoder._run does, or None if some layer is not
    eligible (the caller then runs eagerly)."""
    from . import ops

    B, T, D = x.shape
    flat = x.reshape(B * T, D)
    n_max, K = plan.n_max, plan.num_real
    if n_max == 0:
        return flat.clone()
    counts = plan.layer_counts[:n_max]
    sizes = layer_sizes(counts, K, B, T, DENSE_ROWS)
    k_hat, b_hat = sizes[0][1], sizes[0][2]
    a_hat = [k_hat if s[0] in ("all", "dense") else s[0] for s in sizes]
    cache = cache_for(encoder, x.device)
    with cache.lock, (torch.cuda.device(x.device) if x.is_cuda else nullcontext()):  # replays use its streams
        sealed = [cache.layer_seal(encoder, n, eligible) for n in range(n_max)]
        if any(s is None for s in sealed):
            return None
        if cache.done is not None:  # the last forward's GPU work on the buffers, from any stream
            torch.cuda.current_stream(x.device).wait_event(cache.done)
        buf = cache.get_buffers(encoder.num_layers, k_hat, D, x.dtype, x.device)
        offs = buf.offsets(b_hat)
        # The integer tables, built where the plan is (on the host for a host-side plan: then
        # one pinned copy each, and the forward never waits for the GPU).
        ints, offsets = _tables(plan, T, k_hat, b_hat, n_max)
        _copy(buf.ints[:ints.shape[0]], ints)
        _copy(offs[:n_max + 1], offsets)
        key_rows = buf.ints[1, :K]
        # The compact state: the real tokens in order. The dummy rows after them are in no
        # sequence and hold whatever the last forward left there (never read by a real row).
        torch.index_select(flat, 0, key_rows, out=buf.state[:K])
        table = None
        if encoder.family.distance_bias is not None:  # MPNet: the distance table for T^
            fresh = encoder.family.distance_bias({m: getattr(encoder, m) for m in encoder.family.encoder_modules},
                                                 bucket(T))
            table = buf.tables.setdefault(fresh.shape[0], torch.empty_like(fresh))
            table.copy_(fresh)  # the weights may have changed: refilled every call, at a fixed address
        dev_key = (D, x.dtype, str(x.device), backend, None if table is None else table.shape[0], kernel_choice())
        steps = [partial(_step, encoder, seal.layer, buf, n, offs, table, a_hat[n], sizes[n][0], sizes[n][3:], backend,
                         ops) for n, seal in enumerate(sealed)]
        if STACK and all(size[0] in ("all", "dense") for size in sizes):  # one graph, one launch (STACK)
            cache.run(("stack", n_max, *sizes[0][1:], dev_key), tuple(sealed), lambda: _chain([m() for m in steps]))
        else:
            for n, (seal, make) in enumerate(zip(sealed, steps)):
                cache.run((n, *sizes[n], dev_key), (seal,), make)
        if plan.key_rows is None:
            out = buf.state[:K].clone()
        else:
            out = flat.clone().index_copy_(0, key_rows, buf.state[:K])
        if x.is_cuda:
            # The lock is released before the GPU is done: a forward from another thread (maybe
            # on another stream) waits for this event before it writes the buffers.
            if cache.done is None:
                cache.done = torch.cuda.Event()
            cache.done.record(torch.cuda.current_stream(x.device))
        return out


def layer_sizes(counts: list, K: int, B: int, T: int, dense_rows: int = 0) -> list:
    """The fixed sizes each layer's graph bakes in (the shape part of its key), for layers with
    `counts` queries among K real tokens in B sequences padded to length T: per layer
    (A^, "all" or "dense", K^, B^, max_q, max_k). "all": every real token is a query (the whole
    state); "dense": some are not, but K^ <= dense_rows (DENSE_ROWS), so the layer runs on the
    whole state and writes back the active rows. max_q, max_k bound each sequence's queries and
    keys by T^ = bucket(T + 1) (+ 1: at batch 1, where K = T, the same bucket as K^, so no extra
    keys), for the attention grid and the reference's padding; bounded by the row counts they
    would launch ~A^ * B^ / 64 programs per head, nearly all idle (quadratic in the batch)."""
    k_hat, b_hat, t_hat = bucket(K + 1), batch_bucket(B), bucket(T + 1)
    whole = min(t_hat, k_hat)
    return [("all" if c == K else "dense", k_hat, b_hat, whole, whole) if c == K or k_hat <= dense_rows
            else (bucket(c), k_hat, b_hat, min(t_hat, bucket(c)), whole) for c in counts]


def _tables(plan, T: int, k_hat: int, b_hat: int, n_max: int) -> tuple:
    """(ints, offsets) for Buffers.ints[:n_max+2] and Buffers.offsets(b_hat)[:n_max+1], built on
    the plan's device. Padding entries: K (the first dummy row) in the layers' rows; empty
    sequences in the offsets (which end at K keys and A_n queries: the dummy rows and padded
    queries are in no sequence)."""
    dev, B, K = plan.rows.device, plan.batch, plan.num_real
    ints = torch.full((n_max + 2, k_hat), K, dtype=torch.int64, device=dev)
    key_rows = plan.key_rows if plan.key_rows is not None else torch.arange(K, device=dev)
    torch.remainder(key_rows, T, out=ints[0, :K])
    ints[0, K:] = 0
    ints[1, :K] = key_rows
    # each layer's active rows as indices into the compact state, at row 2+n from column 0
    _fill_layer_rows(ints, plan, n_max, per_layer=dev.type == "cpu" and sum(plan.layer_counts) >= 4096)
    offsets = torch.empty((n_max + 1, b_hat + 1), dtype=torch.int64, device=dev)
    offsets[0, :B + 1] = plan.cu_k
    offsets[1:, :B + 1] = plan.cu_q_table[:n_max]
    offsets[:, B + 1:] = offsets[:, B:B + 1]
    return ints, offsets


def _fill_layer_rows(ints: torch.Tensor, plan, n_max: int, per_layer: bool) -> None:
    """ints[2+n, :A_n] = layer n's state rows, for n < n_max. per_layer: one slice copy per layer;
    else one indexed fill for all layers (on a GPU: 5 launches, not one per layer). On the host
    the indexed fill wins below ~4k rows in all, the slice copies above (TREC MI depths on IMDB
    lengths, 12 layers: 27 vs 38 us at 1.7k rows, 110 vs 40 us at 24k, 300 vs 60 us at 85k)."""
    counts, k_hat = plan.layer_counts[:n_max], ints.shape[1]
    if per_layer:
        for n in range(n_max):
            ints[2 + n, :counts[n]] = plan.state_rows[plan.layer_slice(n)]
        return
    dev = ints.device
    starts = [sum(counts[:n]) for n in range(n_max)]
    S = starts[-1] + counts[-1]
    dest = torch.arange(S, device=dev) + _per_layer_row(plan, n_max, [(2 + n) * k_hat - starts[n] for n in range(n_max)],
                                                         dev)
    ints.view(-1).index_copy_(0, dest, plan.state_rows[:S])


def _per_layer_row(plan, n_max: int, values: list, dev) -> torch.Tensor:
    """(S,) int64 on dev: values[n] at each of layer n's entries of the plan's rows, for n < n_max.
    One small transfer and no wait for a GPU (the counts are host ints, so the size is known)."""
    counts = plan.layer_counts[:n_max]
    host = to_device(torch.tensor(values + counts, dtype=torch.int64), dev)
    return torch.repeat_interleave(host[:n_max], host[n_max:], output_size=sum(counts))


def _chain(fns: list):
    """One function calling fns in order (a stack's layers, captured as one graph)."""
    def chained():
        for fn in fns:
            fn()
    return chained


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    dst.copy_(to_device(src, dst.device), non_blocking=True)


def _step(encoder, layer, buf: Buffers, n: int, offs, table, a_hat: int, kind, bounds: tuple, backend: str,
          ops):
    """Layer n on the buffers, reading nothing else of this call (what a graph replays).
    offs: the offset buffer of this batch bucket; table: the distance table buffer of a
    relative position bias, or None; kind: layer_sizes' first entry ("all", "dense" or A^);
    bounds: (max_q, max_k) of any sequence in these buckets."""
    max_q, max_k = bounds
    pos, cu_k, cu_q = buf.ints[0], offs[0], offs[1 + n]
    idx = buf.ints[2 + n, :a_hat]
    if kind in ("all", "dense"):  # the whole state: one fused q/k/v GEMM, no gather
        def step():
            # Only the layer's rows are written back (its last LayerNorm writes them into the
            # state): halted rows keep their state; the padding entries all write the first
            # dummy row, with the same values.
            bias = None if table is None else (table, pos, pos)
            encoder._layer(layer, buf.state, buf.state, cu_k, cu_k, max_k, max_k, backend, bias, into=idx,
                           at_rows=True)
    else:
        def step():
            xq = ops.gather(buf.state, idx, backend=backend, check=False)
            bias = None if table is None else (table, pos[idx], pos)
            encoder._layer(layer, xq, buf.state, cu_q, cu_k, max_q, max_k, backend, bias, into=idx)
    return step
