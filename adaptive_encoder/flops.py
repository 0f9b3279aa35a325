"""Counted FLOPs of a BERT encoder forward, dense or depth-adaptive: the 'ideal' speed-ups.

Per layer, with q active query rows, k key rows (all real tokens, halted ones included),
p = sum over sequences of q_b * k_b attention pairs, hidden D, FFN width F
(a multiply-add counts 2):
    Q and output projections   2 * q * D*D  each
    K and V projections        2 * k * D*D  each
    scores and weighted sum    2 * p * D    each
    FFN                        2 * q * D*F  twice
LayerNorm, softmax, bias and activation are O(q*D) and left out.
"""
import torch


def layer_flops(q: int, k: int, pairs: int, hidden: int, ffn: int) -> int:
    D, F = hidden, ffn
    return 4 * q * D * D + 4 * k * D * D + 4 * pairs * D + 4 * q * D * F


def encoder_flops(depths: torch.Tensor, mask: torch.Tensor | None, num_layers: int,
                  hidden: int, ffn: int, adaptive: bool = True) -> int:
    """FLOPs of one forward over a batch. depths (B,T) int, mask (B,T) (None = all real).

    adaptive=True: layer n computes the tokens with depth > n (0-based n) against all real
    keys, and stops after the deepest token. adaptive=False: every real token, every layer.
    """
    depths = depths.detach().cpu().long()
    real = torch.ones_like(depths, dtype=torch.bool) if mask is None else mask.detach().cpu() != 0
    k_b = real.sum(1)
    total = 0
    for n in range(num_layers):
        q_b = (real & (depths > n)).sum(1) if adaptive else k_b
        if int(q_b.sum()) == 0:
            break
        total += layer_flops(int(q_b.sum()), int(k_b.sum()), int((q_b * k_b).sum()), hidden, ffn)
    return total


def ideal_speedup(depths: torch.Tensor, mask: torch.Tensor | None, num_layers: int, hidden: int, ffn: int) -> float:
    """Full-depth FLOPs over adaptive FLOPs (K/V of halted tokens counted)."""
    adaptive = encoder_flops(depths, mask, num_layers, hidden, ffn, adaptive=True)
    full = encoder_flops(depths, mask, num_layers, hidden, ffn, adaptive=False)
    return full / max(adaptive, 1)
