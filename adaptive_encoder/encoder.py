"""AdaptiveEncoder: an encoder that computes, at layer n, only the tokens with depth >= n.

The state holds the K real tokens only (padding never enters). Per layer: gather the active
rows of the state into a compact (A, D) tensor, run query projection, attention, output
projection and FFN on those A rows only (keys and values come from every real token of the
sequence, halted ones included), scatter the results back; halted rows are copied through.
Layers above n_max = max depth are not run.

The layer code is shared by every supported family (families.py maps a family's layer
onto q/k/v, attention output and FFN); nothing here knows a family's module names.
"""
import weakref
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module
from torch.utils.checkpoint import checkpoint

from . import graphs, norm, ops, settings
from .attention import varlen_attention
from .families import Closing, check_supported
from .plan import Plan, make_plan, to_host


@dataclass
class AdaptiveEncoderOutput:
    last_hidden_state: torch.Tensor  # (B, T, D): each token's state after its own last layer
    plan: Plan


def _base_and_encoder(model) -> tuple:
    """(base model or None, encoder module with .layer and .config) of a transformers model,
    its base model, or its encoder."""
    base = getattr(model, "base_model", model)
    config = getattr(base, "config", None)
    if config is not None and getattr(config, "model_type", None) is not None:
        from .families import family_of

        enc = getattr(base, family_of(config).encoder_attr, None)
        if enc is not None and hasattr(enc, "layer"):
            return base, enc
    if hasattr(model, "layer") and hasattr(model, "config"):  # the encoder itself (BERT-like ones keep a config)
        return None, model
    raise TypeError(f"expected a transformers encoder model (or its encoder), got {type(model).__name__}")


def encoder_and_config(model) -> tuple:
    """(encoder module with .layer, config) of a transformers model or its encoder."""
    base, enc = _base_and_encoder(model)
    return enc, (base.config if base is not None else enc.config)


# Concatenated projection weights for inference. An entry is valid only while the very same
# source tensors are alive (weak references: a freed model's addresses can be reused by the
# next one) with the same storage and version counters (an optimizer step or load_state_dict
# bumps the version). Derived data only, no per-call state; pruned of dead entries.
_FUSED: dict = {}


# Dense layers in eager inference. While the host is the limit (a GPU below ~30 IMDB documents
# a batch, bench/NOTES.md) a forward costs what it launches, and a compact layer launches more
# than a full-depth one: a gather, a separate query GEMM and the k/v GEMM where one q/k/v GEMM
# does (10 kernels against 8). A forward with at most DENSE_ROWS real tokens runs each layer
# that has halted tokens on every row instead, and its last LayerNorm writes back only the
# active rows (the fused kernel's at_rows form: no gather, no scatter): full depth's kernels,
# the halted rows' work wasted, the layers above the deepest token still skipped. 0 (never)
# until a GPU run measures where it pays (gpu_scaling's mi+dense against mi); graph mode has
# its own threshold (graphs.DENSE_ROWS).
DENSE_ROWS = 0


def dense_layers(rows: int = 1 << 62):
    """Inside: eager inference forwards with at most `rows` real tokens run dense layers
    (DENSE_ROWS); by default every forward."""
    return settings.switched(globals(), "DENSE_ROWS", rows)


_WHERE = " (depths and attention_mask: on hidden_states' device, or both on the CPU)"


def _stamp(tensors) -> tuple:
    """What a fused-weight copy baked in: each tensor's identity, storage and version counter."""
    return tuple((id(t), t.data_ptr(), t._version) for t in tensors)


def _wb(m: nn.Module) -> tuple:
    """(weight, bias) of an exact nn.Linear / nn.LayerNorm (what _direct admits), read from its
    `_parameters` (where attribute access finds them, and torch.func.functional_call puts its
    tensors): nn.Module.__getattr__ costs ~0.6 us a lookup, a dozen per layer."""
    p = m._parameters
    return p["weight"], p["bias"]


def _stacked(params) -> tuple:
    """(weight, bias) of (weight, bias) pairs concatenated along the output dimension."""
    with torch.no_grad():
        w = torch.cat([wb[0] for wb in params])
        b = None if any(wb[1] is None for wb in params) else torch.cat([wb[1] for wb in params])
    return w, b


def _fused(*linears) -> tuple:
    """(weight, bias) of the plain nn.Linear modules stacked along the output dimension."""
    params = [_wb(lin) for lin in linears]
    tensors = [t for wb in params for t in wb if t is not None]
    if any(t.is_inference() for t in tensors):
        # Weights made under torch.inference_mode have no version counter, so an in-place change
        # (made in inference mode) could not be seen: a cached copy would go stale silently. The
        # copy is made afresh every call instead (one cat per layer; in graph mode it is part of
        # the graph, which then reads the weights as they are at each replay).
        return _stacked(params)
    key = tuple(id(t) for t in tensors)
    stamp = _stamp(tensors)
    hit = _FUSED.get(key)
    if hit is not None and all(r() is t for r, t in zip(hit[0], tensors)) and hit[1] == stamp:
        return hit[2]
    w, b = _stacked(params)
    for k in [k for k, v in list(_FUSED.items()) if any(r() is None for r in v[0])]:
        _FUSED.pop(k, None)  # a miss is rare (first call per layer): drop entries of freed models
    _FUSED[key] = (tuple(weakref.ref(t) for t in tensors), stamp, (w, b))
    return w, b


class AdaptiveEncoder(nn.Module):
    """Depth-adaptive drop-in for a transformers encoder; shares (does not copy) its weights.

    forward(hidden_states (B,T,D) float, depths (B,T) int in [0,N] or None (= all N),
            attention_mask (B,T) 1 = real token or None) -> AdaptiveEncoderOutput
    attention_mask: any nonzero value is a real token, as transformers 5 reads a 2-D mask. An
    additive mask (0 kept, negative masked) would be read inverted, as transformers 5 reads it
    without a word: a floating-point mask with a negative value is refused (one host read of
    the mask, for floating-point masks only).
    depths and attention_mask are on hidden_states' device, or both on the CPU: with states on
    a GPU the plan is then made on the host and the forward never waits for the GPU (the
    output's plan stays on the host).

    Supported: the model types in `adaptive_encoder.families.SUPPORTED`; anything else is
    refused in the constructor.
    """

    def __init__(self, layers: nn.ModuleList, config, backend: str | None = None, modules: dict | None = None,
                 cuda_graphs: bool | str = False):
        super().__init__()
        graphs.check_mode(cuda_graphs)
        ops.check_backend_name(backend)
        family = check_supported(config, layers)
        self.layer = layers
        # Encoder-level modules the layers use (MPNet's relative_attention_bias), same names.
        modules = modules or {}
        missing = [m for m in family.encoder_modules if m not in modules]
        if missing:
            raise ValueError(f"a {config.model_type} encoder needs its {', '.join(missing)} (use from_model)")
        for name in family.encoder_modules:
            setattr(self, name, modules[name])
        self.family = family  # the adapter of config.model_type (module-level functions: picklable)
        self.config = config
        self.num_layers = len(layers)
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.backend = backend
        self.cuda_graphs = cuda_graphs  # inference on CUDA: one graph launch per layer (graphs.py)

    @classmethod
    def from_model(cls, model, backend: str | None = None, first_layer: int = 0,
                   cuda_graphs: bool | str = False) -> "AdaptiveEncoder":
        """Share the layers of a transformers model (BertModel, RobertaForMaskedLM, MPNetModel, ...)
        or its encoder; `first_layer` > 0 keeps only the layers from there up (a partial stack)."""
        enc, config = encoder_and_config(model)
        layers = enc.layer
        modules = {m: getattr(enc, m) for m in check_supported(config, ()).encoder_modules}
        # The source's mode: a new ModuleList (first_layer > 0) starts in training mode, and
        # .train() below sets it on the shared layers, so reading it there would switch an
        # eval-mode model's dropout on.
        training = layers.training
        if first_layer:
            layers = nn.ModuleList(list(layers)[first_layer:])
        return cls(layers, config, backend=backend, modules=modules, cuda_graphs=cuda_graphs).train(training)

    from_bert = from_model  # the original name, kept

    # -- input checks: one message per bad argument, naming it --
    def _check(self, hidden_states, depths, attention_mask):
        if not isinstance(hidden_states, torch.Tensor) or not hidden_states.is_floating_point():
            raise TypeError("hidden_states must be a floating-point tensor")
        if hidden_states.dim() != 3:
            raise ValueError(f"hidden_states must be (batch, seq, hidden), got shape {tuple(hidden_states.shape)}")
        B, T, D = hidden_states.shape
        if D != self.hidden_size:
            raise ValueError(f"hidden_states has hidden size {D}, the model has {self.hidden_size}")
        if B == 0 or T == 0:
            raise ValueError(f"hidden_states is an empty batch (shape {tuple(hidden_states.shape)})")
        weight = self.family.parts(self.layer[0]).query.weight
        if hidden_states.dtype != weight.dtype:
            raise TypeError(f"hidden_states dtype {hidden_states.dtype} differs from the model's {weight.dtype}")
        if hidden_states.device != weight.device:
            raise ValueError(f"hidden_states is on {hidden_states.device}, the model on {weight.device}")
        # depths and mask live on hidden_states' device, or both on the CPU with CUDA states: a
        # host-side plan, whose numbers need no device sync (what graph mode wants).
        host = torch.device("cpu")
        given = [t.device for t in (depths, attention_mask) if isinstance(t, torch.Tensor)]
        plan_device = host if given and all(d == host for d in given) else hidden_states.device
        if depths is not None:  # None: full depth, planned from the mask alone (plan.make_plan)
            if not isinstance(depths, torch.Tensor) or depths.is_floating_point() or depths.is_complex() \
                    or depths.dtype == torch.bool:
                raise TypeError(f"depths must be an integer tensor, got {getattr(depths, 'dtype', type(depths))}")
            if depths.shape != (B, T):
                raise ValueError(f"depths must have shape {(B, T)} (batch, seq), got {tuple(depths.shape)}")
            if depths.device != plan_device:
                raise ValueError(f"depths is on {depths.device}, hidden_states on {hidden_states.device}"
                                 + ("" if attention_mask is None else f", attention_mask on {attention_mask.device}")
                                 + _WHERE)
        if attention_mask is None:
            mask = torch.ones((B, T), dtype=torch.bool, device=plan_device)
        else:
            if not isinstance(attention_mask, torch.Tensor):
                raise TypeError("attention_mask must be a tensor or None")
            if attention_mask.shape != (B, T):
                raise ValueError(f"attention_mask must have shape {(B, T)}, got {tuple(attention_mask.shape)}")
            if attention_mask.device != plan_device:
                raise ValueError(f"attention_mask is on {attention_mask.device}, hidden_states on {hidden_states.device}"
                                 + ("" if depths is None else f", depths on {depths.device}") + _WHERE)
            if attention_mask.is_floating_point() and bool((attention_mask < 0).any()):
                raise ValueError("attention_mask has negative values: an additive mask (0 = keep, negative = masked) "
                                 "would be read inverted; pass the 0/1 mask (1 = real token)")
            mask = attention_mask != 0
        return None if depths is None else depths.to(torch.int64), mask

    def forward(self, hidden_states: torch.Tensor, depths: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, backend: str | None = None,
                cuda_graphs: bool | str | None = None) -> AdaptiveEncoderOutput:
        """cuda_graphs: None = the encoder's setting; True, False, or "auto" (graph mode on a GPU
        for forwards of at most graphs.AUTO_ROWS active rows per layer, where it was measured to
        pay; eager above). Graphs apply to inference in eval mode,
        without autocast, on layers of plain modules without hooks (every supported family);
        any other call runs eagerly, with the same results. On CPU tensors the same bucketed
        path runs without graphs (what the tests check)."""
        depths, mask = self._check(hidden_states, depths, attention_mask)
        graphed = self.cuda_graphs if cuda_graphs is None else graphs.check_mode(cuda_graphs)
        state, plan = self._run(hidden_states, depths, mask, backend or self.backend, graphed=graphed)
        return AdaptiveEncoderOutput(last_hidden_state=state.view(hidden_states.shape), plan=plan)

    def all_layer_states(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list:
        """Full depth; the (B,T,D) state after each of the N layers (for anytime heads)."""
        depths, mask = self._check(hidden_states, None, attention_mask)
        states = []
        self._run(hidden_states, depths, mask, self.backend, on_layer=lambda s: states.append(s.view(hidden_states.shape)))
        return states

    def _run(self, hidden_states, depths, mask, backend, on_layer=None, graphed=False):
        B, T, D = hidden_states.shape
        backend = ops.resolve_backend(hidden_states.device, backend)
        # The plan is made where depths and mask are: on the CPU with states on a GPU (a
        # host-side plan) it is copied over without a sync. The plan returned stays there.
        # Graph mode brings depths given on the GPU to the host first (graphs.PLAN_ON_HOST).
        if graphed and (on_layer is not None or not self._graphable()):
            graphed = False
        if graphed == "auto":  # graph mode for small forwards on a GPU (graphs.AUTO_ROWS)
            depths, mask, graphed = self._auto_graphs(hidden_states.device, depths, mask)
        if graphed and mask.is_cuda and graphs.PLAN_ON_HOST:  # graph mode plans on the host
            depths, mask = to_host(depths, mask)
        host_plan = mask.device != hidden_states.device
        plan = make_plan(depths, mask, self.num_layers,
                         backend=ops.resolve_backend(mask.device) if host_plan else backend)
        if graphed:
            state = graphs.run(self, hidden_states, plan, backend, _graph_eligible)
            if state is not None:
                return state, plan
        given = plan
        if host_plan:
            plan = plan.to(hidden_states.device)
        flat = hidden_states.reshape(B * T, D)
        # The plan's rows are in range and unique by construction (tests/test_properties.py),
        # so the per-call bounds checks of the public ops are skipped here.
        gather = lambda x, rows: ops.gather(x, rows, backend=backend, check=False)  # noqa: E731
        # The state holds the real tokens only (K rows, in order; lp.state_rows index it): no
        # per-layer gather of the keys, and at full depth no gather or scatter at all. With
        # padding it starts as a gather, which is this forward's own buffer; without, a copy
        # under inference, where it is then updated in place (no copy of the whole state per
        # layer) and q/k/v projections are fused into one GEMM per input.
        compact = plan.key_rows is not None
        inference = not torch.is_grad_enabled() and on_layer is None
        state = gather(flat, plan.key_rows) if compact else (flat.clone() if inference else flat)
        # The whole (B*T, D) state: padding rows keep the input, as in transformers' own layers
        # they never influence a real token.
        full = (lambda s: ops.scatter(flat, s, plan.key_rows, backend=backend, check=False)) if compact \
            else (lambda s: s)
        family = self.family
        bias = k_pos = q_pos = None
        if family.distance_bias is not None:  # relative position bias: by (key - query) position
            bias = family.distance_bias({m: getattr(self, m) for m in family.encoder_modules}, T)
            k_pos = (plan.key_rows if compact else torch.arange(B * T, device=state.device)) % T
            q_pos = plan.rows % T  # every layer's query positions in one op, sliced per layer
        # The same answer for every layer: asked once (~10 us a call). Small eager forwards are
        # launch-bound, where the Triton kernel's launch costs more than torch's pair (norm.EAGER_ROWS);
        # the C++ kernel's launch does not.
        fuse = _fuse_norms(state, backend)
        if fuse == "triton" and plan.num_real < norm.EAGER_ROWS:
            fuse = None
        # Dense layers (DENSE_ROWS): not under torch.compile, where the row count is data (asked
        # before the count is read: reading it there would guard on the data).
        dense = inference and DENSE_ROWS > 0 and not torch.compiler.is_compiling() and plan.num_real <= DENSE_ROWS
        for n in range(plan.n_max):
            lp = plan.layer(n)
            layer = self.layer[n]
            run = self._layer
            if self.training and getattr(layer, "gradient_checkpointing", False) and torch.is_grad_enabled():
                # (gradient|activation)_checkpointing_enable() on the transformers model set the
                # layer's flag and checkpoint function: recompute this layer in backward.
                ckpt = getattr(layer, "_gradient_checkpointing_func", None) or partial(checkpoint, use_reentrant=False)
                run = partial(ckpt, self._layer)
            # Every real token active: the whole state, no gather. (Not under torch.compile,
            # where the branch would guard on the data and recompile when it flips.)
            if not torch.compiler.is_compiling() and lp.count == plan.num_real:
                pos = None if bias is None else (bias, k_pos, k_pos)
                state = _like(run(layer, state, state, plan.cu_k, plan.cu_k, plan.max_k, plan.max_k, backend, pos,
                                  fuse), state)
            elif dense:  # every row computed, the active ones written back in place
                pos = None if bias is None else (bias, k_pos, k_pos)
                state = run(layer, state, state, plan.cu_k, plan.cu_k, plan.max_k, plan.max_k, backend, pos, fuse,
                            into=lp.state_rows, at_rows=True)
            else:
                queries = gather(state, lp.state_rows)
                pos = None if bias is None else (bias, q_pos[plan.layer_slice(n)], k_pos)
                args = (layer, queries, state, lp.cu_q, plan.cu_k, lp.max_q, plan.max_k, backend, pos, fuse)
                if inference:  # the output rows go into the state in place (fused into the last LayerNorm)
                    state = run(*args, into=lp.state_rows)
                else:  # autograd: a new state tensor
                    state = ops.scatter(state, _like(run(*args), state), lp.state_rows, backend=backend, check=False)
            if on_layer is not None:
                on_layer(full(state))
        return full(state), given

    def _auto_graphs(self, device, depths, mask) -> tuple:
        """cuda_graphs="auto": (depths, mask, whether graph mode runs this forward), from its
        token-layers, counted on the host: from a GPU that is one transfer, which waits for the
        GPU once (as the device plan's own read would). Graph mode then plans from those copies
        (graphs.PLAN_ON_HOST), the eager path from the tensors given."""
        host_depths, host_mask = to_host(depths, mask) if mask.is_cuda else (depths, mask)
        if host_depths is None:  # full depth: every real token through every layer
            total = int(host_mask.sum()) * self.num_layers
        else:
            total = int(torch.where(host_mask, host_depths.clamp(0, self.num_layers), 0).sum())
        graphed = graphs.auto(total, self.num_layers, device)
        if graphed and graphs.PLAN_ON_HOST:
            return host_depths, host_mask, True
        return depths, mask, graphed

    def _graphable(self) -> bool:
        """Whether graph mode can run this call exactly, before looking at the layers (graphs.run
        checks those): inference, eval mode, no autocast (a graph would bake in this call's
        casts), no global module hook."""
        return not (torch.is_grad_enabled() or self.training or torch.compiler.is_compiling()
                    or torch.is_autocast_enabled("cuda") or torch.is_autocast_enabled("cpu")
                    or _module._global_forward_hooks or _module._global_forward_pre_hooks)

    def _layer(self, layer, xq, xkv, cu_q, cu_k, max_q: int, max_k: int, backend=None, bias=None, fuse=False,
               into=None, at_rows: bool = False) -> torch.Tensor:
        """One post-LayerNorm layer on compact rows. xq (A,D) queries, xkv (K,D) keys/values -> (A,D).
        bias: None or (distance table (2T-1,H), query positions (A,), key positions (K,)).
        fuse: the fused add + LayerNorm kernel the closing steps may use (_fuse_norms: a kernel
        name, or None for torch's add and LayerNorm; False: asked here). into: None, or rows (A,)
        int64 of xkv (the state: contiguous, inference only) to write the output rows to, in
        place; xkv is returned then. The last LayerNorm writes them there itself where it is
        fused (adaptive_encoder/norm.py), else a scatter does.
        at_rows (with into, xq is xkv: a dense layer): only output rows `into` are written, each
        to its own row."""
        parts = self.family.parts(layer)
        H, Dh = self.num_heads, self.head_dim
        # The weight cache is eager-only and reads .weight/.bias: plain nn.Linear projections only
        # (a LoRA or quantized wrapper keeps its own forward).
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or not _plain(parts.query, parts.key, parts.value):
            q, k, v = _linear(parts.query, xq), _linear(parts.key, xkv), _linear(parts.value, xkv)
        elif xq is xkv:  # every token active: one GEMM for q, k and v
            q, k, v = F.linear(xq, *_fused(parts.query, parts.key, parts.value)).chunk(3, dim=-1)
        else:  # compact queries, all keys: one GEMM for k and v
            q = F.linear(xq, *_wb(parts.query))
            k, v = F.linear(xkv, *_fused(parts.key, parts.value)).chunk(2, dim=-1)
        q, k, v = q.reshape(-1, H, Dh), k.reshape(-1, H, Dh), v.reshape(-1, H, Dh)
        ctx = varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, scale=Dh ** -0.5, dropout_p=parts.attn_dropout,
                               backend=backend, bias=bias)
        ctx = ctx.reshape(-1, H * Dh)
        if not _direct_blocks(parts):  # a hook somewhere, or a wrapped linear / norm: the modules
            out = parts.ffn(parts.attn_output(ctx, xq))
            return out if into is None else _scatter_into(xkv, out, into, backend, at_rows)
        fuse = _fuse_norms(xq, backend) if fuse is False else fuse
        h = _close(parts.attn_out, ctx, xq, backend, fuse)
        return _close(parts.ffn_out, _activate(parts.act, F.linear(h, *_wb(parts.ffn_in))), h, backend, fuse,
                      None if into is None else (xkv, into, at_rows))


def _like(out: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """A layer's output in the state's dtype. They differ under torch.autocast, where a layer
    can end in the autocast dtype (CPU LayerNorm in bfloat16); the state keeps the input's."""
    return out if out.dtype == state.dtype else out.to(state.dtype)


def _direct(m: nn.Module, cls: type) -> bool:
    """Whether m is exactly `cls` with no hooks: then its forward is one functional call, and
    calling that skips the module machinery (a few microseconds a call, a dozen calls a layer)."""
    return type(m) is cls and not _hooked(m)


def _hooked(m) -> bool:
    """Forward hooks on m (if a module) or on every module (global ones)."""
    own = isinstance(m, nn.Module) and bool(m._forward_hooks or m._forward_pre_hooks)
    return own or bool(_module._global_forward_hooks or _module._global_forward_pre_hooks)


def _direct_blocks(parts) -> bool:
    """Whether the closing blocks can run as functional calls: plain nn.Linear / nn.Dropout /
    nn.LayerNorm pieces, and no hook on them or on the modules that contain them."""
    blocks = (parts.attn_out, parts.ffn_out)
    return (all(_direct(b.linear, nn.Linear) and _direct(b.norm, nn.LayerNorm)
                and (b.dropout is None or _direct(b.dropout, nn.Dropout)) for b in blocks)
            and _direct(parts.ffn_in, nn.Linear)
            and not any(_hooked(m) for m in (*parts.containers, parts.act)))


def _graph_eligible(parts) -> bool:
    """A layer graph mode can capture: the direct path (functional calls, read at capture)."""
    return _direct_blocks(parts) and _plain(parts.query, parts.key, parts.value)


def _plain(*modules) -> bool:
    return all(_direct(m, nn.Linear) for m in modules)


def _linear(lin: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, *_wb(lin)) if _direct(lin, nn.Linear) else lin(x)


def _close(block: Closing, x: torch.Tensor, residual: torch.Tensor, backend=None, fuse: str | None = None,
           into=None) -> torch.Tensor:
    """norm(dropout(linear(x)) + residual), as the transformers block computes it; only for
    blocks that passed _direct_blocks (plain modules, no hooks: not checked again here).
    fuse: _fuse_norms' answer (a kernel name, or None). into: None, or (state, rows, at_rows):
    write the rows into the state in place (at_rows: only x's rows `rows`, each to its own row)
    and return it."""
    y = F.linear(x, *_wb(block.linear))
    d = block.dropout
    if d is not None and d.training and d.p > 0:  # in eval not even the (identity) call: one op fewer
        y = F.dropout(y, d.p, True, d.inplace)
    ln = block.norm
    w, b = _wb(ln)
    if fuse is not None and _fusable(y, residual, w, b):  # one kernel: add, LayerNorm (and the scatter)
        return norm.unchecked(fuse, y, residual, w, b, float(ln.eps), into)
    # Inference: the residual goes into the GEMM's fresh output in place (one tensor and one
    # pass over it fewer; the same numbers). With autograd the sum is a new tensor, and under
    # autocast too (a bfloat16 GEMM output plus a float32 residual is a float32 sum there).
    y = y.add_(residual) if not torch.is_grad_enabled() and y.dtype == residual.dtype else y + residual
    out = F.layer_norm(y, ln.normalized_shape, w, b, ln.eps)
    return out if into is None else _scatter_into(into[0], out, into[1], backend, into[2])


def _fuse_norms(x: torch.Tensor, backend) -> str | None:
    """The fused add + LayerNorm kernel ("triton" or "cuda", norm.kernel_backend) a forward on
    states like x (its dtype, device, width) closes its blocks with, or None: only in inference
    (the kernels are forward only), eager (torch.compile fuses its own), without autocast (its
    casts happen in the unfused ops), and not the C++ CPU op (on CPU tensors torch's ops are
    faster: norm._CPU_TIMES)."""
    if not norm.FUSED or torch.is_grad_enabled() or torch.compiler.is_compiling() \
            or torch.is_autocast_enabled(x.device.type):
        return None
    kernel = norm.kernel_backend(x, backend)
    return kernel if kernel in ("triton", "cuda") else None


def _fusable(y: torch.Tensor, residual: torch.Tensor, w, b) -> bool:
    """Whether one block's closing step fits the kernel, where _fuse_norms said yes: one dtype for
    the GEMM output, residual and norm parameters, and an affine norm over the last dimension."""
    return (w is not None and b is not None and y.dtype == residual.dtype == w.dtype == b.dtype
            and w.shape == y.shape[-1:])


def _scatter_into(state: torch.Tensor, out: torch.Tensor, rows: torch.Tensor, backend,
                  at_rows: bool = False) -> torch.Tensor:
    """state[rows] = out (at_rows: out[rows]) in place, in the state's dtype; returns state."""
    if at_rows:
        out = ops.gather(out, rows, backend=backend, check=False)
    return ops.scatter_(state, _like(out, state), rows, backend=backend, check=False)


def _activate(act, y: torch.Tensor) -> torch.Tensor:
    """act(y) for y the FFN GEMM's fresh output, on the direct path (so act has no hooks:
    _direct_blocks checked). Inference with transformers' own GELU (erf, not overridden): in
    place, as above. Anything else: act's own call."""
    if not torch.is_grad_enabled() and _plain_gelu(act):
        return torch.ops.aten.gelu_(y)
    return act(y)


def _plain_gelu(act) -> bool:
    cls = type(act)
    return (cls.__name__ == "GELUActivation" and cls.__module__ == "transformers.activations"
            and cls.forward.__qualname__ == "GELUActivation.forward" and "forward" not in vars(act)
            and getattr(act, "act", None) is F.gelu)
