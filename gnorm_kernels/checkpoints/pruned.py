"""The pruned-checkpoint format: `save_pruned` writes a model with heads removed, `load_pruned`
rebuilds it from the pruned-head map its config records, checked against its manifest.

Importing this module registers the format with `gnorm_kernels.checkpoints.formats`, so
`load_checkpoint` (and `load_model`) hand such folders here.
"""

from __future__ import annotations

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
from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.pruning import prune_heads, record_pruning

__all__ = ["save_pruned", "load_pruned"]


def save_pruned(model: nn.Module, path: str | os.PathLike, tokenizer=None) -> Path:
    """Save a (possibly pruned) model as an ordinary safetensors checkpoint.

    The pruned-head map travels in ``config.json`` as ``pruned_heads``; `load_pruned` rebuilds
    the shapes from it. The tokenizer is saved beside the weights when one is given.
    """
    record_pruning(model)
    path = write_checkpoint(model, path, tokenizer)
    write_manifest(path, "pruned", _shape_record(model.config))
    return path


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
    load_weights(model, path, "its recorded architecture")
    return model.to(device).eval()


register_format("pruned", "pruned_heads", load_pruned)
