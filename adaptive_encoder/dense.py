"""The masked ("dense") way to run a depth-adaptive encoder: every layer computes every token
with the model's own transformers layer, and halted tokens are frozen with torch.where.

It defines the semantics AdaptiveEncoder must reproduce, and it is the baseline that saves
nothing (what the paper's released code did). Shapes as AdaptiveEncoder.forward.
"""
import torch

from .encoder import encoder_and_config
from .families import family_of


def masked_forward(bert, hidden_states: torch.Tensor, depths: torch.Tensor,
                   attention_mask: torch.Tensor | None = None, stop_at_n_max: bool = True) -> torch.Tensor:
    """(B,T,D) states after each token's own last layer; all layers computed on all tokens.

    stop_at_n_max=False runs all N layers even when no token is that deep.
    """
    enc, config = encoder_and_config(bert)
    layers = enc.layer
    family = family_of(config)
    B, T, _ = hidden_states.shape
    mask = torch.ones(B, T, dtype=torch.bool, device=hidden_states.device) if attention_mask is None \
        else attention_mask != 0
    # Additive key mask (B,1,1,T): what both transformers' eager and SDPA attention accept.
    additive = torch.zeros(B, 1, 1, T, dtype=hidden_states.dtype, device=hidden_states.device)
    additive = additive.masked_fill(~mask[:, None, None, :], torch.finfo(hidden_states.dtype).min)
    n_run = int(depths[mask].max()) if stop_at_n_max and mask.any() else len(layers)
    bias = None
    if family.distance_bias is not None:  # (1, H, T, T) relative position bias, as the family's encoder adds it
        dist = family.distance_bias({m: getattr(enc, m) for m in family.encoder_modules}, T)
        pos = torch.arange(T, device=hidden_states.device)
        bias = dist[pos[None, :] - pos[:, None] + T - 1].permute(2, 0, 1).unsqueeze(0)
    h = hidden_states
    for n, layer in enumerate(layers[:n_run]):
        y = family.dense_layer(layer, h, additive, bias)
        h = torch.where(((depths > n) & mask).unsqueeze(-1), y, h)
    return h
