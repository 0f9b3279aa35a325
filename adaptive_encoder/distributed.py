"""torch.distributed helpers for running the CLI under `torchrun` (data parallel).

    torchrun --nproc_per_node=2 -m adaptive_encoder train ...

`init_from_env()` starts the process group when torchrun's variables are set, with a timeout
on every collective so a rank that dies ends the others with an error instead of a hang
($ADAPTIVE_ENCODER_DIST_TIMEOUT seconds, default 600). Without torchrun everything here is
a no-op for a world of one process.

The backend follows the command's `--device`: gloo for the CPU (the default, also on a
machine with GPUs: DistributedDataParallel over CPU parameters fails on an nccl-only group,
which is what `torchrun ... train` got on a GPU machine before), and "cpu:gloo,cuda:nccl" for
`--device cuda`, where each rank computes on the GPU of its local rank (local_device): nccl
carries the gradients, gloo the few numbers and objects the ranks exchange from the CPU.
"""
import datetime
import os

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str = "cpu") -> bool:
    """Initialise from torchrun's environment (WORLD_SIZE > 1); returns whether it did.
    device: the command's --device. On the CPU the group is gloo; for a GPU it is gloo for CPU
    tensors and objects plus nccl for CUDA tensors (DistributedDataParallel's gradients)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    timeout = datetime.timedelta(seconds=float(os.environ.get("ADAPTIVE_ENCODER_DIST_TIMEOUT", "600")))
    try:
        gpu = torch.device(device).type == "cuda"
    except RuntimeError:  # a bad --device: local_device names it once the group is up
        gpu = False
    dist.init_process_group("cpu:gloo,cuda:nccl" if gpu else "gloo", timeout=timeout)  # module docstring
    return True


def local_device(spec: str) -> torch.device:
    """The device a command computes on, from `--device`: 'cpu', 'cuda' (under torchrun each
    rank takes the GPU of its LOCAL_RANK) or 'cuda:N' (one process only). Raises ValueError
    naming the problem (no CUDA, too few GPUs, one GPU for several ranks, another kind)."""
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"--device {spec!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ValueError(f"--device {spec!r}: expected cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.index is not None and world_size() > 1:
        raise ValueError(f"--device {spec}: under torchrun pass --device cuda (rank r takes GPU LOCAL_RANK), "
                         "not one GPU for every rank")
    index = dev.index if dev.index is not None else local
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {spec}: GPU {index} asked for, {torch.cuda.device_count()} visible"
                         + (" (one per process on this machine)" if dev.index is None else ""))
    return torch.device("cuda", index)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class InputError(RuntimeError):
    """A bad input seen by one or more ranks (all_ok): the CLI prints it without a traceback."""


def all_ok(error: str | None) -> None:
    """Collective: raise on every rank if any rank reports an error (its message, with its rank),
    so a bad input seen by one rank never leaves the others waiting in a later collective."""
    if not active():
        if error:
            raise InputError(error)
        return
    errors = [None] * world_size()
    dist.all_gather_object(errors, error)
    bad = [(r, e) for r, e in enumerate(errors) if e]
    if bad:
        raise InputError("; ".join(f"rank {r}: {e}" for r, e in bad))


def comm_device() -> torch.device:
    """Where collective tensors must live: CUDA for nccl, CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_tensor(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks of a tensor (returned on t's device)."""
    if not active():
        return t
    moved = t.to(comm_device())
    dist.all_reduce(moved)
    return moved.to(t.device)


def sum_(values: list) -> list:
    """Element-wise sum over ranks of a list of numbers (float64)."""
    if not active():
        return list(values)
    return sum_tensor(torch.tensor(values, dtype=torch.float64)).tolist()


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def data_parallel(module):
    """DistributedDataParallel under torchrun, the module itself otherwise. Unused parameters
    are normal here (layers above a batch's deepest token, the halting unit in stage 1, a
    pooler the anytime MLM never reads)."""
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device  # a module on a GPU: its replica is that GPU's
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def everywhere(flag: bool) -> bool:
    """Collective: whether `flag` holds on every rank. For decisions that lead into collectives
    (is a cache file there?), which every rank must take alike even when their views differ."""
    return all(gather_objects(bool(flag)))


def save_atomically(obj, path: str) -> None:
    """torch.save through a temporary file and one rename: a reader (another rank, a rerun after
    a kill) sees the old file or the whole new one, never a half-written one."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def barrier() -> None:
    if active():
        dist.barrier()
