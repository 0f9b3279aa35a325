"""Attention of compact queries against all keys of their sequence (varlen form).

q (Aq, H, Dh), k/v (Ak, H, Dh); cu_q/cu_k (B+1,) int64 offsets of each sequence's queries
and keys (they differ: halted tokens are keys but not queries). Output (Aq, H, Dh), the
dtype of q. This is the interface the fused GPU kernel plugs into; today every device
uses the padded-SDPA reference.
"""
import torch

from . import reference


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     cu_q: torch.Tensor, cu_k: torch.Tensor, max_q: int, max_k: int,
                     scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    if q.dim() != 3 or k.shape != v.shape or k.dim() != 3 or q.shape[1:] != k.shape[1:]:
        raise ValueError(f"varlen_attention: q (Aq,H,Dh) and k, v (Ak,H,Dh) expected, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if cu_q.shape != cu_k.shape or cu_q.dim() != 1:
        raise ValueError("varlen_attention: cu_q and cu_k must both be (B+1,)")
    return reference.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, dropout_p=dropout_p)
