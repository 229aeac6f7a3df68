"""Physical removal of attention heads, and a checkpoint format that remembers it.

transformers 5 dropped `prune_heads`; this module does it for every family `head_layout` knows:
the head's rows of the query/key/value weights and biases and its columns of the output
projection are removed, the module attributes the forward pass reads are updated, and the
pruned-head map is mirrored into ``config.pruned_heads`` so a saved checkpoint can be rebuilt.
A layer that loses all its heads keeps working: its attention then adds only the output bias.
"""

from __future__ import annotations

import operator
import os
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from gnorm_kernels.arch import KEPT_HEADS_ATTR, AttentionBlock, HeadLayout, family_of, head_layout
from gnorm_kernels.checkpoint import load_checkpoint, load_weights, model_from_config, read_config, write_checkpoint
from gnorm_kernels.surgery import owner_of, select_linear, subclass_with_forward

__all__ = ["prune_heads", "save_pruned", "load_pruned", "normalize_head_map"]


def normalize_head_map(heads: Mapping, layout: HeadLayout) -> dict[int, list[int]]:
    """Check a {layer: [heads]} map (keys may be str, as in JSON) against `layout`."""
    if not isinstance(heads, Mapping):
        raise TypeError(
            "heads must be a mapping {layer: [head, ...]} of original head indices, "
            f"got {type(heads).__name__}"
        )
    out: dict[int, list[int]] = {}
    for key, value in heads.items():
        try:
            layer = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"layer key {key!r} is not an integer") from None
        if not 0 <= layer < layout.num_layers:
            raise ValueError(f"layer {layer} is out of range: this model has layers 0..{layout.num_layers - 1}")
        if isinstance(value, (int, str)) or not isinstance(value, Iterable):
            raise TypeError(f"heads of layer {layer} must be a list of head indices, got {value!r}")
        heads_here = []
        for h in value:
            try:
                if isinstance(h, bool):
                    raise TypeError
                h = operator.index(h)
            except TypeError:
                raise TypeError(f"head index {h!r} in layer {layer} is not an integer") from None
            if not 0 <= h < layout.num_heads:
                raise ValueError(
                    f"head {h} of layer {layer} is out of range: heads are numbered 0..{layout.num_heads - 1}"
                )
            heads_here.append(h)
        out[layer] = sorted(set(out.get(layer, [])) | set(heads_here))
    return out


def _prune_block(model: nn.Module, block: AttentionBlock, drop: set[int], empty_forward) -> None:
    kept = block.kept_heads
    new_kept = tuple(h for h in kept if h not in drop)
    if new_kept == kept:
        return
    d = block.head_size
    positions = [i for i, h in enumerate(kept) if h not in drop]
    index = torch.tensor([p * d + j for p in positions for j in range(d)], dtype=torch.long)
    for part, dim in (("query", 0), ("key", 0), ("value", 0), ("output", 1)):
        linear = getattr(block, part)
        parent, name = owner_of(model, linear)
        setattr(parent, name, select_linear(linear, index, dim))
    attention = block.attention
    for attr in block.head_count_attrs:
        setattr(attention, attr, len(new_kept))
    for attr in block.width_attrs:
        setattr(attention, attr, len(new_kept) * d)
    setattr(attention, KEPT_HEADS_ATTR, new_kept)
    if not new_kept:
        attention.__class__ = subclass_with_forward(type(attention), empty_forward, "Empty", __name__)


def _snapshot(model: nn.Module, layout: HeadLayout) -> list:
    saved = []
    for block in layout.blocks:
        attention = block.attention
        attrs = {a: getattr(attention, a) for a in (*block.head_count_attrs, *block.width_attrs)}
        linears = [(*owner_of(model, getattr(block, p)), getattr(block, p)) for p in ("query", "key", "value", "output")]
        saved.append((attention, type(attention), attrs, getattr(attention, KEPT_HEADS_ATTR, None), linears))
    return saved


def _restore(saved: list) -> None:
    for attention, cls, attrs, kept, linears in saved:
        attention.__class__ = cls
        for a, v in attrs.items():
            setattr(attention, a, v)
        if kept is None:
            attention.__dict__.pop(KEPT_HEADS_ATTR, None)
        else:
            setattr(attention, KEPT_HEADS_ATTR, kept)
        for parent, name, linear in linears:
            setattr(parent, name, linear)


def _write_config(model: nn.Module) -> None:
    pruned = head_layout(model).pruned_heads()
    model.config.pruned_heads = {str(k): v for k, v in pruned.items()}


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
        _write_config(model)
    except BaseException:
        _restore(saved)
        raise
    return model


# --------------------------------------------------------------------------- checkpoints

def save_pruned(model: nn.Module, path: str | os.PathLike, tokenizer=None) -> Path:
    """Save a (possibly pruned) model as an ordinary safetensors checkpoint.

    The pruned-head map travels in ``config.json`` as ``pruned_heads``; `load_pruned` rebuilds
    the shapes from it. The tokenizer is saved beside the weights when one is given.
    """
    _write_config(model)
    return write_checkpoint(model, path, tokenizer)


def load_pruned(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> nn.Module:
    """Rebuild a model saved by `save_pruned`: the architecture from its config, pruned as
    recorded, then its weights loaded strictly. Returns the model in eval mode.

    `attn_implementation` ("eager", "sdpa") is a run-time choice that checkpoints do not record;
    None keeps the transformers default. A folder written by `gnorm_kernels.grain.save_grain`
    (its config records a ``grain_structure``) goes to the loader of that format
    (`gnorm_kernels.checkpoint.load_checkpoint` makes the choice).
    """
    path = Path(path)
    config = read_config(path)
    if getattr(config, "grain_structure", None):
        return load_checkpoint(path, device=device, attn_implementation=attn_implementation)
    pruned = getattr(config, "pruned_heads", None) or {}
    config.pruned_heads = {}
    model = model_from_config(config, attn_implementation)
    prune_heads(model, {int(k): v for k, v in pruned.items()})
    load_weights(model, path, "its recorded architecture")
    return model.to(device).eval()
