"""The library's ops (plan, gather, scatter) with one place that picks the backend.

Backends:
    "torch"  plain PyTorch (adaptive_encoder.reference), any device
    "cpu"    the C++ extension's CPU kernels (torch.ops.adaptive_encoder.*)
    "cuda"   the C++ extension's CUDA kernels (same ops, CUDA dispatch key)
    "triton" Triton kernels (GPU, or CPU under TRITON_INTERPRET=1)

Choose by argument (`backend=`) or the ADAPTIVE_ENCODER_BACKEND environment variable;
otherwise: CUDA tensors -> cuda, else triton, else torch; CPU tensors -> cpu, else torch.

gather/scatter are differentiable on every backend: gather's backward is a scatter onto
zeros, scatter's backward is a gather (for src) and a scatter of zeros (for base), each
through the same backend's ops.

Bounds: the public gather/scatter refuse out-of-range and negative rows and, for scatter,
duplicate rows (ValueError), at the cost of one small reduction and one host sync.
`check=False` skips that; it is for the encoder's internal path, whose rows come from the
plan and are always in range and unique. Even unchecked, every kernel masks its loads and
stores by the row bounds, so no input reads or writes outside the tensors (an unchecked
out-of-range gather row reads zeros, an unchecked out-of-range scatter row is dropped).

Every op is registered with torch (TORCH_LIBRARY in C++, torch.library.custom_op for Triton),
so torch.compile, opcheck and dispatch modes see it; plain eager calls skip the dispatcher's
Python layers where nothing but the kernel would run (`direct`, `call`: ~10-40 us of host time
a call, which a launch-bound GPU forward pays in full).
"""
import importlib.util
import numbers
import os

import torch
from torch.autograd import forward_ad as _forward_ad

from . import reference, settings

BACKENDS = ("torch", "cpu", "cuda", "triton")
ENV_VAR = "ADAPTIVE_ENCODER_BACKEND"

try:
    from . import _C  # noqa: F401  (registers torch.ops.adaptive_encoder.*)

    _EXT_ERROR = None
except ImportError as e:  # the package still works through the torch/triton backends
    _EXT_ERROR = e


# Availability cannot change after import; reading it once keeps resolve_backend traceable.
_CPP_DEVICES = frozenset() if _EXT_ERROR is not None else frozenset(
    dev for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))
    if torch._C._dispatch_has_kernel_for_dispatch_key("adaptive_encoder::gather", key)
)
_HAS_TRITON = importlib.util.find_spec("triton") is not None


def cpp_available(device_type: str) -> bool:
    """Whether the C++ extension has kernels for `device_type` ("cpu" or "cuda")."""
    return device_type in _CPP_DEVICES


def triton_available(device_type: str) -> bool:
    if not _HAS_TRITON:
        return False
    if device_type == "cuda":
        return torch.cuda.is_available()
    return device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def _unavailable_reason(name: str, device_type: str) -> str | None:
    if name == "torch":
        return None
    if name in ("cpu", "cuda"):
        if name != device_type:
            return f"backend {name!r} runs on {name} tensors, these are on {device_type}"
        if _EXT_ERROR is not None:
            return f"the C++ extension did not load ({_EXT_ERROR}); reinstall with `pip install -e . --no-build-isolation`"
        if not cpp_available(name):
            return f"the C++ extension was built without {name} kernels"
        return None
    if not triton_available(device_type):
        if device_type == "cpu":
            return "Triton on CPU tensors needs TRITON_INTERPRET=1 set before the first import"
        return "triton is not installed or no GPU is visible"
    return None


def check_backend_name(backend: str | None) -> None:
    """ValueError unless `backend` is None or a known name (where it can run is asked per call)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def resolve_backend(device: torch.device | str, backend: str | None = None) -> str:
    """Name of the backend to use for tensors on `device`; raises if it cannot run there."""
    device_type = torch.device(device).type
    name = backend or os.environ.get(ENV_VAR) or None
    if name is None:
        order = ("cuda", "triton", "torch") if device_type == "cuda" else ("cpu", "torch")
        return next(n for n in order if _unavailable_reason(n, device_type) is None)
    check_backend_name(name)
    reason = _unavailable_reason(name, device_type)
    if reason is not None:
        raise RuntimeError(f"backend {name!r} is not available: {reason}")
    return name


# --- Calling a kernel without the dispatcher ---
#
# A Python custom op (torch.library.custom_op) costs ~10 us of host time per call under
# inference_mode and ~17 us under no_grad in a loop, against ~1.3 us for a call of its Python
# function, and 12-44 us a call in the encoder's forward (bench/dispatch_host_cpu.py, both ways;
# bench/NOTES.md); a C++ op with a Python autograd registration (ours) ~3 us under
# inference_mode and ~8 us under no_grad, ~3.5 us below the autograd key. A GPU forward in the
# launch-bound regime is its host time, so where nothing but the kernel would run, the kernel
# is called directly. DIRECT = False calls everything through the dispatcher (via_dispatcher():
# timing both).
DIRECT = True
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def via_dispatcher():
    """Inside: every op goes through torch's dispatcher, as without the direct path (DIRECT off)."""
    return settings.switched(globals(), "DIRECT", False)


def direct(*tensors) -> bool:
    """Whether calling an op's kernel as a plain function gives exactly what the dispatcher's
    call would: eager code (no torch.compile), no mode that wants to see ops (a TorchDispatchMode
    such as FakeTensorMode, a tracer or an op counter; a TorchFunctionMode; vmap, grad or jvp
    transforms; forward-mode AD), plain tensors (no subclass with its own dispatch), no gradient
    needed."""
    return (DIRECT and not torch.compiler.is_compiling() and not torch._C._len_torch_dispatch_stack()
            and not torch._C._is_torch_function_mode_enabled()
            and torch._C._functorch.peek_interpreter_stack() is None and _forward_ad._current_level < 0
            and all(type(t) in _PLAIN for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


def call(op, kernel, *args, tensors=(), mutated=None):
    """op(*args) for a Python custom op `op` whose implementation is `kernel`: the kernel directly
    where direct(*tensors) holds (tensors: the tensor arguments), else through the dispatcher.
    mutated: the argument the op writes in place; its version counter is bumped, as the
    dispatcher's call does."""
    if not direct(*tensors):
        return op(*args)
    out = kernel(*args)
    if mutated is not None:
        bump_version(mutated)
    return out


def bump_version(t: torch.Tensor) -> None:
    """Mark t as changed in place, as the dispatcher does for an op that mutates it, so that
    autograd refuses a tensor it saved and that changed since (rather than compute a silently
    wrong gradient). Needed after a kernel called directly and after our C++ ops, which have no
    ADInplaceOrView kernel of their own. Inference tensors have no version counter; under
    torch.compile the op's schema tells functionalization."""
    if not torch.compiler.is_compiling() and not t.is_inference():  # (is_inference() breaks a traced graph)
        torch.autograd.graph.increment_version(t)


def _below_autograd(op, *args):
    """A C++ op's call without its Python autograd kernel, which under no_grad only checks and
    redispatches (~5 us); under inference_mode the autograd keys are off already."""
    if torch.is_inference_mode_enabled():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


# --- Triton backend as custom ops, so torch.compile / opcheck see it like the C++ ops ---
# Each custom op's implementation is a plain function as well (_TRITON_KERNELS), called
# directly where `direct` holds.

def _triton_plan(depths: torch.Tensor, mask: torch.Tensor, num_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    from .kernels import triton_plan  # imported late: TRITON_INTERPRET is read at import

    return triton_plan(depths, mask, num_layers)


def _triton_gather(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    from .kernels import triton_gather

    return triton_gather(x, rows)


def _triton_scatter(base: torch.Tensor, src: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    from .kernels import triton_scatter

    return triton_scatter(base, src, rows)


def _triton_scatter_(base: torch.Tensor, src: torch.Tensor, rows: torch.Tensor) -> None:
    from .kernels import triton_scatter_

    triton_scatter_(base, src, rows)


_TRITON_KERNELS = {"plan": _triton_plan, "gather": _triton_gather, "scatter": _triton_scatter,
                   "scatter_": _triton_scatter_}
for _name, _fn in _TRITON_KERNELS.items():
    torch.library.custom_op(f"adaptive_encoder::triton_{_name}", _fn,
                            mutates_args=("base",) if _name == "scatter_" else ())


def _plan_fake(depths, mask, num_layers):
    size = torch.library.get_ctx().new_dynamic_size()
    return (depths.new_empty((size,), dtype=torch.int64),
            depths.new_empty((num_layers * depths.shape[0] + 1,), dtype=torch.int64))


def _gather_fake(x, rows):
    return x.new_empty((rows.shape[0], x.shape[1]))


def _scatter_fake(base, src, rows):
    return torch.empty_like(base, memory_format=torch.contiguous_format)


def _register_autograd(gather_op, scatter_op) -> None:
    def gather_setup(ctx, inputs, output):
        x, rows = inputs
        ctx.save_for_backward(rows)
        ctx.num_rows = x.shape[0]

    def gather_backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        zeros = grad.new_zeros((ctx.num_rows, grad.shape[1]))
        return scatter_op(zeros, grad, rows), None

    def scatter_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[2])

    def scatter_backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        grad_base = scatter_op(grad, grad.new_zeros((rows.shape[0], grad.shape[1])), rows)
        return grad_base, gather_op(grad, rows), None

    torch.library.register_autograd(gather_op, gather_backward, setup_context=gather_setup)
    torch.library.register_autograd(scatter_op, scatter_backward, setup_context=scatter_setup)


def _scatter_inplace_fake(base, src, rows):
    return None


def _register(prefix: str) -> dict:
    ns = torch.ops.adaptive_encoder
    ops = {name: getattr(ns, prefix + name).default for name in ("plan", "gather", "scatter", "scatter_")}
    for name, fake in (("plan", _plan_fake), ("gather", _gather_fake), ("scatter", _scatter_fake),
                       ("scatter_", _scatter_inplace_fake)):
        torch.library.register_fake(ops[name])(fake)
    _register_autograd(ops["gather"], ops["scatter"])
    return ops


_OPS = {"triton": _register("triton_")}
if _EXT_ERROR is None:
    _OPS["cpu"] = _OPS["cuda"] = _register("")
_OPS["torch"] = {"plan": reference.plan, "gather": reference.gather, "scatter": reference.scatter,
                 "scatter_": reference.scatter_}


def _run(backend: str, op: str, tensors: tuple, *rest):
    """The backend's `op` on (*tensors, *rest): without the dispatcher's layers where `direct`
    holds (the Triton kernel's function; the C++ op below its autograd kernel)."""
    fn = _OPS[backend][op]
    mutated = tensors[0] if op == "scatter_" else None
    if backend == "triton":
        return call(fn, _TRITON_KERNELS[op], *tensors, *rest, tensors=tensors, mutated=mutated)
    if backend == "torch" or not direct(*tensors):
        out = fn(*tensors, *rest)
    else:
        out = _below_autograd(fn, *tensors, *rest)
    if backend != "torch" and mutated is not None:  # the C++ op does not bump it itself
        bump_version(mutated)
    return out


# --- public entry points: argument checks, then dispatch ---

def _check_rows(x: torch.Tensor, rows: torch.Tensor, op: str, x_name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(rows, torch.Tensor):
        raise TypeError(f"{op}: {x_name} and rows must be tensors")
    if x.dim() != 2:
        raise ValueError(f"{op}: {x_name} must be 2-D (rows, hidden), got shape {tuple(x.shape)}")
    if rows.dim() != 1:
        raise ValueError(f"{op}: rows must be 1-D, got shape {tuple(rows.shape)}")
    if rows.dtype != torch.int64:
        raise TypeError(f"{op}: rows must be int64, got {rows.dtype}")
    if rows.device != x.device:
        raise ValueError(f"{op}: {x_name} is on {x.device} but rows on {rows.device}")


def _check_scatter(base: torch.Tensor, src: torch.Tensor, rows: torch.Tensor, op: str) -> None:
    """The arguments of scatter / scatter_: src (A, D) of base's dtype and device."""
    _check_rows(base, rows, op, "base")
    if not isinstance(src, torch.Tensor) or src.dim() != 2 or src.shape[0] != rows.shape[0] \
            or src.shape[1] != base.shape[1]:
        raise ValueError(f"{op}: src must be ({rows.shape[0]}, {base.shape[1]}), got {tuple(getattr(src, 'shape', ()))}")
    if src.dtype != base.dtype:
        raise TypeError(f"{op}: src dtype {src.dtype} differs from base dtype {base.dtype}")
    if src.device != base.device:
        raise ValueError(f"{op}: base is on {base.device} but src on {src.device}")


def check_rows_in_range(rows: torch.Tensor, limit: int, op: str, unique: bool) -> None:
    """ValueError unless every row is in [0, limit) (and, if `unique`, no row repeats)."""
    if rows.numel() == 0:
        return
    if torch.compiler.is_compiling():  # no host sync inside a graph: a traceable assertion instead
        ok = (rows >= 0).all() & (rows < limit).all()
        if unique:
            ok = ok & (_most_hits(rows, limit) <= 1)
        torch._assert_async(ok, f"{op}: a row index is out of range [0, {limit})" + (" or repeated" if unique else ""))
        return
    if limit == 0:
        raise ValueError(f"{op}: row index {int(rows[0])} out of range [0, 0) (the tensor has no rows)")
    lo, hi = rows.aminmax()
    stats = [lo, hi]
    if unique:  # duplicates: any row hit twice (out-of-range rows are clamped, reported first)
        stats.append(_most_hits(rows, limit).to(rows.dtype))
    stats = torch.stack(stats).tolist()  # the one host sync of the check
    if stats[0] < 0 or stats[1] >= limit:
        bad = stats[0] if stats[0] < 0 else stats[1]
        raise ValueError(f"{op}: row index {bad} out of range [0, {limit})")
    if unique and stats[2] > 1:
        raise ValueError(f"{op}: rows must be unique (a row appears {stats[2]} times)")


def _most_hits(rows: torch.Tensor, limit: int) -> torch.Tensor:
    """0-d int32: how often the most frequent row occurs (rows clamped into [0, limit))."""
    limit = max(limit, 1)
    hits = torch.zeros(limit, dtype=torch.int32, device=rows.device)
    hits.index_add_(0, rows.clamp(0, limit - 1), torch.ones_like(rows, dtype=torch.int32))
    return hits.amax()


def check_depths(depths: torch.Tensor, mask: torch.Tensor, num_layers: int, op: str = "plan") -> None:
    """ValueError naming the first depth outside [0, num_layers], padding positions included."""
    if depths.numel() == 0:
        return
    lo, hi = torch.stack(list(depths.aminmax())).tolist()
    if lo >= 0 and hi <= num_layers:
        return
    b, t = ((depths < 0) | (depths > num_layers)).nonzero()[0].tolist()
    where = "a real token" if bool(mask[b, t]) else "a padding position"
    raise ValueError(f"{op}: depths must lie in [0, {num_layers}] (the number of layers); depth "
                     f"{int(depths[b, t])} at (batch {b}, position {t}), {where}")


def plan(depths: torch.Tensor, mask: torch.Tensor, num_layers: int, backend: str | None = None,
         check: bool = True):
    """Active rows of every layer. depths (B,T) int64, mask (B,T) bool -> (rows, offsets).

    See adaptive_encoder.reference.plan for the exact layout. With `check` (default) a depth
    outside [0, num_layers] is a ValueError naming where it is; unchecked, depths above
    num_layers act as num_layers and negative ones as 0.
    """
    if not isinstance(depths, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise TypeError("plan: depths and mask must be tensors")
    if depths.dtype != torch.int64:
        raise TypeError(f"plan: depths must be int64, got {depths.dtype}")
    if mask.dtype != torch.bool:
        raise TypeError(f"plan: mask must be bool, got {mask.dtype}")
    if depths.dim() != 2 or mask.shape != depths.shape:
        raise ValueError(f"plan: depths (B,T) and mask must match, got {tuple(depths.shape)} and {tuple(mask.shape)}")
    if mask.device != depths.device:
        raise ValueError(f"plan: depths on {depths.device} but mask on {mask.device}")
    if isinstance(num_layers, bool) or not isinstance(num_layers, numbers.Integral):
        raise TypeError(f"plan: num_layers must be an integer, got {num_layers!r}")
    if num_layers < 1:
        raise ValueError(f"plan: num_layers must be >= 1, got {num_layers}")
    name = resolve_backend(depths.device, backend)
    if check:
        check_depths(depths, mask, int(num_layers))
    return _run(name, "plan", (depths, mask), int(num_layers))


def gather(x: torch.Tensor, rows: torch.Tensor, backend: str | None = None, check: bool = True) -> torch.Tensor:
    """out[i] = x[rows[i]]. x (R,D) any dtype, rows (A,) int64 in [0, R) -> (A,D)."""
    _check_rows(x, rows, "gather")
    name = resolve_backend(x.device, backend)
    if check:
        check_rows_in_range(rows, x.shape[0], "gather", unique=False)
    return _run(name, "gather", (x, rows))


def scatter(base: torch.Tensor, src: torch.Tensor, rows: torch.Tensor, backend: str | None = None,
            check: bool = True) -> torch.Tensor:
    """out = base with out[rows[i]] = src[i]. base (R,D), src (A,D) same dtype, rows (A,) int64
    unique, in [0, R)."""
    _check_scatter(base, src, rows, "scatter")
    name = resolve_backend(base.device, backend)
    if check:
        check_rows_in_range(rows, base.shape[0], "scatter", unique=True)
    return _run(name, "scatter", (base, src, rows))


def scatter_(base: torch.Tensor, src: torch.Tensor, rows: torch.Tensor, backend: str | None = None,
             check: bool = True) -> torch.Tensor:
    """In place: base[rows[i]] = src[i]; returns base. base (R,D) contiguous. For inference (no
    autograd): it saves the out-of-place scatter's copy of the whole of base."""
    _check_scatter(base, src, rows, "scatter_")
    if not base.is_contiguous():
        raise ValueError("scatter_: base must be contiguous")
    if torch.is_grad_enabled() and (base.requires_grad or src.requires_grad):
        raise RuntimeError("scatter_ is for inference: use scatter when gradients are needed")
    name = resolve_backend(base.device, backend)
    if check:
        check_rows_in_range(rows, base.shape[0], "scatter_", unique=True)
    _run(name, "scatter_", (base, src, rows))
    return base
