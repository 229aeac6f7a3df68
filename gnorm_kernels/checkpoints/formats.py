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
    "check_weight_paths",
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
    """"grain", "pruned" or "plain": the format of a checkpoint folder, from its config.json and,
    when it has one, its manifest (``gnorm_checkpoint.json``). A config that lost its format's
    entry (``pruned_heads: {}``) still goes to the loader the manifest names, which then compares
    the two; a config of another format than the manifest's is an error."""
    path = Path(path)
    data = _config_json(path)
    fmt = next((name for name, key in FORMATS.items() if data.get(key)), "plain")
    saved = _manifest(path)
    if saved is None:
        return fmt
    recorded = saved.get("format")
    if recorded not in FORMATS:
        raise ValueError(f"{path / MANIFEST} records an unknown format {recorded!r}; expected one of {sorted(FORMATS)}")
    if fmt not in ("plain", recorded):
        raise ValueError(f"{path / 'config.json'} describes a {fmt!r} checkpoint, but {path / MANIFEST} records "
                         f"{recorded!r}; was config.json edited?")
    return recorded


def load_checkpoint(path: str | os.PathLike, **options: Any) -> nn.Module:
    """Load a pruned or GRAIN folder with the loader of its format (options go to that loader:
    ``device``, ``attn_implementation``, ``allow_unverified``). A plain folder is an error:
    transformers loads those."""
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


def _inside(path: Path, file: Path) -> bool:
    """Whether `file` (links followed) lies inside the folder `path`. A folder of the hub's cache
    (``<repo>/snapshots/<revision>/``) links its files into ``<repo>/blobs/``, which counts as inside."""
    folder, target = path.resolve(), file.resolve()
    if target.is_relative_to(folder):
        return True
    return folder.parent.name == "snapshots" and target.is_relative_to(folder.parent.parent / "blobs")


def _shard_names(index: Path) -> list[str]:
    """The file names a weight index (``*.index.json``) maps its tensors to, checked to be plain
    names of files in the index's own folder: no folders, no '..', no absolute paths."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{index} is not a valid weight index (expected a 'weight_map' of tensor -> file): {err}") from None
    bad = [n for n in names if not isinstance(n, str) or not n or n in (".", "..") or Path(n).name != n
           or "\\" in n or Path(n).is_absolute()]
    if bad:
        raise ValueError(f"{index} names weight files outside its folder {index.parent}: {bad[:5]}; expected plain "
                         "file names such as 'model-00001-of-00002.safetensors'")
    return names


def check_weight_paths(path: str | os.PathLike) -> None:
    """Refuse a checkpoint folder whose weight files would be read from outside it: an index
    (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``) naming other folders, or
    a weight file that is a link out of the folder."""
    path = Path(path)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file() or index.is_symlink():
            if not _inside(path, index):
                raise ValueError(f"{index} is a link to {index.resolve()}, outside the checkpoint folder {path}")
            for name in _shard_names(index):
                if (path / name).exists() and not _inside(path, path / name):
                    raise ValueError(f"{path / name} (named by {index}) is a link to {(path / name).resolve()}, "
                                     f"outside the checkpoint folder {path}")
    for file in [*path.glob("*.safetensors"), *path.glob("*.bin")]:
        if file.is_symlink() and not _inside(path, file):
            raise ValueError(f"{file} is a link to {file.resolve()}, outside the checkpoint folder {path}")


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files a checkpoint folder is made of: the shards its
    ``model.safetensors.index.json`` names, else ``model.safetensors``. Other ``*.safetensors``
    files (a backup, a stray copy) are never read, so they cannot override weights; nothing
    outside the folder is read (`check_weight_paths`)."""
    path = Path(path)
    check_weight_paths(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = [path / name for name in _shard_names(index)]
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
        raise ValueError(
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


def _manifest(path: Path) -> dict[str, Any] | None:
    """The folder's manifest, None when it has none; an unreadable one is an error naming it."""
    file = path / MANIFEST
    if not (file.exists() or file.is_symlink()):
        return None
    try:
        manifest = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not a readable JSON manifest: {err}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{file} is not a manifest: expected a JSON object, found {type(manifest).__name__}")
    return manifest


def check_manifest(path: str | os.PathLike, fmt: str, record: dict[str, Any], *, required: bool = False) -> None:
    """Compare a folder with its manifest: same format, same `record` as its config says, same
    weight files. Raises ValueError saying what differs. A folder without a manifest passes only
    when `required` is False (nothing to compare), so a folder whose config describes pruned
    or shrunk shapes cannot skip the check by losing its manifest."""
    path = Path(path)
    file = path / MANIFEST
    manifest = _manifest(path)
    if manifest is None:
        if required:
            raise ValueError(
                f"{path} describes a {fmt} model in config.json but has no {MANIFEST}, the record of its head map and "
                "weight hashes that save_pruned/save_grain write: without it an edited head map or swapped weights "
                "would load into the wrong heads unnoticed. Refusing it; if the folder was saved before manifests "
                "existed and you trust it, load it once with allow_unverified=True and save it again"
            )
        return
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
