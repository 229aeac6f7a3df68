"""Physical removal of attention heads, and a checkpoint format that remembers it.

transformers 5 dropped `prune_heads`; this module does it for every family `head_layout` knows:
the head's rows of the query/key/value weights and biases and its columns of the output
projection are removed, the module attributes the forward pass reads are updated, and the
pruned-head map is mirrored into ``config.pruned_heads`` so a saved checkpoint can be rebuilt.
A layer that loses all its heads keeps working: its attention then adds only the output bias.
"""

from __future__ import annotations

import json
import operator
import os
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn
from torch.nn.utils import skip_init

from gnorm_kernels.arch import KEPT_HEADS_ATTR, AttentionBlock, HeadLayout, family_of, head_layout

__all__ = ["prune_heads", "save_pruned", "load_pruned", "normalize_head_map"]

_HEAD_COUNT_ATTRS = ("num_attention_heads", "n_heads")
_EMPTY_CLASSES: dict[tuple[type, object], type] = {}


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


def _select(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping `index` along dim 0 (output rows) or 1 (input columns)."""
    weight = linear.weight.detach().index_select(dim, index.to(linear.weight.device)).clone()
    bias = linear.bias
    if bias is not None and dim == 0:
        bias = bias.detach().index_select(0, index.to(bias.device)).clone()
    elif bias is not None:
        bias = bias.detach().clone()
    out_f, in_f = weight.shape
    with warnings.catch_warnings():  # a zero-width Linear (an emptied layer) is expected here
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        new = skip_init(nn.Linear, in_f, out_f, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    new.train(linear.training)
    return new


def _empty_class(cls: type, forward) -> type:
    """A subclass of `cls` whose forward handles zero heads (cached, importable by name)."""
    key = (cls, forward)
    if key not in _EMPTY_CLASSES:
        name = f"Empty{cls.__name__}"
        new = type(name, (cls,), {"forward": forward, "__module__": __name__, "__qualname__": name})
        globals()[name] = new
        _EMPTY_CLASSES[key] = new
    return _EMPTY_CLASSES[key]


def _owner(root: nn.Module, target: nn.Module) -> tuple[nn.Module, str]:
    for module in root.modules():
        for name, child in module.named_children():
            if child is target:
                return module, name
    raise RuntimeError("module not found in model")  # cannot happen for modules from head_layout


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
        parent, name = _owner(model, linear)
        setattr(parent, name, _select(linear, index, dim))
    attention = block.attention
    for attr in _HEAD_COUNT_ATTRS:
        if hasattr(attention, attr):
            setattr(attention, attr, len(new_kept))
    if hasattr(attention, "all_head_size"):
        attention.all_head_size = len(new_kept) * d
    setattr(attention, KEPT_HEADS_ATTR, new_kept)
    if not new_kept:
        attention.__class__ = _empty_class(type(attention), empty_forward)


def _snapshot(model: nn.Module, layout: HeadLayout) -> list:
    saved = []
    for block in layout.blocks:
        attention = block.attention
        attrs = {a: getattr(attention, a) for a in (*_HEAD_COUNT_ATTRS, "all_head_size") if hasattr(attention, a)}
        linears = [(*_owner(model, getattr(block, p)), getattr(block, p)) for p in ("query", "key", "value", "output")]
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


def write_checkpoint(model: nn.Module, path: str | os.PathLike, tokenizer=None) -> Path:
    """Write model (safetensors + config.json, quietly) and tokenizer, if any, into `path`."""
    from gnorm_kernels.models import progress_bars

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with progress_bars(False):  # no "Writing model shards" bar
        model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


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
    (its config records a ``grain_structure``) is handed to `gnorm_kernels.grain.load_grain`.
    """
    path = Path(path)
    config = read_config(path)
    if getattr(config, "grain_structure", None):
        from gnorm_kernels.grain.shrink import load_grain

        return load_grain(path, device=device, attn_implementation=attn_implementation)
    pruned = getattr(config, "pruned_heads", None) or {}
    config.pruned_heads = {}
    model = model_from_config(config, attn_implementation)
    prune_heads(model, {int(k): v for k, v in pruned.items()})
    load_weights(model, path, "its recorded architecture")
    return model.to(device).eval()


def read_config(path: Path):
    """The transformers config of a checkpoint folder (a clear error when it is not one)."""
    import transformers

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint folder: no config.json in it")
    return transformers.AutoConfig.from_pretrained(path)


def model_from_config(config, attn_implementation: str | None = None) -> nn.Module:
    """A freshly initialised model of the class the config names (its first ``architectures``
    entry; the bare model when it names none)."""
    import transformers

    architectures = getattr(config, "architectures", None) or []
    model_cls = getattr(transformers, architectures[0], None) if architectures else None
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        if model_cls is None:
            return transformers.AutoModel.from_config(config, **kwargs)
        return model_cls._from_config(config, **kwargs)


def load_weights(model: nn.Module, path: Path, what: str) -> None:
    """Load every ``*.safetensors`` file of `path` into `model`, strictly: any key missing
    (other than tied weights) or unexpected is an error naming `what` the model was built as."""
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {path}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    state = _strip_prefix(state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = _tied_keys(model)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint {path} does not match {what}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def _strip_prefix(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    keys = set(model.state_dict())
    if all(k in keys for k in state):
        return state
    prefix = getattr(model, "base_model_prefix", "")
    fixed = {}
    for k, v in state.items():
        if k not in keys and f"{prefix}.{k}" in keys:
            k = f"{prefix}.{k}"
        fixed[k] = v
    return fixed


def _tied_keys(model: nn.Module) -> set[str]:
    seen: dict[int, str] = {}
    tied = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        ptr = id(tensor)
        if ptr in seen:
            tied.add(name)
        else:
            seen[ptr] = name
    return tied


def pruned_map_from_config(path: str | os.PathLike) -> dict[int, list[int]]:
    """The pruned-head map recorded in a checkpoint folder's config.json ({} if none)."""
    data = json.loads((Path(path) / "config.json").read_text())
    return {int(k): list(v) for k, v in (data.get("pruned_heads") or {}).items()}
