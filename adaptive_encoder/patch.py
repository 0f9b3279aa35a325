"""One call to run an existing transformers encoder model through AdaptiveEncoder.

    apply_adaptive_encoder(model)                 # BertModel, RobertaForSequenceClassification, ...
    model(input_ids, attention_mask=m, depths=d)  # d (B,T) ints in [0,N]; omit d for full depth

Supported model types: `adaptive_encoder.families.SUPPORTED`. Any other model, or a config
the adapter cannot run exactly, is refused before anything is changed.

Only the base model's encoder is replaced; embeddings, pooler, heads and weights stay, and
so do the state-dict keys. Stateless: the depths travel with the call. transformers 5 passes
a model's extra keyword arguments down to its encoder, so `depths=` reaches the patched
encoder through the call itself; one forward pre-hook on the base model (a plain module-level
function, so deepcopy and pickling work) adds the 2-D attention mask (the encoder is handed
only the 4-D form) and, with `depth_fn(input_ids, attention_mask) -> depths`, the depths
computed from the ids. MPNet's models drop extra keyword arguments, so for MPNet the same
per-call inputs travel in a context variable set for the duration of the call (see _CALLS).
Nothing is stored on a module between calls, so threads sharing one model each get their
own result.

`output_hidden_states=True` gives N+1 (B,T,D) states: the embeddings, then the state after
each layer n, where a token past its depth carries its last state (and layers above the
deepest token repeat the last state). `output_attentions=True` is an error: no attention
probabilities are ever formed. Gradient checkpointing (`model.gradient_checkpointing_enable()`)
is honoured per layer.

After `save_pretrained` / `from_pretrained` the model is plain transformers again: apply
this function again (and reload a depth table with `TokenDepthLookup.load`).
"""
from contextvars import ContextVar

import torch
from torch import nn

from . import graphs
from .encoder import AdaptiveEncoder, _base_and_encoder
from .families import check_supported

_MASK, _STATES = "adaptive_attention_mask", "adaptive_hidden_states"  # per-call kwargs we add

# MPNet's models do not pass **kwargs to their encoder, so for that family the per-call
# inputs travel in a context variable instead: a stack of (encoder, depths, 2-D mask, call
# kwargs) entries, pushed by the model's forward pre-hook and popped by its forward hook,
# which runs even when the forward raises. A ContextVar is per thread (and per asyncio
# task), lives on no module, and is empty between calls.
_CALLS: ContextVar[tuple] = ContextVar("adaptive_encoder_calls", default=())

# transformers output classes by name, looked up when an encoder is built: forward only reads
# this dict, because an import statement inside forward stops Dynamo under torch 2.11 with
# transformers 5.17 (measured on the H200 machine, 2026-11-27; torch 2.13 traces it).
_OUTPUT_CLASSES: dict = {}


def _output_class(name: str) -> type:
    cls = _OUTPUT_CLASSES.get(name)
    if cls is None:  # first encoder of this family in this process (or one unpickled here)
        from transformers import modeling_outputs

        cls = _OUTPUT_CLASSES[name] = getattr(modeling_outputs, name)
    return cls


class PatchedEncoder(AdaptiveEncoder):
    """AdaptiveEncoder with a transformers encoder's call signature.

    Reads `depths`, and the 2-D mask and hidden-state list that the base model's pre-hook
    adds, from the call's keyword arguments. Its only submodule is the shared `layer` list,
    so the model's state-dict keys are unchanged.
    """

    def __init__(self, encoder: nn.Module, config, depth_fn=None, backend: str | None = None,
                 modules: dict | None = None, cuda_graphs: bool | str = False, reads_first: str | None = None):
        super().__init__(encoder.layer, config, backend=backend, modules=modules, cuda_graphs=cuda_graphs)
        self.train(encoder.training)
        self.reads_first = reads_first  # what of the model reads position 0 (_first_position_reader)
        # Kept out of the module registry: a depth table is not a weight of the model, and
        # registering it would add keys to the transformers checkpoint.
        self.__dict__["depth_fn"] = depth_fn
        _output_class(self.family.encoder_output)  # resolved here, so forward has no import

    def forward(self, hidden_states, attention_mask=None, *args, depths=None, encoder_hidden_states=None,
                **kwargs):
        if encoder_hidden_states is not None:
            raise ValueError("the adaptive encoder has no cross-attention (encoder_hidden_states given)")
        if kwargs.get("output_attentions"):
            raise ValueError(_NO_ATTENTIONS)
        mask = kwargs.get(_MASK)
        # Only families whose models drop **kwargs use the context variable; the others never
        # read it, which keeps torch.compile's graph whole here (Dynamo cannot trace
        # ContextVar.get: a graph break per forward).
        calls = () if self.family.kwargs_reach_encoder else _CALLS.get()
        if calls and calls[-1][0] is self:  # this encoder's model was called with depths / a mask
            depths = calls[-1][1] if depths is None else depths
            mask = calls[-1][2] if mask is None else mask
        if mask is None and attention_mask is not None:  # called without the base model's hook
            mask = _key_mask_from_4d(attention_mask, hidden_states.shape[:2])
        depths, mask = self._check(hidden_states, depths, mask)
        states = kwargs.get(_STATES)
        if states is None and kwargs.get("output_hidden_states") is True:  # MPNet asks its encoder
            states = []
        on_layer = None
        if states is not None:
            states.append(hidden_states)
            on_layer = lambda s: states.append(s.view(hidden_states.shape))  # noqa: E731
        state, plan = self._run(hidden_states, depths, mask, self.backend, on_layer=on_layer, graphed=self.cuda_graphs)
        reader = getattr(self, "reads_first", None)  # absent in models pickled before it
        if reader is not None and plan.first_real is False:
            b = int((mask[:, 0] == 0).nonzero()[0, 0])
            raise ValueError(
                f"sequence {b} starts with padding (attention_mask[{b}, 0] is 0) and {reader} reads position 0: "
                "the adaptive encoder never computes padding, so that state would not be transformers' "
                "(which computes it). Pad on the right (tokenizer.padding_side = 'right')"
                + ("; or build the model without its pooler (add_pooling_layer=False) if pooler_output is "
                   "not used" if "pooler" in reader else ""))
        last = state.view(hidden_states.shape)
        if states is not None:  # layers above n_max repeat the last state
            states.extend([last] * (self.num_layers + 1 - len(states)))
        return _output_class(self.family.encoder_output)(
            last_hidden_state=last, hidden_states=None if states is None else tuple(states))


def _key_mask_from_4d(mask: torch.Tensor, bt) -> torch.Tensor:
    """(B,T) bool real-token mask from transformers' 4-D (B,1,Q,T) bool or additive mask."""
    if mask.dim() == 2:
        return mask != 0
    if mask.dim() != 4:
        raise ValueError(f"attention_mask of shape {tuple(mask.shape)} is neither (B,T) nor (B,1,Q,T)")
    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    return allowed.any(dim=(1, 2)).expand(bt)


def _first_position_reader(model: nn.Module, base: nn.Module) -> str | None:
    """What in `model` reads the final state at position 0 (a pooler, or a classification head
    over the first token), or None. Such a model is exact only when position 0 is a real token
    of every sequence (right padding); PatchedEncoder checks each call."""
    if getattr(base, "pooler", None) is not None:
        return f"{type(base).__name__}'s pooler"
    name = type(model).__name__
    if name.endswith(("ForSequenceClassification", "ForMultipleChoice")):
        return f"{name}'s classification head"
    return None


def _arg(args, kwargs, name: str, pos: int):
    return kwargs[name] if name in kwargs else (args[pos] if len(args) > pos else None)


_NO_ATTENTIONS = ("output_attentions=True is not supported by the adaptive encoder: it never forms "
                  "attention probabilities (the attention is computed on compact rows)")


def _call_inputs(module, args, kwargs):
    """(patched encoder, depths or None, 2-D mask or None) of a call to a patched model: depths
    from `depths=` or the encoder's depth_fn, checked against the input's shape."""
    config = module.config
    enc = _base_and_encoder(module)[1]
    # Every supported model's forward starts (input_ids, attention_mask, ...).
    input_ids, mask = _arg(args, kwargs, "input_ids", 0), _arg(args, kwargs, "attention_mask", 1)
    embeds = kwargs.get("inputs_embeds")
    attentions = kwargs.get("output_attentions")
    if attentions or (attentions is None and getattr(config, "output_attentions", False)):
        raise ValueError(_NO_ATTENTIONS)
    depths = kwargs.get("depths")
    if depths is None and enc.depth_fn is not None:
        if input_ids is None:
            raise ValueError("this model's depth_fn computes depths from input_ids, but the call gave "
                             "inputs_embeds: pass depths= with it")
        depths = enc.depth_fn(input_ids, mask)
    if depths is not None:
        ref = input_ids if input_ids is not None else embeds
        shape = tuple(ref.shape[:2]) if ref is not None else None
        if not isinstance(depths, torch.Tensor):
            raise TypeError(f"depths must be an integer tensor, got {type(depths).__name__}")
        if depths.is_floating_point() or depths.is_complex() or depths.dtype == torch.bool:
            raise TypeError(f"depths must be an integer tensor, got {depths.dtype}")
        if shape is not None and tuple(depths.shape) != shape:
            raise ValueError(f"depths has shape {tuple(depths.shape)} but the input "
                             f"{'input_ids' if input_ids is not None else 'inputs_embeds'} has (batch, seq) {shape}")
        if ref is not None and depths.device != ref.device:
            raise ValueError(f"depths is on {depths.device} but the input on {ref.device}")
    return enc, depths, mask


def _base_pre_hook(module, args, kwargs):
    """Forward pre-hook of a patched base model whose kwargs reach its encoder (BERT copies,
    DistilBERT): the per-call inputs go to the encoder as keyword arguments."""
    config = module.config
    _, depths, mask = _call_inputs(module, args, kwargs)
    if depths is not None:
        kwargs["depths"] = depths
    if mask is not None:
        kwargs[_MASK] = mask
    want = kwargs.get("output_hidden_states", getattr(config, "output_hidden_states", False))
    if want:
        if kwargs.get("return_dict", getattr(config, "return_dict", True)) is False:
            raise ValueError("output_hidden_states with return_dict=False is not supported by the adaptive "
                             "encoder; call with return_dict=True")
        kwargs[_STATES] = []
    return args, kwargs


def _base_post_hook(module, args, kwargs, output):
    """Forward hook of the patched base model: put the encoder's per-layer states in the output."""
    states = kwargs.get(_STATES)
    if states is None:
        return output
    want = kwargs.get("output_hidden_states", getattr(module.config, "output_hidden_states", False))
    if not isinstance(want, bool):  # transformers' index selection: unselected states are None
        picked = {want} if isinstance(want, int) else set(want)
        picked = {i % len(states) for i in picked if -len(states) <= i < len(states)}
        states = [s if i in picked else None for i, s in enumerate(states)]
    output["hidden_states"] = tuple(states)
    return output


def _context_pre_hook(module, args, kwargs):
    """Forward pre-hook for a family whose models drop **kwargs (MPNet), on the model the user
    calls and on its base model: push this call's inputs for the encoder."""
    enc, depths, mask = _call_inputs(module, args, kwargs)
    kwargs.pop("depths", None)
    calls = _CALLS.get()
    if depths is None and calls and calls[-1][0] is enc:
        return args, kwargs  # an enclosing call of the same model already gave the inputs
    _CALLS.set(calls + ((enc, depths, mask, kwargs),))
    return args, kwargs


def _context_post_hook(module, args, kwargs, output):
    calls = _CALLS.get()
    if calls and calls[-1][3] is kwargs:  # pushed by this call's pre-hook
        _CALLS.set(calls[:-1])
    return output


def apply_adaptive_encoder(model: nn.Module, depth_fn=None, backend: str | None = None,
                           cuda_graphs: bool | str = False) -> nn.Module:
    """Swap the encoder inside `model` for AdaptiveEncoder (in place; returns `model`).

    model: a transformers model of a supported type (BertModel, BertForSequenceClassification,
    RobertaModel, DistilBertForMaskedLM, MPNetModel, ...). depth_fn(input_ids (B,T),
    attention_mask (B,T) or None) -> depths (B,T) int: used when a call gives no `depths=`.
    cuda_graphs: replay each layer as a CUDA graph in inference: True, False or "auto" (where
    it pays; AdaptiveEncoder.forward).
    Raises ValueError / TypeError, leaving `model` unchanged, when the model cannot be run
    exactly.
    """
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        raise RuntimeError(f"apply_adaptive_encoder needs transformers >= 5 (it passes depths through the "
                           f"model's **kwargs), found {transformers.__version__}")
    graphs.check_mode(cuda_graphs)
    base, enc = _base_and_encoder(model)
    if base is None:
        raise TypeError(f"apply_adaptive_encoder expects a transformers model, got the encoder "
                        f"{type(model).__name__}; use AdaptiveEncoder.from_model for that")
    if isinstance(enc, PatchedEncoder):
        raise ValueError("apply_adaptive_encoder: this model is already patched")
    family = check_supported(base.config, enc.layer)  # refuses before anything is changed
    modules = {m: getattr(enc, m) for m in family.encoder_modules}
    setattr(base, family.encoder_attr, PatchedEncoder(enc, base.config, depth_fn, backend=backend, modules=modules,
                                                             cuda_graphs=cuda_graphs,
                                                             reads_first=_first_position_reader(model, base)))
    if family.kwargs_reach_encoder:
        base.register_forward_pre_hook(_base_pre_hook, with_kwargs=True)
        base.register_forward_hook(_base_post_hook, with_kwargs=True)
    else:
        for m in dict.fromkeys([model, base]):
            m.register_forward_pre_hook(_context_pre_hook, with_kwargs=True)
            m.register_forward_hook(_context_post_hook, with_kwargs=True, always_call=True)
    return model


def is_patched(model: nn.Module) -> bool:
    base, enc = _base_and_encoder(model)
    return isinstance(enc, PatchedEncoder)
