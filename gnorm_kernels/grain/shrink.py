"""Shrinking for real: drop the pruned rows and columns, and a checkpoint format that remembers how.

A `GrainStructure` lists, for every layer, the kept query/key dimensions and value dimensions of
each original head and the kept FFN neurons. `shrink_model` applies one to a dense (or only
head-pruned) model: each layer's self-attention becomes an `UnevenSelfAttention` holding just
the kept heads, its output projection keeps the matching columns, and the FFN keeps its kept
neurons. A head with no value dimensions is removed with its query dimensions; a layer with no
heads, or no FFN neurons, is left adding only the bias of its output projection.

`save_grain` writes an ordinary safetensors checkpoint whose config.json carries the structure
under ``grain_structure``, with a manifest (``gnorm_checkpoint.json``) of that structure and the
weights' hashes; `load_grain` checks the two, rebuilds the model from its config, shrinks it as
recorded and loads the weights strictly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from gnorm_kernels.checkpoints.formats import (
    MANIFEST,
    check_manifest,
    load_weights,
    model_from_config,
    read_config,
    register_format,
    write_checkpoint,
    write_manifest,
)
from gnorm_kernels.grain.attention import DEFAULT_IMPL, UnevenSelfAttention, check_impl
from gnorm_kernels.grain.units import UnitBlock, UnitLayout, Units, unit_layout
from gnorm_kernels.heads.surgery import owner_of, select_linear

__all__ = [
    "LayerStructure",
    "GrainStructure",
    "shrink_model",
    "save_grain",
    "load_grain",
    "set_attention_impl",
    "grain_structure_of",
    "CONFIG_KEY",
]

CONFIG_KEY = "grain_structure"


@dataclass(frozen=True)
class LayerStructure:
    """Kept units of one layer: per original head the kept query and value dims; kept FFN neurons."""

    query: tuple[tuple[int, ...], ...]
    value: tuple[tuple[int, ...], ...]
    ffn: tuple[int, ...]

    def heads(self) -> list[int]:
        """Original indices of the heads that survive (those with value dimensions)."""
        return [h for h, v in enumerate(self.value) if v]


@dataclass(frozen=True)
class GrainStructure:
    """What a GRAIN-shrunk model keeps, on the original grid [L, H, d] and [L, F]."""

    num_heads: int
    head_size: int
    ffn_size: int
    layers: tuple[LayerStructure, ...]

    # ---------------------------------------------------------------- conversions

    @classmethod
    def from_masks(cls, masks: Units) -> "GrainStructure":
        L, H, d = masks.query.shape
        layers = []
        for i in range(L):
            q, v = masks.query[i].bool(), masks.value[i].bool()
            has_value = v.any(-1)
            layers.append(
                LayerStructure(
                    query=tuple(tuple(q[h].nonzero().flatten().tolist()) if has_value[h] else () for h in range(H)),
                    value=tuple(tuple(v[h].nonzero().flatten().tolist()) for h in range(H)),
                    ffn=tuple(masks.ffn[i].bool().nonzero().flatten().tolist()),
                )
            )
        return cls(num_heads=H, head_size=d, ffn_size=int(masks.ffn.shape[1]), layers=tuple(layers))

    def to_masks(self) -> Units:
        L, H, d, F = len(self.layers), self.num_heads, self.head_size, self.ffn_size
        masks = Units(
            torch.zeros(L, H, d, dtype=torch.bool),
            torch.zeros(L, H, d, dtype=torch.bool),
            torch.zeros(L, F, dtype=torch.bool),
        )
        for i, layer in enumerate(self.layers):
            for h in range(H):
                masks.query[i, h, list(layer.query[h])] = True
                masks.value[i, h, list(layer.value[h])] = True
            masks.ffn[i, list(layer.ffn)] = True
        return masks

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_heads": self.num_heads,
            "head_size": self.head_size,
            "ffn_size": self.ffn_size,
            "layers": [
                {
                    "query": [list(q) for q in layer.query],
                    "value": [list(v) for v in layer.value],
                    "ffn": list(layer.ffn),
                }
                for layer in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GrainStructure":
        try:
            H, d, F = int(data["num_heads"]), int(data["head_size"]), int(data["ffn_size"])
            layers = []
            for i, layer in enumerate(data["layers"]):
                query = tuple(tuple(int(j) for j in q) for q in layer["query"])
                value = tuple(tuple(int(j) for j in v) for v in layer["value"])
                ffn = tuple(int(j) for j in layer["ffn"])
                if len(query) != H or len(value) != H:
                    raise ValueError(f"layer {i} lists {len(query)} query and {len(value)} value heads, expected {H}")
                for q in query:
                    _check_indices(i, "query", q, d)
                for v in value:
                    _check_indices(i, "value", v, d)
                _check_indices(i, "ffn", ffn, F)
                layers.append(LayerStructure(query, value, ffn))
        except (KeyError, TypeError) as err:
            raise ValueError(
                f"not a GRAIN structure (expected num_heads, head_size, ffn_size, layers): {err}"
            ) from None
        return cls(H, d, F, tuple(layers))

    def scaled(self, num_layers: int, num_heads: int, head_size: int, ffn_size: int) -> "GrainStructure":
        """The same shape on a bigger grid (e.g. a tiny model's structure on a BERT-base grid).

        Layer i copies layer i·L/num_layers and head h copies head h·H/num_heads of this
        structure; each kept dimension (FFN neuron) becomes a block of head_size/d (ffn_size/F)
        consecutive ones. The density is unchanged when attention and FFN grow by the same
        factor (the tiny model to BERT-base: both 12x); heads that do not map evenly shift it a little.
        """
        if num_layers < 1 or num_heads < 1 or head_size % self.head_size or ffn_size % self.ffn_size:
            raise ValueError(
                f"head and FFN sizes must grow by whole factors: from d={self.head_size}, F={self.ffn_size} "
                f"to d={head_size}, F={ffn_size}"
            )
        rd, rf = head_size // self.head_size, ffn_size // self.ffn_size

        def grow(dims: tuple[int, ...], r: int) -> tuple[int, ...]:
            return tuple(j * r + k for j in dims for k in range(r))

        layers = []
        for i in range(num_layers):
            src = self.layers[i * self.num_layers // num_layers]
            heads = [h * self.num_heads // num_heads for h in range(num_heads)]
            layers.append(
                LayerStructure(
                    tuple(grow(src.query[h], rd) for h in heads),
                    tuple(grow(src.value[h], rd) for h in heads),
                    grow(src.ffn, rf),
                )
            )
        return GrainStructure(num_heads, head_size, ffn_size, tuple(layers))

    def uniform_twin(self) -> "GrainStructure":
        """The same layers and heads with every kept head of a layer made one size (the layer's
        query and value dimensions shared evenly, rounded; a head keeps at least one value unit),
        the FFN unchanged: about the same size with no unevenness, the paper's speed comparison."""
        layers = []
        for layer in self.layers:
            heads = layer.heads()
            if heads:
                q = round(sum(len(layer.query[h]) for h in heads) / len(heads))
                v = max(1, round(sum(len(layer.value[h]) for h in heads) / len(heads)))
                layer = LayerStructure(tuple(tuple(range(q)) if h in heads else () for h in range(self.num_heads)),
                                       tuple(tuple(range(v)) if h in heads else () for h in range(self.num_heads)),
                                       layer.ffn)
            layers.append(layer)
        return GrainStructure(self.num_heads, self.head_size, self.ffn_size, tuple(layers))

    # ---------------------------------------------------------------- summaries

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def total_units(self) -> int:
        return self.num_layers * (2 * self.num_heads * self.head_size + self.ffn_size)

    def kept_units(self) -> int:
        return sum(
            sum(len(q) for q in layer.query) + sum(len(v) for v in layer.value) + len(layer.ffn)
            for layer in self.layers
        )

    def density(self) -> float:
        return self.kept_units() / self.total_units

    def heads_per_layer(self) -> list[int]:
        return [len(layer.heads()) for layer in self.layers]

    def head_sizes(self) -> list[list[tuple[int, int]]]:
        """Per layer, (query size, value size) of each surviving head."""
        return [[(len(layer.query[h]), len(layer.value[h])) for h in layer.heads()] for layer in self.layers]

    def describe(self) -> str:
        heads = f"{sum(self.heads_per_layer())} heads of {self.num_layers * self.num_heads}"
        lines = [f"density {self.density():.3f}: {heads}"]
        for i, layer in enumerate(self.layers):
            heads = " ".join(f"h{h}:{len(layer.query[h])}/{len(layer.value[h])}" for h in layer.heads()) or "(none)"
            lines.append(f"  layer {i}: ffn {len(layer.ffn)}/{self.ffn_size}, heads (q/v) {heads}")
        return "\n".join(lines)


def _check_indices(layer: int, name: str, dims: tuple[int, ...], bound: int) -> None:
    """Kept indices must be sorted, distinct and on the grid."""
    if any(not 0 <= j < bound for j in dims) or len(set(dims)) != len(dims) or list(dims) != sorted(dims):
        raise ValueError(
            f"layer {layer}: {name} indices must be sorted, distinct and in [0, {bound}), got {list(dims)}"
        )


# --------------------------------------------------------------------------- shrinking


def _rows(linear: nn.Linear, index: list[int]) -> nn.Linear:
    return select_linear(linear, torch.tensor(index, dtype=torch.long), 0)


def _cols(linear: nn.Linear, index: list[int]) -> nn.Linear:
    return select_linear(linear, torch.tensor(index, dtype=torch.long), 1)


def _shrunk_layer(
    block: UnitBlock, layer: LayerStructure, layout: UnitLayout, impl: str
) -> list[tuple[nn.Module, nn.Module]]:
    """New modules for one layer, as (old module, replacement) pairs; the model is not touched."""
    att = block.attention
    d = layout.head_size
    position = {h: p for p, h in enumerate(block.kept_heads)}
    # heads stored smallest first: the groups of the fast attention are then contiguous runs
    heads = sorted(layer.heads(), key=lambda h: (len(layer.query[h]) + len(layer.value[h]), len(layer.value[h]), h))
    missing = [h for h in heads if h not in position]
    if missing:
        raise ValueError(
            f"layer {block.index}: heads {missing} are kept by the structure but already pruned from the model"
        )
    q_rows = [position[h] * d + j for h in heads for j in layer.query[h]]
    v_rows = [position[h] * d + j for h in heads for j in layer.value[h]]
    old_self = att.attention
    new_self = UnevenSelfAttention(
        layout.hidden_size,
        [len(layer.query[h]) for h in heads],
        [len(layer.value[h]) for h in heads],
        scaling=d**-0.5,
        heads=heads,
        impl=impl,
        dropout=float(getattr(getattr(old_self, "dropout", None), "p", 0.0)),
        bias=att.query.bias is not None,
        device=att.query.weight.device,
        dtype=att.query.weight.dtype,
    )
    new_self.query = _rows(att.query, q_rows)
    new_self.key = _rows(att.key, q_rows)
    new_self.value = _rows(att.value, v_rows)
    new_self.train(old_self.training)
    return [
        (old_self, new_self),
        (att.output, _cols(att.output, v_rows)),
        (block.ffn_in, _rows(block.ffn_in, list(layer.ffn))),
        (block.ffn_out, _cols(block.ffn_out, list(layer.ffn))),
    ]


def shrink_model(model: nn.Module, structure: GrainStructure | Units, *, impl: str = DEFAULT_IMPL) -> nn.Module:
    """Remove every unit the structure does not keep, in place; returns `model`.

    `structure` may also be the masks it comes from; `impl` is the attention implementation of
    the shrunk layers ("grouped" or "loop", see `UnevenSelfAttention`). All replacement modules
    are built before the first one is swapped in, so an error leaves the model as it was.
    """
    if isinstance(structure, Units):
        structure = GrainStructure.from_masks(structure)
    if not isinstance(structure, GrainStructure):
        raise TypeError(f"structure must be a GrainStructure or Units masks, got {type(structure).__name__}")
    impl = check_impl(impl)
    layout = unit_layout(model)
    expected = (layout.num_layers, layout.num_heads, layout.head_size, layout.ffn_size)
    got = (structure.num_layers, structure.num_heads, structure.head_size, structure.ffn_size)
    if expected != got:
        raise ValueError(
            f"structure is for (layers, heads, head size, FFN size) = {got}, the model has {expected}"
        )
    swaps = []
    for block, layer in zip(layout.blocks, structure.layers):
        swaps += _shrunk_layer(block, layer, layout, impl)
    owners = [owner_of(model, old) for old, _ in swaps]
    for (parent, name), (_, new) in zip(owners, swaps):
        setattr(parent, name, new)
    model.config.grain_structure = structure.to_dict()
    return model


def set_attention_impl(model: nn.Module, impl: str) -> nn.Module:
    """Switch every uneven-head attention of a shrunk model to `impl` ("grouped" or "loop")."""
    impl = check_impl(impl)
    modules = [m for m in model.modules() if isinstance(m, UnevenSelfAttention)]
    if not modules:
        raise ValueError("the model has no uneven-head attention modules; shrink it with shrink_model first")
    for m in modules:
        m.impl = impl
    return model


def grain_structure_of(model: nn.Module) -> GrainStructure:
    """The structure recorded on a shrunk model's config."""
    data = getattr(model.config, CONFIG_KEY, None)
    if not data:
        raise ValueError("this model carries no GRAIN structure (config.grain_structure is missing)")
    return GrainStructure.from_dict(data)


# --------------------------------------------------------------------------- checkpoints


def save_grain(model: nn.Module, path: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Save a shrunk model as safetensors; the structure travels in config.json, and a manifest
    (``gnorm_checkpoint.json``: the structure and the weight files' hashes) lets `load_grain`
    refuse an edited structure or swapped weights."""
    model.config.grain_structure = grain_structure_of(model).to_dict()  # checked and normalised
    path = write_checkpoint(model, path, tokenizer)
    write_manifest(path, "grain", _grain_record(model.config))
    return path


def _grain_record(config: Any) -> dict[str, Any]:
    """What fixes a GRAIN checkpoint's shapes, as its config records it."""
    pruned = getattr(config, "pruned_heads", None) or {}
    return {CONFIG_KEY: getattr(config, CONFIG_KEY, None),
            "pruned_heads": {str(k): list(v) for k, v in dict(pruned).items()} if isinstance(pruned, dict) else pruned}


def load_grain(
    path: str | os.PathLike,
    *,
    impl: str = DEFAULT_IMPL,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
    allow_unverified: bool = False,
) -> nn.Module:
    """Rebuild a model saved by `save_grain`: architecture from config, shrunk as recorded,
    weights loaded strictly. Returns it in eval mode. `load_pruned` and `load_model` route
    GRAIN folders here too. The folder's manifest must agree with its structure and weight
    files; `allow_unverified=True` loads a folder saved before manifests existed, unchecked."""
    impl = check_impl(impl)
    path = Path(path)
    config = read_config(path)
    data = getattr(config, CONFIG_KEY, None)
    if not data and (path / MANIFEST).is_file():  # the config lost its structure: say what differs
        check_manifest(path, "grain", _grain_record(config))
    if data:
        check_manifest(path, "grain", _grain_record(config), required=not allow_unverified)
    if not data:
        raise ValueError(
            f"{path} holds no GRAIN structure (no {CONFIG_KEY!r} in config.json); use load_pruned or load_model"
        )
    structure = GrainStructure.from_dict(data)
    pruned = getattr(config, "pruned_heads", None)
    config.pruned_heads = {}
    model = model_from_config(config, attn_implementation)
    shrink_model(model, structure, impl=impl)
    if pruned:
        model.config.pruned_heads = pruned
    load_weights(model, path, "its recorded GRAIN structure")
    return model.to(device).eval()


register_format("grain", "grain_structure", load_grain)
