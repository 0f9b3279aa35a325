"""The transformers model families AdaptiveEncoder runs exactly, one small adapter each.

An adapter maps one of the family's layers onto the parts the shared compact-layer code
(encoder.py) needs: the q/k/v projections, the attention-output block (projection, dropout,
residual, LayerNorm) and the FFN (projection, activation, then the same closing block; both
post-LayerNorm, as in BERT), plus where the
encoder sits in the base model and how to run one of its own layers densely (for the
masked reference in dense.py). Nothing else of a layer is assumed.

A model is supported only if its `config.model_type` is listed here and the adapter can
honour its config (`Family.refusal`); everything else is refused before anything changes.
"""
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass
class Closing:
    """The block that closes both sublayers of a post-LayerNorm layer:
    y = norm(dropout(linear(x)) + residual). dropout: the layer's nn.Dropout (its own mode
    decides, as when transformers calls it) or None."""

    linear: nn.Module
    dropout: nn.Module | None
    norm: nn.Module


@dataclass
class LayerParts:
    """One post-LayerNorm encoder layer, seen through its adapter.

    query/key/value: D -> D projections.  attn_dropout: the dropout probability on the
    attention probabilities now: 0 unless the module that decides in transformers (BERT,
    DistilBERT: the attention module; MPNet: its Dropout) is in training mode.  attn_output(ctx (A,D), residual (A,D)) -> (A,D)
    and ffn(h (A,D)) -> (A,D): the two closing blocks through the layer's own modules (their
    hooks fire). The same blocks by piece, for the direct path (encoder.py) that skips the
    module calls when no module involved has a hook: attn_out (projection of the heads'
    context, residual = the layer's input); ffn_in, act, then ffn_out (residual = the
    attention output); `containers`, the modules the module path calls besides those pieces.
    All are the layer's own modules, not copies.
    """

    query: nn.Module
    key: nn.Module
    value: nn.Module
    attn_dropout: float
    attn_output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ffn: Callable[[torch.Tensor], torch.Tensor]
    attn_out: Closing
    ffn_in: nn.Module
    act: Callable[[torch.Tensor], torch.Tensor]
    ffn_out: Closing
    containers: tuple = ()


@dataclass(frozen=True)
class Family:
    model_types: tuple        # config.model_type values this adapter serves
    encoder_attr: str         # attribute of the base model holding the encoder (has .layer)
    parts: Callable           # layer -> LayerParts
    dense_layer: Callable     # (layer, h (B,T,D), additive key mask (B,1,1,T), bias or None) -> (B,T,D)
    encoder_output: str       # the transformers.modeling_outputs class the encoder returns
    # Modules of the encoder itself (not of a layer) that the layers use, kept under the same
    # names on the adaptive encoder so state-dict keys do not change.
    encoder_modules: tuple = ()
    # distance_bias(encoder_modules, T) -> (2T-1, H) attention-score bias for key position
    # minus query position = i - (T-1), or None for no position bias.
    distance_bias: Callable | None = None
    # Whether the family's models pass their **kwargs down to the encoder (transformers 5 BERT
    # copies and DistilBERT do; MPNet does not, so its depths travel in a context variable).
    kwargs_reach_encoder: bool = True

    def refusal(self, config) -> str | None:
        """Why this config cannot be run exactly, or None."""
        if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
            return "decoder / cross-attention configs are not supported (encoder models only)"
        pos = getattr(config, "position_embedding_type", "absolute")
        if pos not in (None, "absolute"):
            return f"position_embedding_type={pos!r} is not supported (only 'absolute')"
        if config.hidden_size % config.num_attention_heads:
            return "hidden_size is not a multiple of num_attention_heads"
        return None


def _subs(module, *paths: str) -> tuple:
    """The attributes at these dotted paths, as `module.a.b` finds them, read from each module's
    `_modules` dict where the name is a registered submodule: nn.Module.__getattr__ costs ~0.6 us
    a step, and a layer's parts (~20 steps) are looked up for every layer of every forward."""
    out = []
    for path in paths:
        m = module
        for name in path.split("."):
            child = m._modules.get(name) if isinstance(m, nn.Module) else None
            m = child if child is not None else getattr(m, name)
        out.append(m)
    return tuple(out)


# --- BERT and its copies (RoBERTa, XLM-R, CamemBERT, ELECTRA): same layer, other names ---

def _bert_parts(layer) -> LayerParts:
    # BertSelfOutput (so): dense, dropout, LayerNorm(x + residual); BertOutput (out) the same for the FFN
    sa, so, inter, out = _subs(layer, "attention.self", "attention.output", "intermediate", "output")
    query, key, value, dropout = _subs(sa, "query", "key", "value", "dropout")
    ffn_in, act = _subs(inter, "dense", "intermediate_act_fn")
    return LayerParts(
        query=query, key=key, value=value, attn_dropout=dropout.p if sa.training else 0.0,
        attn_output=so, ffn=lambda h: out(inter(h), h),
        attn_out=Closing(*_subs(so, "dense", "dropout", "LayerNorm")),
        ffn_in=ffn_in, act=act,
        ffn_out=Closing(*_subs(out, "dense", "dropout", "LayerNorm")),
        containers=(so, inter, out),
    )


def _bert_dense(layer, h, additive, bias=None):
    y = layer(h, additive)
    return y[0] if isinstance(y, tuple) else y


# --- DistilBERT: q_lin/k_lin/v_lin/out_lin, sa_layer_norm, ffn, output_layer_norm ---

def _distilbert_parts(layer) -> LayerParts:
    # no dropout after out_lin; FFN: lin1, activation, lin2, dropout
    att, ffn, sa_norm, out_norm = _subs(layer, "attention", "ffn", "sa_layer_norm", "output_layer_norm")
    q, k, v, out_lin, dropout = _subs(att, "q_lin", "k_lin", "v_lin", "out_lin", "dropout")
    lin1, act, lin2, ffn_dropout = _subs(ffn, "lin1", "activation", "lin2", "dropout")
    return LayerParts(
        query=q, key=k, value=v, attn_dropout=dropout.p if att.training else 0.0,
        attn_output=lambda ctx, x: sa_norm(out_lin(ctx) + x),
        ffn=lambda h: out_norm(ffn(h) + h),
        attn_out=Closing(out_lin, None, sa_norm),
        ffn_in=lin1, act=act,
        ffn_out=Closing(lin2, ffn_dropout, out_norm),
        containers=(ffn,),
    )


# --- MPNet: q/k/v/o under attention.attn, post-LayerNorm, one relative position bias table
# (32 buckets x heads) on the encoder shared by every layer ---

def _mpnet_parts(layer) -> LayerParts:
    # LayerNorm(dropout(o(context)) + x); FFN as BERT's
    attn, dropout, norm, inter, out = _subs(layer, "attention.attn", "attention.dropout", "attention.LayerNorm",
                                            "intermediate", "output")
    q, k, v, o, attn_dropout = _subs(attn, "q", "k", "v", "o", "dropout")
    ffn_in, act = _subs(inter, "dense", "intermediate_act_fn")
    return LayerParts(
        query=q, key=k, value=v,
        attn_dropout=attn_dropout.p if attn_dropout.training else 0.0,
        attn_output=lambda ctx, x: norm(dropout(o(ctx)) + x),
        ffn=lambda h: out(inter(h), h),
        attn_out=Closing(o, dropout, norm),
        ffn_in=ffn_in, act=act,
        ffn_out=Closing(*_subs(out, "dense", "dropout", "LayerNorm")),
        containers=(inter, out),
    )


def _mpnet_dense(layer, h, additive, bias):
    return layer(h, additive, bias)[0]


def _mpnet_distance_bias(modules: dict, T: int) -> torch.Tensor:
    """(2T-1, H): MPNet's bias for key position - query position = -(T-1) .. T-1, computed
    with transformers' own bucket function (MPNet uses 32 buckets, max distance 128)."""
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    table = modules["relative_attention_bias"]
    rel = torch.arange(-(T - 1), T, device=table.weight.device)
    return table(MPNetEncoder.relative_position_bucket(rel, num_buckets=32))


BERT = Family(("bert", "roberta", "xlm-roberta", "camembert", "electra"), "encoder", _bert_parts, _bert_dense,
              "BaseModelOutputWithPastAndCrossAttentions")
DISTILBERT = Family(("distilbert",), "transformer", _distilbert_parts, _bert_dense, "BaseModelOutput")
MPNET = Family(("mpnet",), "encoder", _mpnet_parts, _mpnet_dense, "BaseModelOutput",
               encoder_modules=("relative_attention_bias",), distance_bias=_mpnet_distance_bias,
               kwargs_reach_encoder=False)
FAMILIES = (BERT, DISTILBERT, MPNET)
SUPPORTED = tuple(t for f in FAMILIES for t in f.model_types)


def family_of(config) -> Family:
    """The adapter for `config.model_type`; ValueError naming the supported types otherwise."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise ValueError(f"model type {model_type!r} is not supported by the adaptive encoder; "
                     f"supported: {', '.join(SUPPORTED)}")


def check_supported(config, layers) -> Family:
    """The family of a model with this config and these layers, or ValueError saying why not."""
    family = family_of(config)
    reason = family.refusal(config)
    if reason is None:
        try:
            for layer in layers:
                family.parts(layer)
        except AttributeError as e:  # a custom layer class under a known model_type
            reason = f"its layers do not have the {config.model_type} layout ({e})"
    if reason is not None:
        raise ValueError(f"cannot run this {config.model_type} model exactly: {reason}")
    return family
