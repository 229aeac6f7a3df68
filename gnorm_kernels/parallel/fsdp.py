"""Greedy-Gnorm on a model sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`).

FSDP2 turns every parameter into a DTensor sharded on dim 0, so each rank holds a block of rows of
every Q/K/V weight, and after backward each rank holds its rows of the gradient, AVERAGED over
the ranks. Hence, on a sharded model:

* every rank feeds every calibration batch (the average of equal gradients is the batch's own
  gradient, and the per-batch and per-example means keep their meaning); the model is sharded,
  the data is not (`gnorm_kernels.parallel.distributed.data_parallel` is False for it);
* a head's block norm is the square root of the sum, over ranks, of each rank's partial sum of
  squares over the rows of the block it holds; a block may straddle two shards
  (`ShardedQKVGradients`, which gnorm's per-batch and accumulated scores use in place of
  `kernels.QKVGradientBuffer`: one all-reduce of [layers, 3, heads] numbers per batch);
* heads cannot be cut out of sharded weights, so the greedy driver removes them by masking
  (`MaskedPruning`: a masked head's scores are exactly zero and are excluded) and tracks the
  shapes and sizes of the pruned model on a meta-device copy that is pruned for real;
* at the end `save_pruned_sharded` gathers the full weights on rank 0 and writes an ordinary
  `pruning.save_pruned` checkpoint, which `load_pruned` reloads in a single process.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

import gnorm_kernels.kernels as kernels
from gnorm_kernels.checkpoints.formats import model_from_config
from gnorm_kernels.checkpoints.pruned import save_pruned
from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.layout import Head
from gnorm_kernels.heads.masking import mask_heads
from gnorm_kernels.heads.pruning import prune_heads
from gnorm_kernels.heads.units import PruningUnit, unit_of
from gnorm_kernels.kernels.torch_backend import norm_from_sumsq
from gnorm_kernels.parallel import distributed

__all__ = ["MaskedPruning", "ShardedQKVGradients", "row_shard", "save_pruned_sharded", "shard_model", "unsharded_copy"]



def shard_model(model: nn.Module) -> nn.Module:
    """Shard `model` in place with FSDP2: each attention layer is one unit, the rest the root's.

    Every rank must hold the same model (checked first: sharding different models would mix
    their rows silently). Needs an initialised process group."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    if not (dist.is_available() and dist.is_initialized()):
        raise distributed.DistributedError(
            "FSDP sharding needs torch.distributed initialised: launch with torchrun --nproc-per-node N"
        )
    if distributed.is_sharded(model):
        raise ValueError("the model is already sharded (its parameters are DTensors)")
    layout = head_layout(model)
    if layout.shared_across_depth:
        raise ValueError(f"{layout.family} reuses one attention block at every depth; FSDP scoring supports unshared layers")
    distributed.check_same(distributed.fingerprint_model(model), "models (weights or layout) before sharding")
    for block in layout.blocks:
        fully_shard(block.layer)
    fully_shard(model)
    return model


def row_shard(tensor: torch.Tensor, what: str) -> tuple[torch.Tensor, int, int]:
    """(this rank's rows, the first row's global index, the global row count) of a DTensor
    sharded on dim 0 over every rank (FSDP2's layout: torch.chunk's even split)."""
    from torch.distributed.tensor import Shard

    placements = tuple(tensor.placements)
    mesh = tensor.device_mesh
    if placements != (Shard(0),) or mesh.ndim != 1 or mesh.size() != distributed.world_size():
        raise ValueError(
            f"{what}: expected a DTensor sharded by rows over all {distributed.world_size()} ranks "
            f"(placements (Shard(dim=0),) on a 1-D mesh), got placements {placements} on a mesh of shape {tuple(mesh.shape)}"
        )
    local = tensor.to_local()
    total = tensor.shape[0]
    per_rank = -(-total // mesh.size())
    first = min(mesh.get_local_rank() * per_rank, total)
    if local.shape[0] != min(per_rank, total - first):
        raise ValueError(f"{what}: rank holds {local.shape[0]} of {total} rows, not torch.chunk's even split")
    return local, first, total


class ShardedQKVGradients:
    """`kernels.QKVGradientBuffer`'s interface for a sharded model: zero_(), norms() and the
    `with` block that restores every weight's previous .grad.

    weights: per layer (W_Q, W_K, W_V) DTensor parameters sharded by rows; head counts follow
    their global rows (K/V may have fewer heads: grouped-query attention). norms() sums each
    rank's per-head partial sums of squares with one all-reduce and takes the square roots."""

    def __init__(self, weights: Sequence[Sequence[torch.Tensor]], head_size: int, *,
                 num_kv_heads: Any = None, backend: str = "auto"):
        self.params = [tuple(layer) for layer in weights]
        self.head_size = head_size
        self.backend = backend
        self.counts = [tuple(p.shape[0] // head_size for p in layer) for layer in self.params]
        self._saved: list | None = None

    def __enter__(self) -> "ShardedQKVGradients":
        self._saved = [p.grad for layer in self.params for p in layer]
        self.zero_()
        return self

    def __exit__(self, *exc) -> None:
        for p, grad in zip((p for layer in self.params for p in layer), self._saved or []):
            p.grad = grad
        self._saved = None

    def zero_(self) -> "ShardedQKVGradients":
        """Drop the gradients (FSDP2 then writes the next backward's instead of adding to them)."""
        for layer in self.params:
            for p in layer:
                p.grad = None
        return self

    @torch.no_grad()
    def norms(self) -> torch.Tensor:
        """G_Q, G_K, G_V block norms of every layer -> [L, 3, H_max] float32, NaN past each part's heads."""
        h_max = max((max(c) for c in self.counts), default=0)
        sumsq = torch.zeros(len(self.params), 3, h_max)
        for l, (layer, counts) in enumerate(zip(self.params, self.counts)):
            for p, (weight, heads) in enumerate(zip(layer, counts)):
                if heads and weight.grad is not None:
                    local, first, total = row_shard(weight.grad, f"layer {l} {'QKV'[p]} gradient")
                    sumsq[l, p, :heads] = kernels.head_block_norms(
                        local, heads, squared=True, row_offset=first, total_rows=total, backend=self.backend
                    ).cpu()
        (sumsq,) = distributed.all_reduce_sums(sumsq)
        out = norm_from_sumsq(sumsq)
        for l, counts in enumerate(self.counts):
            for p, heads in enumerate(counts):
                out[l, p, heads:] = float("nan")
        return out


# --------------------------------------------------------------------------- pruning a sharded model


def unsharded_copy(model: nn.Module, device: str | torch.device = "meta") -> nn.Module:
    """A fresh model of `model`'s (unsharded) class and config on `device`, with the heads that
    `model` lacks pruned away; its weights are NOT copied (random on a real device)."""
    from torch.distributed.fsdp import FSDPModule

    base = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    config = type(model.config).from_dict(model.config.to_dict())
    config.architectures = [base.__name__]
    config.pruned_heads = {}
    dtype = next(model.parameters()).dtype
    with torch.device(device):
        copy = model_from_config(config, getattr(model.config, "_attn_implementation", None)).to(dtype)
    pruned = head_layout(model).pruned_heads()
    if pruned:
        prune_heads(copy, pruned)
    return copy.eval()


class MaskedPruning:
    """The greedy driver's work model when it is sharded: units are removed by masking.

    `model` is the sharded model (scored and evaluated inside `applied()`, where `mask` gates the
    removed query heads to zero); `structure` is a meta-device copy pruned for real, whose layout
    and sizes are those of the pruned model (what the trajectory records). `unit` is "head" or
    "kv_group" (a key/value group goes with all its query heads)."""

    def __init__(self, model: nn.Module, unit: str | PruningUnit = "head"):
        layout = head_layout(model)
        self.model, self.unit = model, unit_of(unit, layout)
        self.group = layout.num_heads // layout.kv_heads if self.unit.is_group else 1
        self.structure = unsharded_copy(model, "meta")
        self.mask = layout.kept_mask().float()

    def prune(self, units: Sequence[Head]) -> None:
        """Mask `units` [(layer, original unit), ...] and prune them from `structure`."""
        by_layer: dict[int, list[int]] = {}
        for layer, unit in units:
            heads = range(unit * self.group, (unit + 1) * self.group)
            self.mask[layer, list(heads)] = 0.0
            by_layer.setdefault(layer, []).extend(heads)
        prune_heads(self.structure, by_layer)

    @contextmanager
    def applied(self) -> Iterator[nn.Module]:
        """The sharded model with the removed heads masked, inside the block."""
        with mask_heads(self.model, self.mask):
            yield self.model


def save_pruned_sharded(model: nn.Module, heads: Mapping[int, Sequence[int]], path: str | Path,
                        tokenizer=None) -> Path | None:
    """Gather `model`'s full weights on rank 0, prune `heads` ({layer: [original query heads]},
    e.g. `Trajectory.pruned_heads_at`) from them for real and write an ordinary pruned checkpoint
    there (`pruning.save_pruned`; `load_pruned` reloads it in one process). Every rank must call
    it (the gathering is collective); rank 0 returns the path, the others None."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not distributed.is_main():
        return None
    full = unsharded_copy(model, "cpu")
    full.load_state_dict(state, strict=True)
    if any(heads.values()):
        prune_heads(full, heads)  # heads pruned before sharding are skipped
    return save_pruned(full, path, tokenizer=tokenizer)
