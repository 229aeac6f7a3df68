"""The pruned-checkpoint format: `save_pruned` writes a model with heads removed, `load_pruned`
rebuilds it from the pruned-head map its config records, checked against its manifest.

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

Importing this module registers the format with `gnorm_kernels.checkpoints.formats`, so
`load_checkpoint` (and `load_model`) hand such folders here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from gnorm_kernels.checkpoints.formats import (
    check_manifest,
    checkpoint_format,
    load_checkpoint,
    load_weights,
    model_from_config,
    read_config,
    register_format,
    write_checkpoint,
    write_manifest,
)
from gnorm_kernels.heads.families import family_of, head_layout
from gnorm_kernels.heads.pruning import prune_heads, record_pruning

__all__ = ["STANDARD_FAMILIES", "load_pruned", "save_pruned"]

# families whose config can state a pruned geometry (head_dim need not be hidden / heads)
STANDARD_FAMILIES = ("llama", "qwen2", "mistral")
UNPRUNED_KEY = "gnorm_unpruned"  # the unpruned head counts of a standard config


def save_pruned(model: nn.Module, path: str | os.PathLike, tokenizer=None) -> Path:
    """Save a (possibly pruned) model as an ordinary safetensors checkpoint.

    The pruned-head map travels in ``config.json`` as ``pruned_heads``; `load_pruned` rebuilds
    the shapes from it. The tokenizer is saved beside the weights when one is given.
    """
    record_pruning(model)
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
    allow_unverified: bool = False,
) -> nn.Module:
    """Rebuild a model saved by `save_pruned`: the architecture from its config, pruned as
    recorded, then its weights loaded strictly. Returns the model in eval mode.

    The folder's manifest (``gnorm_checkpoint.json``) must agree with the config's head map and
    the weight files' hashes. A config that records pruned heads without a manifest is refused:
    `allow_unverified=True` loads such a folder (saved before manifests existed) unchecked.

    `attn_implementation` ("eager", "sdpa") is a run-time choice that checkpoints do not record;
    None keeps the transformers default. A folder written by `gnorm_kernels.grain.save_grain`
    (its config records a ``grain_structure``) goes to the loader of that format
    (`gnorm_kernels.checkpoints.formats.load_checkpoint` makes the choice).
    """
    path = Path(path)
    config = read_config(path)
    if checkpoint_format(path) == "grain":
        return load_checkpoint(path, device=device, attn_implementation=attn_implementation,
                               allow_unverified=allow_unverified)
    pruned = getattr(config, "pruned_heads", None) or {}
    if not isinstance(pruned, Mapping):
        raise ValueError(
            f"{path / 'config.json'}: pruned_heads must be a mapping {{layer: [head, ...]}}, got {type(pruned).__name__}"
        )
    recorded_kv = getattr(config, "pruned_kv_heads", None)
    check_manifest(path, "pruned", _shape_record(config), required=bool(pruned or recorded_kv) and not allow_unverified)
    config, stated = _unpruned_config(path, config)  # a standard or per-layer config: the unpruned geometry
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


register_format("pruned", "pruned_heads", load_pruned)
