"""Physical removal of attention heads, and a checkpoint format that remembers it.

What `save_pruned` writes into ``config.json`` depends on the family and the shape left:

* Llama, Qwen2, Mistral pruned uniformly (every layer the same query and key/value head counts,
  equal groups): a standard config (``num_attention_heads``, ``num_key_value_heads``, ``head_dim``
  of the pruned model) that plain ``from_pretrained`` builds; the unpruned counts go under
  ``gnorm_unpruned`` so `load_pruned` can name heads by their original indices again.
* The same families pruned unevenly: transformers' own ``per_layer_config`` (each layer's
  ``num_attention_heads`` and ``num_key_value_heads``) beside the unpruned global counts.
* Every model: ``pruned_heads`` (and ``pruned_kv_heads``), which original heads went, the one
  thing transformers has no field for. BERT-family encoders and GPT-2 take their head size from
  hidden / heads, so no config of theirs describes fewer heads: only the package rebuilds them.

transformers 5 dropped `prune_heads`; this module does it for every family `head_layout` knows:
the head's rows of the query/key/value weights and biases and its columns of the output
projection are removed, the module attributes the forward pass reads are updated, and the
pruned-head map is mirrored into ``config.pruned_heads`` so a saved checkpoint can be rebuilt.
A layer that loses all its heads keeps working: its attention then adds only the output bias.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import os
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from gnorm_kernels.arch import KEPT_HEADS_ATTR, KEPT_KV_HEADS_ATTR, AttentionBlock, HeadLayout, family_of, head_layout
from gnorm_kernels.checkpoint import (
    check_manifest,
    load_checkpoint,
    load_weights,
    model_from_config,
    read_config,
    write_checkpoint,
    write_manifest,
)
from gnorm_kernels.grouped_attention import KV_INDEX, set_kv_index, use_grouped_attention
from gnorm_kernels.surgery import owner_of, replace_module, select_conv1d, select_linear, subclass_with_forward

__all__ = ["prune_heads", "prune_kv_groups", "save_pruned", "load_pruned", "normalize_head_map", "STANDARD_FAMILIES"]

# families whose config can state a pruned geometry (head_dim need not be hidden / heads)
STANDARD_FAMILIES = ("llama", "qwen2", "mistral")
UNPRUNED_KEY = "gnorm_unpruned"  # the unpruned head counts of a standard config
PER_LAYER_KEYS = ("per_layer_config", "allow_global_per_layer_attribute_access")


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


def _write_config(model: nn.Module) -> None:
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
        _write_config(model)
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


# --------------------------------------------------------------------------- checkpoints

def save_pruned(model: nn.Module, path: str | os.PathLike, tokenizer=None) -> Path:
    """Save a (possibly pruned) model as an ordinary safetensors checkpoint.

    The pruned-head map travels in ``config.json`` as ``pruned_heads``; `load_pruned` rebuilds
    the shapes from it. The tokenizer is saved beside the weights when one is given.
    """
    _write_config(model)
    path = write_checkpoint(model, path, tokenizer)
    _write_geometry(model, path / "config.json")
    write_manifest(path, "pruned", _shape_record(model.config))
    return path


def _layer_geometry(model: nn.Module) -> tuple[dict[int, dict[str, int]], bool] | None:
    """({layer: its head counts}, whether every layer is alike with equal groups), for a pruned
    model of `STANDARD_FAMILIES`; None for other families or an unpruned model."""
    layout = head_layout(model)
    if family_of(model).name not in STANDARD_FAMILIES or not layout.pruned_heads():
        return None
    counts = {b.index: {"num_attention_heads": len(b.kept_heads), "num_key_value_heads": len(b.kept_kv_heads)}
              for b in layout.blocks}
    even = all(len({sum(b.kv_head_of(h) == g for h in b.kept_heads) for g in b.kept_kv_heads}) <= 1
               for b in layout.blocks)
    alike = len({tuple(c.values()) for c in counts.values()}) == 1
    return counts, even and alike and counts[0]["num_attention_heads"] > 0


def _write_geometry(model: nn.Module, file: Path) -> None:
    """State the pruned geometry in config.json in transformers' terms (see the module docstring)."""
    geometry = _layer_geometry(model)
    if geometry is None:
        return
    counts, uniform = geometry
    data = json.loads(file.read_text())
    layout = head_layout(model)
    if uniform:
        data[UNPRUNED_KEY] = {"num_attention_heads": layout.num_heads, "num_key_value_heads": layout.kv_heads}
        data.update(counts[0], head_dim=layout.head_size)
    else:
        data.update(per_layer_config={str(k): v for k, v in counts.items()},
                    allow_global_per_layer_attribute_access=True, head_dim=layout.head_size)
    file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _unpruned_config(path: Path, config):
    """The config of the unpruned model a pruned folder was cut from, and the per-layer head counts
    its config.json states (None when it states none)."""
    data = json.loads((path / "config.json").read_text())
    unpruned, per_layer = data.pop(UNPRUNED_KEY, None), data.pop("per_layer_config", None)
    if unpruned is None and per_layer is None:
        return config, None
    data.pop("allow_global_per_layer_attribute_access", None)
    if unpruned is not None:
        if not isinstance(unpruned, Mapping) or set(unpruned) != {"num_attention_heads", "num_key_value_heads"}:
            raise ValueError(f"{path / 'config.json'}: {UNPRUNED_KEY} must hold num_attention_heads and "
                             f"num_key_value_heads, got {unpruned!r}")
        stated = {k: data[k] for k in unpruned}
        per_layer = {str(i): stated for i in range(int(data.get("num_hidden_layers", 0)))}
        data.update(unpruned)
    return type(config).from_dict(data), per_layer


def _check_geometry(path: Path, model: nn.Module, stated: Mapping | None) -> None:
    """The per-layer head counts config.json states must be those its pruned_heads leave."""
    if stated is None:
        return
    actual = _layer_geometry(model)
    derived = {str(k): v for k, v in (actual[0] if actual else {}).items()}
    if {str(k): dict(v) for k, v in dict(stated).items()} != derived:
        raise ValueError(f"{path / 'config.json'}: its head counts per layer {dict(stated)} disagree with those its "
                         f"pruned_heads leave ({derived})")


def _shape_record(config) -> dict:
    """What fixes a pruned checkpoint's shapes, as its config records it (JSON-normalised)."""
    record = {"pruned_heads": {str(k): list(v) for k, v in dict(getattr(config, "pruned_heads", None) or {}).items()}}
    if getattr(config, "pruned_kv_heads", None) is not None:
        record["pruned_kv_heads"] = {str(k): list(v) for k, v in dict(config.pruned_kv_heads).items()}
    return record


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
    if not isinstance(pruned, Mapping):
        raise ValueError(
            f"{path / 'config.json'}: pruned_heads must be a mapping {{layer: [head, ...]}}, got {type(pruned).__name__}"
        )
    check_manifest(path, "pruned", _shape_record(config))
    config, stated = _unpruned_config(path, config)  # a standard or per-layer config: the unpruned geometry
    recorded_kv = getattr(config, "pruned_kv_heads", None)
    config.pruned_heads = {}
    model = model_from_config(config, attn_implementation)
    try:
        prune_heads(model, pruned)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path / 'config.json'}: its pruned_heads entry does not fit the model: {err}") from None
    if recorded_kv is not None:
        derived = {str(k): v for k, v in head_layout(model).pruned_kv_heads().items()}
        if {str(k): list(v) for k, v in dict(recorded_kv).items()} != derived:
            raise ValueError(
                f"{path / 'config.json'}: pruned_kv_heads {recorded_kv} disagrees with the key/value heads "
                f"that its pruned_heads remove ({derived})"
            )
    _check_geometry(path, model, stated)
    load_weights(model, path, "its recorded architecture")
    return model.to(device).eval()
