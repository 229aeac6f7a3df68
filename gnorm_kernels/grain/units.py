"""GRAIN's pruning units, and multiplicative masks over them.

Three kinds of unit, each holding 2·D weights (D = hidden size):

* a **query unit**: one row of W_Q together with the same row of W_K, i.e. one query/key
  dimension of one head;
* a **value unit**: one row of W_V together with the matching input column of the attention
  output projection W_O, i.e. one value dimension of one head;
* an **FFN neuron**: one row of the FFN's first weight W1 with the matching column of W2.

Masks live on the original grid: ``query`` and ``value`` are ``[L, H, d]``, ``ffn`` is
``[L, F]``. `mask_units` applies them with hooks while a block of code runs: a query unit is
switched off by zeroing its query dimension (so the score q·k loses that term), a value unit by
zeroing its context dimension before W_O, an FFN neuron by zeroing its activation before W2.
That is exactly what removing the weights does, so a masked model and its shrunk copy agree.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.layout import AttentionBlock, HeadLayout

__all__ = ["UnitBlock", "UnitLayout", "Units", "unit_layout", "mask_units"]


@dataclass(frozen=True)
class UnitBlock:
    """One encoder layer seen as GRAIN units: its attention block and its FFN."""

    index: int
    layer: nn.Module
    attention: AttentionBlock
    ffn_in: nn.Linear
    ffn_out: nn.Linear

    @property
    def kept_heads(self) -> tuple[int, ...]:
        return self.attention.kept_heads


@dataclass(frozen=True)
class UnitLayout:
    """Where every unit of a model lives, and the size of the unit grid."""

    family: str
    num_layers: int
    num_heads: int
    head_size: int
    hidden_size: int
    ffn_size: int
    blocks: tuple[UnitBlock, ...]

    @property
    def unit_params(self) -> int:
        """Weights per unit (every kind holds 2·D)."""
        return 2 * self.hidden_size

    @property
    def total_units(self) -> int:
        return self.num_layers * (2 * self.num_heads * self.head_size + self.ffn_size)


def unit_layout(model: nn.Module) -> UnitLayout:
    """Locate the query/value units and FFN neurons of a BERT-style encoder.

    Every module comes from `gnorm_kernels.heads.families.head_layout` (the family registry). GRAIN needs,
    in every layer, an attention block of its own (no sharing across depth, so not ALBERT), a
    feed-forward pair, and the attention output projection outside the module that splits the
    heads (the shrinker replaces that module; DistilBERT's holds its output projection).
    """
    from gnorm_kernels.grain.attention import UnevenSelfAttention

    if isinstance(model, nn.Module) and any(isinstance(m, UnevenSelfAttention) for m in model.modules()):
        raise ValueError(
            "this model is already GRAIN-shrunk (its heads have uneven sizes); units are defined on a dense "
            "or head-pruned model: start from the unshrunk model, or rebuild one from its structure"
        )
    layout = head_layout(model)
    _check_grain_family(layout)
    blocks = []
    ffn_sizes = set()
    for block in layout.blocks:
        ffn_in, ffn_out = block.ffn
        ffn_sizes.add(ffn_in.out_features)
        blocks.append(UnitBlock(block.index, block.layer, block, ffn_in, ffn_out))
    if len(ffn_sizes) != 1:
        raise ValueError(
            f"expected one FFN size in every layer (an unshrunk model), got sizes {sorted(ffn_sizes)}; "
            "GRAIN starts from a dense (or only head-pruned) model"
        )
    return UnitLayout(
        family=layout.family,
        num_layers=layout.num_layers,
        num_heads=layout.num_heads,
        head_size=layout.head_size,
        hidden_size=layout.hidden_size,
        ffn_size=ffn_sizes.pop(),
        blocks=tuple(blocks),
    )


_GRAIN_NEEDS = (
    "GRAIN units are defined for encoders whose every layer has its own attention block (no sharing "
    "across depth), a feed-forward pair, and its attention output projection outside the module that "
    "splits the heads (such as BERT, RoBERTa, XLM-RoBERTa and ELECTRA)"
)


def _check_grain_family(layout: HeadLayout) -> None:
    """Refuse, with the reason, a model whose layers GRAIN cannot mask and shrink."""
    if layout.shared_across_depth:
        raise ValueError(f"{_GRAIN_NEEDS}; got a {layout.family} model, whose attention blocks are shared across depth")
    for block in layout.blocks:
        if block.ffn is None:
            raise ValueError(f"{_GRAIN_NEEDS}; got a {layout.family} model with no feed-forward pair in layer {block.index}")
        if any(m is block.output for m in block.attention.modules()):
            raise ValueError(
                f"{_GRAIN_NEEDS}; got a {layout.family} model, whose attention module "
                f"({type(block.attention).__name__}) holds its output projection"
            )


@dataclass
class Units:
    """One tensor per unit kind on the original grid: masks (bool) or scores (float).

    ``query`` and ``value`` are ``[L, H, d]``, ``ffn`` is ``[L, F]``.
    """

    query: torch.Tensor
    value: torch.Tensor
    ffn: torch.Tensor

    @classmethod
    def full(cls, layout: UnitLayout) -> "Units":
        """All units kept, except those of heads already pruned away."""
        L, H, d, F = layout.num_layers, layout.num_heads, layout.head_size, layout.ffn_size
        heads = torch.zeros(L, H, dtype=torch.bool)
        for block in layout.blocks:
            heads[block.index, list(block.kept_heads)] = True
        qv = heads[:, :, None].expand(L, H, d).clone()
        return cls(qv, qv.clone(), torch.ones(L, F, dtype=torch.bool))

    @classmethod
    def zeros(cls, layout: UnitLayout) -> "Units":
        L, H, d, F = layout.num_layers, layout.num_heads, layout.head_size, layout.ffn_size
        return cls(torch.zeros(L, H, d), torch.zeros(L, H, d), torch.zeros(L, F))

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Units":
        return Units(fn(self.query), fn(self.value), fn(self.ffn))

    def clone(self) -> "Units":
        return self.map(torch.clone)

    def flat(self) -> torch.Tensor:
        """All units in one vector: query, then value, then FFN (the ranking order)."""
        return torch.cat([self.query.reshape(-1), self.value.reshape(-1), self.ffn.reshape(-1)])

    def unflatten(self, flat: torch.Tensor) -> "Units":
        """The inverse of `flat`, shaped like this object."""
        nq, nv = self.query.numel(), self.value.numel()
        return Units(
            flat[:nq].view_as(self.query),
            flat[nq : nq + nv].view_as(self.value),
            flat[nq + nv :].view_as(self.ffn),
        )

    @property
    def total(self) -> int:
        return self.query.numel() + self.value.numel() + self.ffn.numel()

    def kept(self) -> int:
        """Number of kept units (masks)."""
        return int(self.query.sum() + self.value.sum() + self.ffn.sum())

    def density(self) -> float:
        """Kept fraction of all units: the fraction of the encoder's prunable weights left."""
        return self.kept() / self.total

    def heads_kept(self) -> torch.Tensor:
        """Bool [L, H]: heads with at least one value unit (the heads that still do anything)."""
        return self.value.bool().any(-1)

    def check_against(self, layout: UnitLayout) -> None:
        L, H, d, F = layout.num_layers, layout.num_heads, layout.head_size, layout.ffn_size
        for name, shape in (("query", (L, H, d)), ("value", (L, H, d)), ("ffn", (L, F))):
            got = getattr(self, name)
            if not isinstance(got, torch.Tensor):
                raise TypeError(f"{name} mask must be a tensor of shape {list(shape)}, got {type(got).__name__}")
            if tuple(got.shape) != shape:
                raise ValueError(f"{name} mask must have shape {list(shape)} for this model, got {list(got.shape)}")


# --------------------------------------------------------------------------- masking hooks


def _rows_of_kept_heads(block: UnitBlock, mask: torch.Tensor) -> torch.Tensor:
    """[H, d] mask -> the flat gate over the rows present in the (possibly head-pruned) weights."""
    kept = list(block.kept_heads)
    return mask[kept].reshape(-1)


def _output_gate(gate: torch.Tensor) -> Callable:
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output * gate.to(dtype=output.dtype, device=output.device)

    return hook


def _input_gate(gate: torch.Tensor) -> Callable:
    def hook(module: nn.Module, args: tuple) -> tuple:
        (x, *rest) = args
        return (x * gate.to(dtype=x.dtype, device=x.device), *rest)

    return hook


@contextmanager
def mask_units(model: nn.Module, masks: Units, layout: UnitLayout | None = None) -> Iterator[Units]:
    """Switch units off inside the block (mask entries 1 keep, 0 drop; floats scale).

    Hooks: the query projection's output (query units), the attention output projection's
    input (value units) and the FFN output projection's input (FFN neurons). All are removed on
    exit, even on error.
    """
    layout = layout or unit_layout(model)
    masks.check_against(layout)
    handles = []
    try:
        for block in layout.blocks:
            i = block.index
            q_gate = _rows_of_kept_heads(block, masks.query[i].float())
            v_gate = _rows_of_kept_heads(block, masks.value[i].float())
            handles.append(block.attention.query.register_forward_hook(_output_gate(q_gate)))
            handles.append(block.attention.output.register_forward_pre_hook(_input_gate(v_gate)))
            handles.append(block.ffn_out.register_forward_pre_hook(_input_gate(masks.ffn[i].float())))
        yield masks
    finally:
        for handle in handles:
            handle.remove()
