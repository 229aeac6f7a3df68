"""What a head grid is: the attention blocks of a model and the heads they still hold.

Plain records, built by `gnorm_kernels.heads.families.head_layout` (the registry that knows where each
family keeps its modules) and read by everything else.

* A head is named by ``(layer, original head index)``; the grid is ``[num_layers, num_heads]``.
* A layer's heads are the row blocks ``h*d:(h+1)*d`` of its query/key/value weights (shape
  ``[H*d, D]``; GPT-2's fused input-major Conv1D is read through transposed views) and the matching
  column block of the attention output projection.
* Grouped-query attention (Llama, Qwen2, Mistral): query head h reads key/value head
  ``h // (H / H_kv)``; removing the last query head of a group removes the group's key/value rows.
* ALBERT reuses one attention block at every depth: its grid rows are the distinct (shared)
  blocks, so one unit is one head index of a shared layer group.
* After physical pruning (`gnorm_kernels.heads.pruning.prune_heads`) a block remembers which original
  heads (and key/value heads) it still holds, in the order of its weight rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "Head","AttentionBlock", "HeadLayout", "KEPT_HEADS_ATTR", "KEPT_KV_HEADS_ATTR"]

Head = tuple[int, int]  # (layer, original head index): how every head is named

KEPT_HEADS_ATTR = "kept_heads"
KEPT_KV_HEADS_ATTR = "kept_kv_heads"


@dataclass(frozen=True)
class AttentionBlock:
    """One self-attention block: the modules that hold its heads."""

    index: int  # row on the head grid
    layer: nn.Module  # the layer module holding this block (attention + FFN)
    attention: nn.Module  # the module whose forward splits Q/K/V into heads
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    output: nn.Linear  # projection whose input is the concatenation of the head contexts
    depths: tuple[int, ...]  # encoder depths at which this block runs (several for ALBERT)
    num_heads: int  # heads before any pruning
    head_size: int
    ffn: tuple[nn.Linear, nn.Linear] | None  # the layer's feed-forward pair (W1, W2), None if unknown
    head_count_attrs: tuple[str, ...]  # attention-module attributes that count its heads
    width_attrs: tuple[str, ...]  # attention-module attributes that hold heads x head size
    num_kv_heads: int = 0  # key/value heads before pruning (grouped-query attention); 0 = num_heads
    fused_qkv: bool = False  # query, key and value are one input-major Conv1D (GPT-2's c_attn)
    group_attr: str | None = None  # attention-module attribute holding query heads per KV head

    @property
    def kept_heads(self) -> tuple[int, ...]:
        """Original indices of the (query) heads still present, in weight-row order."""
        kept = getattr(self.attention, KEPT_HEADS_ATTR, None)
        return tuple(range(self.num_heads)) if kept is None else tuple(kept)

    @property
    def kv_heads(self) -> int:
        """Key/value heads before pruning (equal to `num_heads` without grouping)."""
        return self.num_kv_heads or self.num_heads

    @property
    def group_size(self) -> int:
        """Query heads per key/value head before pruning (1 without grouping)."""
        return self.num_heads // self.kv_heads

    def kv_head_of(self, head: int) -> int:
        """The (original) key/value head that query head `head` reads."""
        return head // self.group_size

    @property
    def kept_kv_heads(self) -> tuple[int, ...]:
        """Original indices of the key/value heads still present, in weight-row order."""
        kept = getattr(self.attention, KEPT_KV_HEADS_ATTR, None)
        if kept is not None:
            return tuple(kept)
        if self.num_kv_heads == 0:
            return self.kept_heads
        return tuple(sorted({self.kv_head_of(h) for h in self.kept_heads}))

    def qkv_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The query, key and value weights as row-major [heads x head size, D] tensors (views:
        for a fused input-major Conv1D they are transposed column blocks of its weight)."""
        if not self.fused_qkv:
            return self.query.weight, self.key.weight, self.value.weight
        weight = self.query.weight.T  # Conv1D weight is [D, 3 * H * d]
        width = weight.shape[0] // 3
        return weight[:width], weight[width : 2 * width], weight[2 * width :]


@dataclass(frozen=True)
class HeadLayout:
    """The head grid of a model: its family, shape and attention blocks."""

    family: str
    num_layers: int
    num_heads: int
    head_size: int
    hidden_size: int
    shared_across_depth: bool
    blocks: tuple[AttentionBlock, ...]
    num_kv_heads: int = 0  # key/value heads per layer before pruning; 0 = num_heads (no grouping)
    causal: bool = False  # a decoder: each position attends to its prefix only

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_layers, self.num_heads)

    @property
    def kv_heads(self) -> int:
        """Key/value heads per layer before pruning (equal to `num_heads` without grouping)."""
        return self.num_kv_heads or self.num_heads

    @property
    def grouped(self) -> bool:
        """True for grouped-query attention (several query heads read one key/value head)."""
        return self.kv_heads < self.num_heads

    @property
    def kv_shape(self) -> tuple[int, int]:
        return (self.num_layers, self.kv_heads)

    def kv_group_of(self) -> torch.Tensor:
        """Long [num_heads]: the key/value head that each query head reads."""
        return torch.arange(self.num_heads) // (self.num_heads // self.kv_heads)

    def kept_kv_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool [L, H_kv]: True where the key/value head is still physically present."""
        mask = torch.zeros(self.kv_shape, dtype=torch.bool, device=device)
        for block in self.blocks:
            mask[block.index, list(block.kept_kv_heads)] = True
        return mask

    def pruned_kv_heads(self) -> dict[int, list[int]]:
        """{layer: sorted original indices of the removed key/value heads}, layers with none omitted."""
        out: dict[int, list[int]] = {}
        for block in self.blocks:
            gone = sorted(set(range(self.kv_heads)) - set(block.kept_kv_heads))
            if gone:
                out[block.index] = gone
        return out

    @property
    def num_heads_total(self) -> int:
        """Heads on the grid (layers x heads), pruned ones included."""
        return self.num_layers * self.num_heads

    def kept_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool [L, H]: True where the head is still physically present."""
        mask = torch.zeros(self.shape, dtype=torch.bool, device=device)
        for block in self.blocks:
            mask[block.index, list(block.kept_heads)] = True
        return mask

    def pruned_heads(self) -> dict[int, list[int]]:
        """{layer: sorted original indices of the pruned heads}, layers with none omitted."""
        out: dict[int, list[int]] = {}
        for block in self.blocks:
            gone = sorted(set(range(self.num_heads)) - set(block.kept_heads))
            if gone:
                out[block.index] = gone
        return out

    @property
    def num_kept_heads(self) -> int:
        return sum(len(b.kept_heads) for b in self.blocks)

    def describe(self) -> str:
        shared = " (one shared block per layer group, reused at every depth)" if self.shared_across_depth else ""
        grouped = ""
        if self.grouped:
            kept_kv = int(self.kept_kv_mask().sum())
            grouped = (f", grouped: {self.kv_heads} key/value heads per layer, {self.num_heads // self.kv_heads} "
                       f"query heads each ({kept_kv} of {self.num_layers * self.kv_heads} present)")
        return (
            f"{self.family}: {self.num_layers} layers x {self.num_heads} heads of size {self.head_size}"
            f"{shared}{grouped}; {self.num_kept_heads} of {self.num_heads_total} heads present"
        )
