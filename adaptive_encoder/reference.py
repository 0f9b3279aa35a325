"""Plain PyTorch references: the definition every kernel is tested against.

Shapes and dtypes:
    plan(depths (B,T) int64, mask (B,T) bool, L) -> rows (S,) int64, offsets (L*B+1,) int64
        rows[offsets[n*B+b] : offsets[n*B+b+1]] are the flattened indices b*T+t of the real
        tokens of sequence b with depth > n (i.e. active at the paper's layer n+1), ascending.
    gather(x (R,D), rows (A,) int64) -> (A,D)              out[i] = x[rows[i]]
    scatter(base (R,D), src (A,D), rows (A,) int64) -> (R,D)  out = base; out[rows] = src
    scatter_(base, src, rows) -> None                         base[rows] = src, in place
    varlen_attention(q (Aq,H,Dh), k, v (Ak,H,Dh), cu_q, cu_k (B+1,) int64, max_q, max_k)
        -> (Aq,H,Dh): the queries of sequence b (rows cu_q[b]:cu_q[b+1]) attend to the keys
        of sequence b (rows cu_k[b]:cu_k[b+1]); no causal mask; optional relative position bias.
        Rows at or past cu_q[B] (cu_k[B]) are in no sequence (graph mode pads to fixed sizes):
        zeros here, unspecified in the kernels, never read as keys.
    add_layer_norm(x (A,D), residual (A,D), weight (D,), bias (D,), eps) -> (A,D)
        LayerNorm(x + residual): a post-LayerNorm block's closing step, as transformers computes it.
    add_layer_norm_into_(base (R,D), x, residual, weight, bias, eps, rows (A,) int64, at_rows=False) -> None
        base[rows] = add_layer_norm(x, residual, weight, bias, eps), in place; with at_rows x and
        residual are (R,D) like base and read at rows too: base[rows] = add_layer_norm(x[rows], ...).
"""
import torch
import torch.nn.functional as F


def plan(depths: torch.Tensor, mask: torch.Tensor, num_layers: int):
    B, T = depths.shape
    layers = torch.arange(num_layers, device=depths.device).view(-1, 1, 1)
    active = mask.unsqueeze(0) & (depths.unsqueeze(0) > layers)  # (L, B, T)
    rows = active.reshape(num_layers, B * T).nonzero()[:, 1]  # row-major: layer, then b*T+t
    counts = active.sum(-1).reshape(-1)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return rows, offsets


def gather(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return x[rows]


def scatter(base: torch.Tensor, src: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return base.index_copy(0, rows, src)


def scatter_(base: torch.Tensor, src: torch.Tensor, rows: torch.Tensor) -> None:
    base.index_copy_(0, rows, src)


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float) -> torch.Tensor:
    return F.layer_norm(x + residual, (x.shape[-1],), weight, bias, eps)


def add_layer_norm_into_(base: torch.Tensor, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor, eps: float, rows: torch.Tensor, at_rows: bool = False) -> None:
    if at_rows:
        x, residual = gather(x, rows), gather(residual, rows)
    scatter_(base, add_layer_norm(x, residual, weight, bias, eps), rows)


def _padded_index(cu: torch.Tensor, total: int):
    """(slot, position in slot) of each of `total` packed rows: sequence b's rows go to slot b,
    rows past cu[B] (in no sequence) all to position 0 of an extra slot B."""
    B = cu.numel() - 1
    lengths = torch.cat([cu[1:] - cu[:-1], total - cu[-1:]])
    seq = torch.repeat_interleave(torch.arange(B + 1, device=cu.device), lengths, output_size=total)
    pos = torch.arange(total, device=cu.device) - cu[seq]
    return seq, pos.masked_fill(seq == B, 0)


def varlen_attention(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scale=None, dropout_p: float = 0.0,
                     bias=None):
    """Pad to (B, H, max_q, Dh) / (B, H, max_k, Dh), run SDPA with a key-padding mask, unpad.

    bias: None or (dist (2P-1, H), q_pos (Aq,) int64, k_pos (Ak,) int64): a relative position
    bias added to the scores, dist[k_pos[j] - q_pos[i] + P - 1] for query i and key j (MPNet).
    """
    B = cu_q.numel() - 1
    H, Dh = q.shape[1], q.shape[2]
    # One sequence over every row: nothing to pad, no mask. Not under torch.compile, where a
    # traced plan's lengths are unbacked sizes that SDPA would guard on; on CPU only, where
    # reading the offsets costs no device sync.
    if B == 1 and bias is None and not torch.compiler.is_compiling() and q.device.type == "cpu" \
            and int(cu_q[1]) == q.shape[0] and int(cu_k[1]) == k.shape[0]:
        out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                             v.transpose(0, 1)[None], dropout_p=dropout_p, scale=scale)
        return out[0].transpose(0, 1)
    # At least 2 padded positions: under torch.compile the lengths are unbacked sizes and SDPA
    # would guard on "length == 1" (a broadcast check) without this lower bound.
    max_q, max_k = torch.sym_max(max_q, 2), torch.sym_max(max_k, 2)
    seq_q, pos_q = _padded_index(cu_q, q.shape[0])
    seq_k, pos_k = _padded_index(cu_k, k.shape[0])
    # Slot B holds the rows in no sequence; it sees one key (any) so that its softmax is finite.
    qp = q.new_zeros(B + 1, max_q, H, Dh).index_put((seq_q, pos_q), q)
    kp = k.new_zeros(B + 1, max_k, H, Dh).index_put((seq_k, pos_k), k)
    vp = v.new_zeros(B + 1, max_k, H, Dh).index_put((seq_k, pos_k), v)
    key_len = torch.cat([cu_k[1:] - cu_k[:-1], cu_k.new_ones(1)])
    key_ok = torch.arange(max_k, device=q.device).unsqueeze(0) < key_len.unsqueeze(1)
    attn_mask = key_ok[:, None, None, :]
    if bias is not None:
        dist, q_pos, k_pos = bias
        off = (dist.shape[0] - 1) // 2
        pq = q_pos.new_zeros(B + 1, max_q).index_put((seq_q, pos_q), q_pos)
        pk = k_pos.new_zeros(B + 1, max_k).index_put((seq_k, pos_k), k_pos)
        idx = (pk[:, None, :] - pq[:, :, None] + off).clamp(0, 2 * off)  # padding rows: any valid index
        scores_bias = dist[idx].permute(0, 3, 1, 2).to(q.dtype)  # (B, H, max_q, max_k)
        attn_mask = scores_bias.masked_fill(~attn_mask, float("-inf"))
    out = F.scaled_dot_product_attention(
        qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2),
        attn_mask=attn_mask, dropout_p=dropout_p, scale=scale,
    )
    return out.transpose(1, 2)[seq_q, pos_q].masked_fill((seq_q == B)[:, None, None], 0)
