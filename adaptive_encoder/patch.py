"""One call to run an existing transformers BERT model through AdaptiveEncoder.

    apply_adaptive_encoder(model)                 # BertModel, BertForSequenceClassification, ...
    model(input_ids, attention_mask=m, depths=d)  # d (B,T) ints in [0,N]; omit d for full depth

Only `bert.encoder` is replaced; embeddings, pooler, heads and weights stay as they are.
A forward pre-hook takes `depths=` out of the call (transformers never sees it) and keeps
the 2-D attention mask, because the encoder itself only receives the 4-D/SDPA form.
With `depth_fn(input_ids, attention_mask) -> depths` (e.g. an MI estimator's lookup), the
depths are computed from the inputs when the call gives none.
"""
import torch
from torch import nn

from .encoder import AdaptiveEncoder


class PatchedBertEncoder(AdaptiveEncoder):
    """AdaptiveEncoder with transformers' BertEncoder call signature, reading the depths and
    2-D mask the pre-hook stored. Its only submodule is the shared `layer` list, so the model's
    state_dict keys are unchanged."""

    def __init__(self, bert_encoder: nn.Module, depth_fn=None, backend: str | None = None):
        super().__init__(bert_encoder.layer, bert_encoder.config, backend=backend)
        self.train(bert_encoder.training)
        self.depth_fn = depth_fn
        self._call = None  # (depths, 2-D mask) of the forward under way
        self._pending_depths = None  # depths= taken from an outer model's call

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

        depths, mask = self._call if self._call is not None else (None, None)
        self._call = None
        out = super().forward(hidden_states, depths, mask)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=out.last_hidden_state)


def _find_bert(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if hasattr(module, "embeddings") and hasattr(module, "encoder") and hasattr(module.encoder, "layer"):
            return module
    raise TypeError(f"no BERT model (with .embeddings and .encoder.layer) inside {type(model).__name__}")


def apply_adaptive_encoder(model: nn.Module, depth_fn=None, backend: str | None = None) -> nn.Module:
    """Swap the BERT encoder inside `model` for AdaptiveEncoder (in place; returns `model`)."""
    bert = _find_bert(model)
    if isinstance(bert.encoder, PatchedBertEncoder):
        raise ValueError("apply_adaptive_encoder: this model is already patched")
    if getattr(bert.config, "is_decoder", False):
        raise ValueError("apply_adaptive_encoder supports encoder (bidirectional) BERT models only")
    patched = PatchedBertEncoder(bert.encoder, depth_fn, backend=backend)
    bert.encoder = patched

    def outer_hook(module, args, kwargs):
        patched._pending_depths = kwargs.pop("depths", None)
        return args, kwargs

    def bert_hook(module, args, kwargs):
        depths = kwargs.pop("depths", None)
        if depths is None:
            depths, patched._pending_depths = patched._pending_depths, None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if depths is None and patched.depth_fn is not None and input_ids is not None:
            depths = patched.depth_fn(input_ids, mask)
        patched._call = (depths, mask)
        return args, kwargs

    if model is not bert:
        model.register_forward_pre_hook(outer_hook, with_kwargs=True)
    bert.register_forward_pre_hook(bert_hook, with_kwargs=True)
    return model
