"""Checkpoint folders: read and write safetensors weights and configs, and tell their formats apart.

A folder is one of three formats, told apart by its ``config.json`` alone:

* ``"plain"``: an ordinary transformers checkpoint;
* ``"pruned"``: heads removed by `gnorm_kernels.pruning.prune_heads` (``pruned_heads`` recorded);
* ``"grain"``: shrunk by GRAIN (``grain_structure`` recorded).

`checkpoint_format` makes that choice in one place, and `load_checkpoint` hands a pruned or GRAIN
folder to the loader of its format. Those loaders live in higher modules; this leaf module names
them by import path only, so it depends on transformers and safetensors alone.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

__all__ = [
    "FORMATS",
    "checkpoint_format",
    "load_checkpoint",
    "read_config",
    "model_from_config",
    "load_weights",
    "write_checkpoint",
    "progress_bars",
]

# format -> (config key that marks it, "module:function" that loads such a folder)
FORMATS: dict[str, tuple[str, str]] = {
    "grain": ("grain_structure", "gnorm_kernels.grain.shrink:load_grain"),
    "pruned": ("pruned_heads", "gnorm_kernels.pruning:load_pruned"),
}


@contextmanager
def progress_bars(show: bool) -> Iterator[None]:
    """transformers' progress bars (loading, saving) off inside the block when `show` is False."""
    from transformers.utils import logging as hf_logging

    if show or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _config_json(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint folder: no config.json in it")
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from None


def checkpoint_format(path: str | os.PathLike) -> str:
    """"grain", "pruned" or "plain": the format of a checkpoint folder, from its config.json."""
    data = _config_json(Path(path))
    for name, (key, _) in FORMATS.items():
        if data.get(key):
            return name
    return "plain"


def load_checkpoint(path: str | os.PathLike, **options: Any) -> nn.Module:
    """Load a pruned or GRAIN folder with the loader of its format (options go to that loader:
    ``device``, ``attn_implementation``). A plain folder is an error: transformers loads those."""
    fmt = checkpoint_format(path)
    if fmt == "plain":
        raise ValueError(f"{path} is a plain checkpoint (no pruned heads, no GRAIN structure); load it with load_model")
    module, _, function = FORMATS[fmt][1].partition(":")
    return getattr(importlib.import_module(module), function)(path, **options)


def read_config(path: Path):
    """The transformers config of a checkpoint folder (a clear error when it is not one)."""
    import transformers

    _config_json(Path(path))
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

    path = Path(path)
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


def write_checkpoint(model: nn.Module, path: str | os.PathLike, tokenizer=None) -> Path:
    """Write model (safetensors + config.json, quietly) and tokenizer, if any, into `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with progress_bars(False):  # no "Writing model shards" bar
        model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


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
