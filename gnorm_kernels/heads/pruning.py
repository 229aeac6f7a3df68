"""Physical removal of attention heads and key/value groups.

transformers 5 dropped `prune_heads`; this module does it for every family `head_layout` knows:
the head's rows of the query/key/value weights and biases and its columns of the output
projection are removed, the module attributes the forward pass reads are updated, and the
pruned-head map is mirrored into ``config.pruned_heads`` so a saved checkpoint can be rebuilt.
A layer that loses all its heads keeps working: its attention then adds only the output bias.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Iterable, Mapping

import torch
from torch import nn

from gnorm_kernels.heads.families import family_of, head_layout
from gnorm_kernels.heads.grouped_attention import KV_INDEX, set_kv_index, use_grouped_attention
from gnorm_kernels.heads.layout import KEPT_HEADS_ATTR, KEPT_KV_HEADS_ATTR, AttentionBlock, HeadLayout
from gnorm_kernels.heads.surgery import owner_of, replace_module, select_conv1d, select_linear, subclass_with_forward

__all__ = ["prune_heads", "prune_kv_groups", "normalize_head_map", "record_pruning"]


def _layer_key(key: object) -> int:
    """A layer key: an int, or a string of decimal digits (JSON keys); nothing is truncated."""
    if isinstance(key, str) and key.isdecimal() and key.isascii():
        return int(key)
    try:
        if isinstance(key, bool):
            raise TypeError
        return operator.index(key)
    except TypeError:
        raise ValueError(
            f"layer key {key!r} is not an integer layer index (expected an int or a string of digits such as '2')"
        ) from None


def normalize_head_map(heads: Mapping, layout: HeadLayout, *, what: str = "head") -> dict[int, list[int]]:
    """Check a {layer: [heads]} map (keys may be str, as in JSON) against `layout`."""
    if not isinstance(heads, Mapping):
        raise TypeError(
            f"{what}s must be a mapping {{layer: [{what}, ...]}} of original {what} indices, "
            f"got {type(heads).__name__}"
        )
    out: dict[int, list[int]] = {}
    for key, value in heads.items():
        layer = _layer_key(key)
        if not 0 <= layer < layout.num_layers:
            raise ValueError(f"layer {layer} is out of range: this model has layers 0..{layout.num_layers - 1}")
        if isinstance(value, (int, str)) or not isinstance(value, Iterable):
            raise TypeError(f"{what}s of layer {layer} must be a list of {what} indices, got {value!r}")
        heads_here = []
        for h in value:
            try:
                if isinstance(h, bool):
                    raise TypeError
                h = operator.index(h)
            except TypeError:
                raise TypeError(f"{what} index {h!r} in layer {layer} is not an integer") from None
            if not 0 <= h < layout.num_heads:
                raise ValueError(
                    f"{what} {h} of layer {layer} is out of range: {what}s are numbered 0..{layout.num_heads - 1}"
                )
            heads_here.append(h)
        out[layer] = sorted(set(out.get(layer, [])) | set(heads_here))
    return out


def _rows(positions: list[int], d: int, offset: int = 0) -> list[int]:
    return [offset + p * d + j for p in positions for j in range(d)]


def _prune_block(model: nn.Module, block: AttentionBlock, drop: set[int], empty_forward) -> None:
    kept = block.kept_heads
    new_kept = tuple(h for h in kept if h not in drop)
    if new_kept == kept:
        return
    d = block.head_size
    q_rows = _rows([i for i, h in enumerate(kept) if h not in drop], d)
    # a key/value head goes with the last query head that reads it
    kv_kept = block.kept_kv_heads
    new_kv = tuple(g for g in kv_kept if any(block.kv_head_of(h) == g for h in new_kept)) if block.num_kv_heads else new_kept
    kv_rows = _rows([i for i, g in enumerate(kv_kept) if g in new_kv], d) if block.num_kv_heads else q_rows
    if block.fused_qkv:  # GPT-2: Q, K, V are column blocks of one input-major Conv1D
        width = len(kept) * d
        columns = q_rows + [width + r for r in q_rows] + [2 * width + r for r in q_rows]
        replace_module(model, block.query, select_conv1d(block.query, columns, 1))
        replace_module(model, block.output, select_conv1d(block.output, q_rows, 0))
    else:
        for part, index, dim in (("query", q_rows, 0), ("key", kv_rows, 0), ("value", kv_rows, 0), ("output", q_rows, 1)):
            linear = getattr(block, part)
            replace_module(model, linear, select_linear(linear, index, dim))
    attention = block.attention
    for attr in block.head_count_attrs:
        setattr(attention, attr, len(new_kept))
    for attr in block.width_attrs:
        setattr(attention, attr, len(new_kept) * d)
    setattr(attention, KEPT_HEADS_ATTR, new_kept)
    if block.num_kv_heads:
        setattr(attention, KEPT_KV_HEADS_ATTR, new_kv)
        _set_groups(model, block, new_kept, new_kv)
    if not new_kept:
        attention.__class__ = subclass_with_forward(type(attention), empty_forward, "Empty", __name__)


def _set_groups(model: nn.Module, block: AttentionBlock, kept: tuple[int, ...], kv: tuple[int, ...]) -> None:
    """Uniform groups keep transformers' repeat factor; uneven ones get a query -> key/value map."""
    sizes = {sum(block.kv_head_of(h) == g for h in kept) for g in kv}
    attention = block.attention
    if len(sizes) <= 1:
        setattr(attention, block.group_attr, sizes.pop() if sizes else 1)
        set_kv_index(attention, None)
        return
    use_grouped_attention(model)
    setattr(attention, block.group_attr, 1)
    set_kv_index(attention, torch.tensor([kv.index(block.kv_head_of(h)) for h in kept]))


_STATE_ATTRS = (KEPT_HEADS_ATTR, KEPT_KV_HEADS_ATTR)


def _snapshot(model: nn.Module, layout: HeadLayout) -> tuple:
    saved = []
    for block in layout.blocks:
        attention = block.attention
        names = (*block.head_count_attrs, *block.width_attrs, *((block.group_attr,) if block.group_attr else ()))
        attrs = {a: getattr(attention, a) for a in names}
        state = {a: attention.__dict__.get(a) for a in _STATE_ATTRS}
        linears = [(*owner_of(model, m), m) for m in {id(m): m for m in
                   (block.query, block.key, block.value, block.output)}.values()]
        saved.append((attention, type(attention), attrs, state, attention._buffers.get(KV_INDEX), linears))
    return getattr(model.config, "_attn_implementation", None), saved


def _restore(model: nn.Module, snapshot: tuple) -> None:
    implementation, saved = snapshot
    for attention, cls, attrs, state, kv_index, linears in saved:
        attention.__class__ = cls
        for a, v in attrs.items():
            setattr(attention, a, v)
        for a, v in state.items():
            if v is None:
                attention.__dict__.pop(a, None)
            else:
                setattr(attention, a, v)
        set_kv_index(attention, kv_index)
        for parent, name, linear in linears:
            setattr(parent, name, linear)
    if implementation is not None and model.config._attn_implementation != implementation:
        model.set_attn_implementation(implementation)


def record_pruning(model: nn.Module) -> None:
    """Mirror the model's pruned heads (and KV heads) into its config, from which a saved checkpoint is rebuilt."""
    layout = head_layout(model)
    model.config.pruned_heads = {str(k): v for k, v in layout.pruned_heads().items()}
    if layout.grouped:  # informational: which key/value heads went with their query heads
        model.config.pruned_kv_heads = {str(k): v for k, v in layout.pruned_kv_heads().items()}


def prune_heads(model: nn.Module, heads: Mapping) -> nn.Module:
    """Remove heads for good: `heads` maps layer -> original head indices. Returns `model`.

    Heads already pruned are skipped; an out-of-range layer or head raises before anything
    changes, and any failure part-way restores the model as it was.
    """
    layout = head_layout(model)
    family = family_of(model)
    head_map = normalize_head_map(heads, layout)
    saved = _snapshot(model, layout)
    try:
        for block in layout.blocks:
            drop = set(head_map.get(block.index, ()))
            if drop:
                _prune_block(model, block, drop, family.empty_forward)
        record_pruning(model)
    except BaseException:
        _restore(model, saved)
        raise
    return model


def prune_kv_groups(model: nn.Module, groups: Mapping) -> nn.Module:
    """Remove whole key/value groups of a grouped-query model: `groups` maps layer -> original
    key/value head indices; each goes with every query head that reads it, so the group size
    stays uniform and the KV cache shrinks by the groups removed. Returns `model`."""
    layout = head_layout(model)
    if not layout.grouped:
        raise ValueError(
            f"this {layout.family} model has one query head per key/value head (no grouped-query attention), "
            "so a key/value group is a single head: use prune_heads (unit='head') instead"
        )
    kv_layout = _kv_view(layout)
    group_map = normalize_head_map(groups, kv_layout, what="key/value group")
    per_group = layout.num_heads // layout.kv_heads
    heads = {layer: [g * per_group + j for g in gs for j in range(per_group)] for layer, gs in group_map.items()}
    return prune_heads(model, heads)


def _kv_view(layout: HeadLayout) -> HeadLayout:
    return dataclasses.replace(layout, num_heads=layout.kv_heads, num_kv_heads=0)
