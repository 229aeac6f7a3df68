"""Checkpoint folders: read and write safetensors weights and configs, and tell their formats apart.

A folder is one of three formats, told apart by its ``config.json`` alone:

* ``"plain"``: an ordinary transformers checkpoint;
* ``"pruned"``: heads removed by `gnorm_kernels.heads.pruning.prune_heads` (``pruned_heads`` recorded);
* ``"grain"``: shrunk by GRAIN (``grain_structure`` recorded).

`checkpoint_format` makes that choice in one place, and `load_checkpoint` hands a pruned or GRAIN
folder to the loader of its format. Those loaders live in higher modules and register themselves
here when imported (`register_format`: `gnorm_kernels.checkpoints.pruned` and
`gnorm_kernels.grain.shrink`), so this leaf module depends on transformers and safetensors alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

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
]

# format -> config key that marks it, in the order they are tried; the loaders register themselves
FORMATS: dict[str, str] = {"grain": "grain_structure", "pruned": "pruned_heads"}
_LOADERS: dict[str, Callable[..., nn.Module]] = {}


def register_format(name: str, key: str, loader: Callable[..., nn.Module]) -> None:
    """Make `load_checkpoint` hand folders whose config.json sets `key` to `loader(path, **options)`."""
    FORMATS.setdefault(name, key)
    if FORMATS[name] != key:
        raise ValueError(f"format {name!r} is marked by {FORMATS[name]!r}, not {key!r}")
    _LOADERS[name] = loader


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
    for name, key in FORMATS.items():
        if data.get(key):
            return name
    return "plain"


def load_checkpoint(path: str | os.PathLike, **options: Any) -> nn.Module:
    """Load a pruned or GRAIN folder with the loader of its format (options go to that loader:
    ``device``, ``attn_implementation``). A plain folder is an error: transformers loads those."""
    fmt = checkpoint_format(path)
    if fmt == "plain":
        raise ValueError(f"{path} is a plain checkpoint (no pruned heads, no GRAIN structure); load it with load_model")
    if fmt not in _LOADERS:
        raise RuntimeError(
            f"{path} is a {fmt} checkpoint, but no loader for that format is registered: "
            "load it with gnorm_kernels.load_model, which imports every format's loader"
        )
    return _LOADERS[fmt](path, **options)


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
    if architectures and not (isinstance(model_cls, type) and issubclass(model_cls, transformers.PreTrainedModel)):
        raise ValueError(
            f"config.json names architecture {architectures[0]!r}, which is not a transformers model class "
            "(expected e.g. 'BertForSequenceClassification' or 'LlamaForCausalLM')"
        )
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        if model_cls is None:
            return transformers.AutoModel.from_config(config, **kwargs)
        return model_cls._from_config(config, **kwargs)


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files a checkpoint folder is made of: the shards its
    ``model.safetensors.index.json`` names, else ``model.safetensors``. Other ``*.safetensors``
    files (a backup, a stray copy) are never read, so they cannot override weights."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{index} is not a valid safetensors index (expected a 'weight_map'): {err}") from None
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that are missing from {path}: {missing}")
        return files
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
    if pickles:
        raise ValueError(
            f"{path} holds only pickle weights ({', '.join(pickles)}); loading pickle can run arbitrary code, so this "
            "package reads safetensors only. Convert them once, in a process you trust: "
            "model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=False); "
            "model.save_pretrained(folder)  # writes model.safetensors"
        )
    raise FileNotFoundError(f"no model.safetensors (or model.safetensors.index.json) in {path}")


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder's weight files, with a clear error naming a broken file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in weight_files(path):
        try:
            state.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{f} is not a readable safetensors file (truncated or corrupt?): {err}") from None
    return state


def load_weights(model: nn.Module, path: Path, what: str) -> None:
    """Load a checkpoint folder's weights into `model`, strictly: any key missing (other than
    tied weights), unexpected or of another shape is an error naming `what` the model was built as."""
    path = Path(path)
    state = _strip_prefix(read_weights(path), model)
    expected = model.state_dict()
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
             for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise ValueError(f"checkpoint {path} does not match {what}: shapes differ for {wrong[:5]}")
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


MANIFEST = "gnorm_checkpoint.json"


def file_sha256(file: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(path: str | os.PathLike, fmt: str, record: dict[str, Any]) -> Path:
    """Write ``gnorm_checkpoint.json``: the format, what defines the model's shapes (`record`,
    e.g. the pruned-head map) and the SHA-256 of every weight file, so that an edit of the
    config or a swapped weight file is caught on load instead of loading into the wrong heads."""
    path = Path(path)
    manifest = {"format": fmt, "record": record,
                "weights_sha256": {f.name: file_sha256(f) for f in weight_files(path)}}
    target = path / MANIFEST
    target.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return target


def check_manifest(path: str | os.PathLike, fmt: str, record: dict[str, Any]) -> None:
    """Compare a folder with its manifest (if it has one): same format, same `record` as its
    config says, same weight files. Raises ValueError saying what differs."""
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        return  # written before manifests existed: nothing to compare
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from None
    if manifest.get("format") != fmt:
        raise ValueError(f"{file} records format {manifest.get('format')!r}, but config.json describes {fmt!r}")
    if manifest.get("record") != json.loads(json.dumps(record, sort_keys=True)):
        raise ValueError(
            f"{path / 'config.json'} no longer matches {file}: the config says {record}, the checkpoint was saved "
            f"with {manifest.get('record')}; was config.json edited? Loading would put weights into the wrong heads"
        )
    recorded = manifest.get("weights_sha256") or {}
    actual = {f.name: file_sha256(f) for f in weight_files(path)}
    if recorded != actual:
        changed = sorted(set(recorded) ^ set(actual) | {k for k in recorded if actual.get(k) != recorded[k]})
        raise ValueError(f"weight files of {path} differ from those saved with it ({file}): {changed}")


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
