"""The execution plan of one forward: which rows every layer computes.

`make_plan` runs the plan op once per forward and reads the few host-side numbers the
layers need (counts, n_max, max lengths) in a single device->host copy.
"""
from dataclasses import dataclass

import torch

from . import ops


@dataclass
class LayerPlan:
    """Layer n's compact queries. rows (A,) int64 flattened b*T+t; cu_q (B+1,) int64 offsets."""

    rows: torch.Tensor
    cu_q: torch.Tensor
    max_q: int
    count: int


@dataclass
class Plan:
    """depths (B,T) and mask (B,T) turned into per-layer active rows (see reference.plan)."""

    rows: torch.Tensor          # (S,) int64, all layers, layer-major
    offsets: torch.Tensor       # (L*B+1,) int64
    layer_counts: list          # active rows per layer, host ints
    layer_max_q: list           # longest active query run of one sequence, per layer
    key_rows: torch.Tensor | None  # (K,) flattened rows of real tokens; None if all are real
    cu_k: torch.Tensor          # (B+1,) int64 key offsets (real tokens per sequence)
    max_k: int
    num_real: int
    n_max: int                  # deepest layer any real token reaches (0 = none)
    num_layers: int
    batch: int

    def layer(self, n: int) -> LayerPlan:
        """Plan of 0-based layer n (the paper's layer n+1)."""
        B = self.batch
        cu = self.offsets[n * B:(n + 1) * B + 1]
        start = sum(self.layer_counts[:n])
        rows = self.rows[start:start + self.layer_counts[n]]
        return LayerPlan(rows=rows, cu_q=cu - cu[0], max_q=self.layer_max_q[n], count=self.layer_counts[n])

    @property
    def active_fraction(self) -> float:
        """Computed token-layers / (real tokens x num_layers): the work done over full depth."""
        return sum(self.layer_counts) / max(self.num_real * self.num_layers, 1)


# Under torch.compile the plan is computed eagerly, outside the graph: its sizes depend on the
# data (one host sync). That is the forward's one graph break; the layers after it are traced
# with the plan's counts as dynamic sizes, so a new depth pattern does not recompile.
@torch.compiler.disable
def make_plan(depths: torch.Tensor, mask: torch.Tensor, num_layers: int, backend: str | None = None) -> Plan:
    """depths (B,T) int64 in [0, num_layers], mask (B,T) bool -> Plan. Raises ValueError on bad depths."""
    B, T = depths.shape
    if B == 0 or T == 0:
        raise ValueError(f"make_plan: empty batch (depths shape {tuple(depths.shape)})")
    # Unchecked: the range check below rides on the one host sync this function makes anyway.
    rows, offsets = ops.plan(depths, mask, num_layers, backend=backend, check=False)
    counts = (offsets[1:] - offsets[:-1]).view(num_layers, B)
    lengths = mask.sum(1)
    stats = torch.cat([
        counts.sum(1), counts.amax(1),
        torch.stack([lengths.amax(), lengths.amin(), mask.sum(), depths.amin(), depths.amax()]),
    ]).tolist()  # the one host sync of the forward (besides the plan op's own)
    L = num_layers
    layer_counts, layer_max_q = stats[:L], stats[L:2 * L]
    max_k, min_k, num_real, dmin, dmax = stats[2 * L:]
    if dmin < 0 or dmax > num_layers:
        ops.check_depths(depths, mask, num_layers, op="depths")  # raises, naming where
    if min_k == 0:
        raise ValueError("attention_mask: every sequence needs at least one real token")
    all_real = num_real == B * T
    key_rows = None if all_real else mask.reshape(-1).nonzero().squeeze(1)
    cu_k = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    n_max = sum(1 for c in layer_counts if c > 0)
    return Plan(rows=rows, offsets=offsets, layer_counts=layer_counts, layer_max_q=layer_max_q,
                key_rows=key_rows, cu_k=cu_k, max_k=max_k, num_real=num_real, n_max=n_max,
                num_layers=num_layers, batch=B)
