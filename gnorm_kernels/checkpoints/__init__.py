"""Checkpoint folders: formats (a registry the format loaders join), pruned checkpoints, manifests."""

from __future__ import annotations

from gnorm_kernels.checkpoints.formats import (
    FORMATS,
    check_manifest,
    checkpoint_format,
    file_sha256,
    load_checkpoint,
    load_weights,
    model_from_config,
    progress_bars,
    read_config,
    read_weights,
    register_format,
    weight_files,
    write_checkpoint,
    write_manifest,
)
from gnorm_kernels.checkpoints.pruned import load_pruned, save_pruned

__all__ = [
    "FORMATS",
    "register_format",
    "checkpoint_format",
    "load_checkpoint",
    "read_config",
    "model_from_config",
    "load_weights",
    "read_weights",
    "weight_files",
    "write_checkpoint",
    "write_manifest",
    "file_sha256",
    "check_manifest",
    "progress_bars",
    "save_pruned",
    "load_pruned",
]
