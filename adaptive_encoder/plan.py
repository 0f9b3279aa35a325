"""The execution plan of one forward: which rows every layer computes.

`make_plan` runs the plan op once per forward and reads the few host-side numbers the
layers need (counts, n_max, max lengths) in a single device->host copy.
"""
import copy
from dataclasses import dataclass

import torch

from . import ops


@dataclass
class LayerPlan:
    """Layer n's compact queries. rows (A,) int64 flattened b*T+t; state_rows (A,) int64 the
    same tokens as rows of the compact state (the K real tokens in order); cu_q (B+1,) int64
    offsets."""

    rows: torch.Tensor
    cu_q: torch.Tensor
    max_q: int
    count: int
    state_rows: torch.Tensor


@dataclass
class Plan:
    """depths (B,T) and mask (B,T) turned into per-layer active rows (see reference.plan)."""

    rows: torch.Tensor          # (S,) int64, all layers, layer-major
    offsets: torch.Tensor       # (L*B+1,) int64
    layer_counts: list          # active rows per layer, host ints
    layer_max_q: list           # longest active query run of one sequence, per layer
    key_rows: torch.Tensor | None  # (K,) flattened rows of real tokens; None if all are real (eager only)
    cu_k: torch.Tensor          # (B+1,) int64 key offsets (real tokens per sequence)
    max_k: int
    num_real: int
    n_max: int                  # deepest layer any real token reaches (0 = none); N when traced
                                # under torch.compile (make_plan), where it cannot be read
    num_layers: int
    batch: int
    # (S,) int64: `rows` as rows of the compact state (the real tokens in order, K rows), which
    # the encoder runs on instead of the (B*T) padded one; `rows` itself when all are real.
    state_rows: torch.Tensor | None = None
    # Whether every sequence's position 0 is a real token (read on the host with the counts;
    # None when traced). Poolers and classification heads read position 0, which is never
    # computed when it is padding: the patched model refuses that case (patch.py).
    first_real: bool | None = None

    def __post_init__(self):
        if self.state_rows is None:
            self.state_rows = self.rows
        # Every layer's query offsets (L, B+1), rebased to 0, in one op rather than one
        # subtraction per layer (on a GPU each is a launch, and small batches are launch-bound).
        B, L = self.batch, self.num_layers
        # Row n is offsets[n*B : n*B+B+1]: overlapping rows of one strided view, no index op.
        table = self.offsets.as_strided((L, B + 1), (B, 1))
        self._cu_q = table - table[:, :1]
        self._starts = [0]
        for c in self.layer_counts[:-1]:
            self._starts.append(self._starts[-1] + c)

    def layer_slice(self, n: int) -> slice:
        """Where layer n's entries lie in `rows` and `state_rows` (and anything made from them)."""
        return slice(self._starts[n], self._starts[n] + self.layer_counts[n])

    def layer(self, n: int) -> LayerPlan:
        """Plan of 0-based layer n (the paper's layer n+1)."""
        span = self.layer_slice(n)
        return LayerPlan(rows=self.rows[span], cu_q=self._cu_q[n], max_q=self.layer_max_q[n],
                         count=self.layer_counts[n], state_rows=self.state_rows[span])

    def to(self, device) -> "Plan":
        """The plan with its tensors on `device`, in one transfer (to_device: no wait for a GPU):
        its index tensors and the query-offset table travel packed in one buffer and arrive as
        views of it. (One pinned copy and no table rebuilt there, rather than five copies and
        the table's half-dozen launches: a small batch on a GPU is launch-bound.)"""
        device = torch.device(device)
        if self.rows.device == device:
            return self
        own_state_rows = self.state_rows is not self.rows
        parts = [self.rows, self.offsets, self.cu_k, self._cu_q.reshape(-1)] \
            + ([self.key_rows] if self.key_rows is not None else []) + ([self.state_rows] if own_state_rows else [])
        moved = list(packed_to(parts, device))
        out = copy.copy(self)  # not dataclasses.replace: __post_init__ would rebuild the table on `device`
        out.rows, out.offsets, out.cu_k = moved[:3]
        out._cu_q = moved[3].view(self._cu_q.shape)
        rest = moved[4:]
        out.key_rows = rest.pop(0) if self.key_rows is not None else None
        out.state_rows = rest.pop(0) if own_state_rows else out.rows
        return out

    @property
    def cu_q_table(self) -> torch.Tensor:
        """(L, B+1) int64: every layer's query offsets, each row from 0."""
        return self._cu_q

    @property
    def active_fraction(self) -> float:
        """Computed token-layers / (real tokens x num_layers): the work done over full depth."""
        return sum(self.layer_counts) / max(self.num_real * self.num_layers, 1)


def packed_to(tensors: list, device) -> tuple:
    """1-D int64 tensors -> the same values on `device`, as views of one buffer moved in one
    transfer (to_device)."""
    flat = to_device(torch.cat(tensors), device)
    return flat.split([t.numel() for t in tensors])


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """t on `device`. From the CPU to a GPU through pinned memory, without waiting: a copy from
    pageable memory first waits for the GPU's queued work."""
    device = torch.device(device)
    if t.device == device:
        return t
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def to_host(depths: torch.Tensor | None, mask: torch.Tensor) -> tuple:
    """depths (B,T) int64 (or None: full depth) and mask (B,T) bool, from a GPU to the host in
    one transfer (which waits for the GPU's queued work, as a plan made there would once)."""
    if depths is None:
        return None, mask.cpu()
    both = torch.stack([depths, mask.to(depths.dtype)]).cpu()
    return both[0], both[1].bool()


def make_plan(depths: torch.Tensor | None, mask: torch.Tensor, num_layers: int, backend: str | None = None) -> Plan:
    """depths (B,T) int64 in [0, num_layers] or None (every real token to full depth), mask (B,T)
    bool -> Plan. Raises ValueError on bad depths.

    Full depth (depths None) eagerly: the plan follows from the mask alone, without the plan op
    (on a GPU its two kernels, its allocations and cumsum, and its own wait for the device) or
    the depth statistics (counted at batch 8 with padding: 18 ops at the Python level against
    21 plus the plan op's own; tests/test_properties.py checks it is the same plan).

    Under torch.compile, two routes (the plan's sizes depend on the data):
    - default: the plan is computed eagerly, outside the graph. That is the forward's one graph
      break; the layers after it are traced with its counts as dynamic sizes, so a new depth
      pattern does not recompile (a new deepest layer does, once per value).
    - with `torch._dynamo.config.capture_scalar_outputs` and `capture_dynamic_output_shape_ops`
      on: the plan is traced, its counts become unbacked sizes, and the whole forward is one
      graph (fullgraph=True works, nothing recompiles for new depths). Every layer is then
      run, layers above the deepest token on zero queries (their K/V GEMM is the price).
    """
    compiling = torch.compiler.is_compiling()
    if depths is None:
        if not compiling:
            return _full_plan(mask, num_layers)
        depths = torch.where(mask, num_layers, 0)  # traced: the general route, which has no branch on data
    if compiling and _traceable():
        return _traced_plan(depths, mask, num_layers, backend)
    return _eager_plan(depths, mask, num_layers, backend)


def _traceable() -> bool:
    cfg = torch._dynamo.config
    return bool(cfg.capture_scalar_outputs and cfg.capture_dynamic_output_shape_ops)


def _plan_and_stats(depths, mask, num_layers: int, backend) -> tuple:
    """What both routes share: the plan op's rows and offsets, the host-side numbers, cu_k.

    Returns (rows, offsets, layer_counts, layer_max_q, (max_k, min_k, num_real, dmin, dmax,
    first), cu_k): per layer the active rows and the longest active run of one sequence; then
    the longest and shortest sequence, real tokens, min and max depth, and how many sequences
    start with a real token. Python ints eagerly, unbacked sizes when traced."""
    B, T = depths.shape
    if B == 0 or T == 0:
        raise ValueError(f"make_plan: empty batch (depths shape {tuple(depths.shape)})")
    # Unchecked: the depth range is checked on the numbers below, which need the sync anyway.
    rows, offsets = ops.plan(depths, mask, num_layers, backend=backend, check=False)
    counts = offsets.diff().view(num_layers, B)
    lengths = mask.sum(1)
    (min_k, max_k), (dmin, dmax) = torch.aminmax(lengths), torch.aminmax(depths)
    # One op per statistic at most (each is a launch on a GPU, where small batches are launch-bound).
    # The one host sync of the forward (besides the plan op's own):
    stats = torch.cat([counts.sum(1), counts.amax(1), max_k.view(1), min_k.view(1), lengths.sum().view(1),
                       dmin.view(1), dmax.view(1), mask[:, 0].sum().view(1)]).tolist()
    L = num_layers
    cu_k = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))
    return rows, offsets, stats[:L], stats[L:2 * L], stats[2 * L:], cu_k


@torch.compiler.disable
def _eager_plan(depths, mask, num_layers: int, backend) -> Plan:
    B, T = depths.shape
    rows, offsets, layer_counts, layer_max_q, rest, cu_k = _plan_and_stats(depths, mask, num_layers, backend)
    max_k, min_k, num_real, dmin, dmax, first = rest
    if dmin < 0 or dmax > num_layers:
        ops.check_depths(depths, mask, num_layers, op="depths")  # raises, naming where
    key_rows = _key_rows(mask, min_k, num_real)
    n_max = sum(1 for c in layer_counts if c > 0)
    return Plan(rows=rows, offsets=offsets, layer_counts=layer_counts, layer_max_q=layer_max_q,
                key_rows=key_rows, cu_k=cu_k, max_k=max_k, num_real=num_real, n_max=n_max,
                num_layers=num_layers, batch=B, state_rows=None if key_rows is None else _state_rows(rows, mask),
                first_real=first == B)


def _key_rows(mask: torch.Tensor, min_k: int, num_real: int) -> torch.Tensor | None:
    """(K,) flattened rows of the real tokens, or None when every token is real; ValueError when
    a sequence has none (min_k, num_real: the host numbers the plan read)."""
    if min_k == 0:  # the error path may read the mask: name the first such sequence
        empty = int((mask.sum(1) == 0).nonzero()[0, 0])
        raise ValueError(f"attention_mask: every sequence needs at least one real token; sequence {empty} has none"
                         " (an additive mask without padding is all zeros: pass the 0/1 mask)")
    if num_real == mask.numel():
        return None
    # nonzero_static: the count is known (num_real), so no second wait for the GPU as nonzero's.
    return torch.nonzero_static(mask.reshape(-1), size=num_real).squeeze(1)


@torch.compiler.disable
def _full_plan(mask, num_layers: int) -> Plan:
    """_eager_plan's Plan for every real token at depth num_layers, from the mask: each layer's
    rows are the real tokens' rows, layer n's offsets n*K + cu_k."""
    B, T = mask.shape
    if B == 0 or T == 0:
        raise ValueError(f"make_plan: empty batch (mask shape {tuple(mask.shape)})")
    L, dev = num_layers, mask.device
    lengths = mask.sum(1)
    min_k, max_k = torch.aminmax(lengths)
    max_k, min_k, num_real, first = torch.cat([max_k.view(1), min_k.view(1), lengths.sum().view(1),
                                               mask[:, 0].sum().view(1)]).tolist()  # one sync
    key_rows = _key_rows(mask, min_k, num_real)
    cu_k = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))
    layer_starts = torch.arange(0, L * num_real, num_real, device=dev).unsqueeze(1)
    offsets = torch.cat([(layer_starts + cu_k[:-1]).reshape(-1), cu_k[-1:] * L])
    rows = (key_rows if key_rows is not None else torch.arange(B * T, device=dev)).repeat(L)
    return Plan(rows=rows, offsets=offsets, layer_counts=[num_real] * L, layer_max_q=[max_k] * L,
                key_rows=key_rows, cu_k=cu_k, max_k=max_k, num_real=num_real, n_max=L,
                num_layers=L, batch=B, state_rows=None if key_rows is None else torch.arange(num_real, device=dev).repeat(L),
                first_real=first == B)


def _state_rows(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flattened rows b*T+t of real tokens -> their rows in the compact state (real tokens in
    order): the number of real tokens before each."""
    return (mask.reshape(-1).cumsum(0) - 1)[rows]


def _traced_plan(depths, mask, num_layers: int, backend) -> Plan:
    """The same plan inside a graph: every count an unbacked size, no branch on the data.
    Bad depths or an all-padding sequence fail the graph's runtime asserts (RuntimeError)."""
    rows, offsets, layer_counts, layer_max_q, rest, cu_k = _plan_and_stats(depths, mask, num_layers, backend)
    max_k, min_k, num_real, dmin, dmax, _ = rest
    # The real tokens' rows: the plan op with one layer and depth 1 on every real token.
    key_rows, _ = ops.plan(mask.long(), mask, 1, backend=backend, check=False)
    for size in layer_counts + layer_max_q + [max_k, num_real]:
        torch._check(size >= 0)
    # Messages without closures: Dynamo of torch 2.11 refuses a message function that reads a
    # local variable (graph break "Can't extract message from torch._check()").
    torch._check(dmin >= 0, lambda: "depths must lie in [0, N], N the number of layers")
    torch._check(dmax <= num_layers, lambda: "depths must lie in [0, N], N the number of layers")
    torch._check(min_k > 0, lambda: "attention_mask: every sequence needs at least one real token")
    torch._check(rows.shape[0] == sum(layer_counts))
    torch._check(key_rows.shape[0] == num_real)
    return Plan(rows=rows, offsets=offsets, layer_counts=layer_counts, layer_max_q=layer_max_q,
                key_rows=key_rows, cu_k=cu_k, max_k=max_k, num_real=num_real, n_max=num_layers,
                num_layers=num_layers, batch=depths.shape[0], state_rows=_state_rows(rows, mask))
