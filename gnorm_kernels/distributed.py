"""What changes when torch.distributed is initialised: reductions, shards, one writer.

The package never starts processes: a user launches them (``torchrun``) and initialises the
process group (``gloo`` on CPUs, ``nccl`` on GPUs), or `init_from_env` does it from torchrun's
environment. Every function here is a no-op (or the identity) in a single process, so scorers,
evaluation and drivers call them unconditionally.

* Data parallelism: each rank scores or evaluates its own shard of the batches; sums and counts
  are all-reduced (one collective for everything a step needs: `all_reduce_sums`), so every rank
  ends with the global value.
* Decisions: rank 0 decides, `broadcast_object` shares it, `check_same` verifies that every rank
  holds the same thing (a model fingerprint, a choice) and raises on every rank when not.
* Output: only rank 0 writes files or shows progress bars (`is_main`).
"""

from __future__ import annotations

import datetime
import hashlib
import os
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "init_from_env",
    "shard",
    "all_reduce_sums",
    "broadcast_object",
    "check_same",
    "fingerprint_model",
    "DistributedError",
]

T = TypeVar("T")
CHECK_TIMEOUT = datetime.timedelta(seconds=60)


class DistributedError(RuntimeError):
    """Ranks disagree, or the distributed set-up cannot run what was asked."""


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the process that writes files and shows progress (rank 0, or the only one)."""
    return rank() == 0


def init_from_env(device: str | torch.device = "cpu", timeout_s: float = 300.0) -> bool:
    """Initialise the default process group from torchrun's environment (RANK, WORLD_SIZE,
    MASTER_ADDR, ...), with the backend that suits `device`: gloo for CPU, nccl for CUDA.
    Returns False (and does nothing) outside torchrun; True once initialised."""
    if dist.is_initialized():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise DistributedError(f"device {device} asks for the nccl backend, but CUDA is not available here; use --device cpu")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def shard(items: Sequence[T], what: str = "calibration batches") -> list[T]:
    """This rank's share of `items` (round robin): rank r gets items r, r + W, r + 2W, ...

    Every rank must get at least one item: fewer items than ranks is an error on every rank."""
    items = list(items)
    size = world_size()
    if size > 1 and len(items) < size:
        raise DistributedError(
            f"{len(items)} {what} cannot be shared by {size} processes: each needs at least one; "
            f"use smaller batches or fewer processes"
        )
    return items[rank()::size]


def all_reduce_sums(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Sum each tensor over all ranks with ONE collective (flattened into one float64 buffer,
    or float32 where float64 is not supported); returns new tensors of the input shapes/dtypes."""
    if not is_distributed():
        return tensors
    device = _collective_device(tensors)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    flat = torch.cat([t.detach().reshape(-1).to(device=device, dtype=dtype) for t in tensors])
    dist.all_reduce(flat)
    out, start = [], 0
    for t in tensors:
        n = t.numel()
        out.append(flat[start:start + n].view(t.shape).to(device=t.device, dtype=t.dtype))
        start += n
    return tuple(out)


def _collective_device(tensors: Sequence[torch.Tensor]) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (the identity in one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def check_same(value: Any, what: str) -> None:
    """Raise DistributedError on every rank unless every rank holds the same `value`."""
    if not is_distributed():
        return
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise DistributedError(f"ranks hold different {what}: {values}")


def fingerprint_model(model: torch.nn.Module) -> str:
    """A cheap fingerprint of a model's layout and weights: parameter names and shapes, and a
    few sums per tensor (enough to tell different checkpoints or seeds apart)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.state_dict().items():
            t = param.detach().float()
            stats = (float(t.sum()), float(t.abs().sum())) if t.numel() else (0.0, 0.0)
            digest.update(f"{name}:{tuple(param.shape)}:{stats[0]:.6e}:{stats[1]:.6e};".encode())
    return digest.hexdigest()[:16]
