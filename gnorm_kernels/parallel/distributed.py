"""What changes when torch.distributed is initialised: reductions, shards, checks, one writer.

The package never starts processes: a user launches them (``torchrun``) and initialises the
process group (``gloo`` on CPUs, ``nccl`` on GPUs), or `init_from_env` does it from torchrun's
environment. Every function here is a no-op (or the identity) in a single process, so scorers,
evaluation and drivers call them unconditionally.

* Data parallelism (`data_parallel`): each rank scores or evaluates its own shard of the batches
  (`shard`: round robin); sums and counts are all-reduced with one collective for everything a
  step needs (`all_reduce_sums`), so every rank ends with the global value. A model sharded with
  FSDP2 (`is_sharded`) is the exception: its gradients are averaged over ranks, so every rank
  must see every batch, and nothing is reduced but the per-head partial sums of its row shards
  (`gnorm_kernels.parallel.fsdp`).
* Decisions: `check_same` verifies that every rank holds the same thing (a model fingerprint, a
  choice) and raises on every rank when not; `from_main` runs something on rank 0 (reading a
  checkpoint) and gives its result, or raises its error, on every rank. These checking
  collectives run on a gloo group of their own with a timeout (`CHECK_TIMEOUT`), so a rank that
  never arrives is an error, not a hang.
* Output: only rank 0 writes files or shows progress bars (`is_main`).
"""

from __future__ import annotations

import datetime
import hashlib
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "CHECK_TIMEOUT",
    "DistributedError",
    "all_reduce_",
    "all_reduce_max",
    "all_reduce_sums",
    "broadcast_object",
    "check_same",
    "data_parallel",
    "fingerprint_model",
    "from_main",
    "gather_shards",
    "init_from_env",
    "is_distributed",
    "is_initialised",
    "is_main",
    "is_sharded",
    "main_first",
    "mean_over_ranks",
    "rank",
    "shard",
    "shutdown",
    "where",
    "world_size",
]

_T = TypeVar("_T")
CHECK_TIMEOUT = datetime.timedelta(seconds=300)


class DistributedError(RuntimeError):
    """Ranks disagree, or the distributed set-up cannot run what was asked."""


# --------------------------------------------------------------------------- who am I


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the process that writes files and shows progress (rank 0, or the only one)."""
    return rank() == 0


def is_initialised() -> bool:
    """True once a process group is initialised (even one of a single process)."""
    return dist.is_available() and dist.is_initialized()


def where() -> str:
    """" (rank r of N)" under torch.distributed, "" in one process: for messages every rank prints."""
    return f" (rank {rank()} of {world_size()})" if is_distributed() else ""


def is_sharded(model: nn.Module) -> bool:
    """True when the model's parameters are DTensors (sharded by FSDP2's `fully_shard`)."""
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def data_parallel(model: nn.Module | None = None) -> bool:
    """True when the batches a rank is given are its shard of the data, so that sums over them
    must be all-reduced: distributed, and `model` (if given) not sharded by FSDP2."""
    return is_distributed() and (model is None or not is_sharded(model))


# --------------------------------------------------------------------------- set-up


def init_from_env(device: str | torch.device = "cpu", timeout_s: float = 1800.0) -> bool:
    """Initialise the default process group from torchrun's environment (RANK, WORLD_SIZE,
    MASTER_ADDR, ...), with the backend that suits `device`: gloo for CPU, nccl for CUDA.
    Returns False (and does nothing) outside torchrun; True once initialised. Collectives give
    up after `timeout_s` seconds (a rank that died or hangs is then an error on the others)."""
    if is_initialised():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if not dist.is_available():
        raise DistributedError("torchrun started this process, but this torch build has no torch.distributed")
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise DistributedError(
            f"torch.distributed runs here on cpu (gloo) or cuda (nccl) devices, got --device {device}; use cpu or cuda"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise DistributedError(f"device {device} asks for the nccl backend, but CUDA is not available here; use --device cpu")
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():
            raise DistributedError(
                f"local rank {local} needs a GPU of its own, but this machine has {torch.cuda.device_count()}; "
                "start fewer processes per node"
            )
        torch.cuda.set_device(local)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (filling caches: a converted GGUF model, a model of a non-default recipe, hub
    downloads), the other ranks when it has finished; the identity in one process."""
    waits = is_distributed() and not is_main()
    if waits:
        dist.barrier()
    yield
    if is_distributed() and not waits:
        dist.barrier()


def shutdown() -> None:
    """Destroy the default process group, if one is initialised (the end of a torchrun job)."""
    global _CHECKS
    if is_initialised():
        dist.destroy_process_group()
    _CHECKS = None


def shard(items: Sequence[_T], what: str = "calibration batches", *, allow_empty: bool = False) -> list[_T]:
    """This rank's share of `items` (round robin): rank r gets items r, r + W, r + 2W, ...

    Every rank must get at least one item unless `allow_empty`: fewer items than ranks is then an
    error on every rank (each rank sees the same count, so each raises the same error)."""
    items = list(items)
    size = world_size()
    if size > 1 and len(items) < size and not allow_empty:
        raise DistributedError(
            f"{len(items)} {what} cannot be shared by {size} processes: each needs at least one; "
            f"use smaller batches or fewer processes"
        )
    return items[rank()::size]


def gather_shards(items: Sequence[_T], what: str = "calibration batches") -> list[_T]:
    """Every rank's `items` put back in the order `shard` took them from (the inverse of
    `shard`), on every rank; raises on every rank when some rank holds none."""
    if not is_distributed():
        return list(items)
    parts = all_gather_objects(list(items))
    empty = [r for r, part in enumerate(parts) if not part]
    if empty:
        total = sum(len(p) for p in parts)
        raise DistributedError(
            f"ranks {empty} hold no {what}: {total} {what} cannot be shared by {len(parts)} processes; "
            "each needs at least one"
        )
    longest = max(len(p) for p in parts)
    return [part[i] for i in range(longest) for part in parts if i < len(part)]


# --------------------------------------------------------------------------- reductions


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sums(*tensors: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, ...]:
    """Sum each tensor over all ranks with ONE collective: they are flattened into one buffer of
    `dtype` (default float64), reduced, and returned as new tensors of the input shapes and dtypes.
    The identity (the same tensors) in a single process."""
    if not is_distributed():
        return tensors
    device = _collective_device()
    flat = torch.cat([t.detach().reshape(-1).to(device=device, dtype=dtype or torch.float64) for t in tensors])
    dist.all_reduce(flat)
    out, start = [], 0
    for t in tensors:
        n = t.numel()
        out.append(flat[start:start + n].view(t.shape).to(device=t.device, dtype=t.dtype))
        start += n
    return tuple(out)


def mean_over_ranks(total: Any, count: int, model: nn.Module | None = None) -> Any:
    """total / count for a tensor or a list of tensors, where under data parallelism
    (`data_parallel(model)`) the totals and the count are first summed over the ranks (one
    collective): the global mean, the same on every rank."""
    single = isinstance(total, torch.Tensor)
    parts = [total] if single else list(total)
    if data_parallel(model):
        *parts, reduced = all_reduce_sums(*parts, torch.tensor(float(count)))
        count = int(reduced)
    means = [t / count for t in parts]
    return means[0] if single else means


def all_reduce_(*tensors: torch.Tensor) -> None:
    """Sum each tensor over all ranks in place (one collective, float32 on the wire: gradients)."""
    if not is_distributed():
        return
    for t, total in zip(tensors, all_reduce_sums(*tensors, dtype=torch.float32)):
        t.copy_(total)


def all_reduce_max(value: int) -> int:
    """The largest of every rank's `value` (an int, e.g. a class count)."""
    if not is_distributed():
        return int(value)
    box = torch.tensor([int(value)], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return int(box.item())


# --------------------------------------------------------------------------- checks and decisions

_CHECKS: tuple[Any, Any] | None = None  # (the default group, its gloo group for checks)


def _checks_group():
    """A gloo group over every rank with a short timeout, made on first use (every rank reaches
    the checks in the same order, so every rank makes it at the same point)."""
    global _CHECKS
    world = dist.group.WORLD
    if _CHECKS is None or _CHECKS[0] is not world:
        _CHECKS = (world, dist.new_group(backend="gloo", timeout=CHECK_TIMEOUT))
    return _CHECKS[1]


def all_gather_objects(value: Any) -> list[Any]:
    values = [None] * world_size()
    dist.all_gather_object(values, value, group=_checks_group())
    return values


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (the identity in one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_checks_group())
    return box[0]


def check_same(value: Any, what: str) -> None:
    """Raise DistributedError on every rank unless every rank holds the same `value` (for a
    dict, the message names the keys that differ)."""
    if not is_distributed():
        return
    values = all_gather_objects(value)
    differ = [r for r, v in enumerate(values) if v != values[0]]
    if not differ:
        return
    if all(isinstance(v, dict) for v in values):
        keys = [k for k in values[0] if any(v.get(k) != values[0][k] for v in values)]
        values = [{k: v.get(k) for k in keys} for v in values]
    shown = ", ".join(f"rank {r} has {values[r]!r}" for r in differ[:3]) + (", ..." if len(differ) > 3 else "")
    raise DistributedError(f"ranks hold different {what}: rank 0 has {values[0]!r}, but {shown}")


def from_main(fn: Callable[[], _T], what: str) -> _T:
    """Run `fn` on rank 0 only and return its result on every rank; if it raises, every rank
    raises the same error (rank 0 reads a checkpoint, the others learn what it found)."""
    if not is_distributed():
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    if is_main():
        try:
            outcome = ("ok", fn())
        except Exception as err:  # shared with the other ranks, then raised on rank 0 as well
            outcome = ("error", err)
    try:
        status, value = broadcast_object(outcome)
    except Exception as err:  # e.g. an error that cannot be pickled
        raise DistributedError(f"rank 0 could not share {what}: {err}") from err
    if status == "error":
        raise value  # on rank 0 the original error; elsewhere its copy
    return value


def fingerprint_model(model: nn.Module) -> str:
    """A cheap fingerprint of a model's layout and weights: parameter names and shapes, and a
    few sums per tensor (enough to tell different checkpoints or seeds apart)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.state_dict().items():
            t = param.detach().float()
            stats = (float(t.sum()), float(t.abs().sum())) if t.numel() else (0.0, 0.0)
            digest.update(f"{name}:{tuple(param.shape)}:{stats[0]:.6e}:{stats[1]:.6e};".encode())
    return digest.hexdigest()[:16]
