"""The offline models' trained weights, shipped inside the package.

`tiny` (the 4-layer BERT of `gnorm_kernels.models.tiny_bert`), `tiny-aspects` (the same BERT trained on the
harder "aspects" task: the tutorial's model) and `tiny-lm` (the 4-layer grouped-query
Llama of `gnorm_kernels.models.tiny_lm`) are trained once from their recipes and their files ship under
``gnorm_kernels/models/shipped/<name>/``. Training is deterministic on one kind of CPU but not
across kinds (vector instruction sets round differently), so shipping the files is what makes
every machine use the same model, and what lets the first `load_model("tiny")` take seconds.

Every model file's SHA-256 is pinned here: `shipped_folder` refuses a folder whose files differ.
`gnorm_kernels.models.make_models` (`make models`) retrains every shipped model from its recipe,
writes it into the package folder and prints the new hashes (to pin below) and the behavioural
figures the tests hold.
"""

from __future__ import annotations

import importlib.resources
import json
import os
from pathlib import Path
from typing import Any

from gnorm_kernels.checkpoints.formats import file_sha256

__all__ = ["RECORD", "SHIPPED_MODELS", "SHIPPED_SHA256", "ShippedModelError", "shipped_folder", "shipped_record",
           "shipped_root"]

SHIPPED_MODELS = ("tiny", "tiny-aspects", "tiny-lm")
RECORD = "training.json"  # how the model was made (recipe, machine, date, figures): not pinned

# The files that make up each model, with their SHA-256 (`make models` prints these lines).
SHIPPED_SHA256: dict[str, dict[str, str]] = {
    "tiny": {
        "config.json": "03ed7a3d14d34357137d428aab9fb85df18977015eb6df8e19fa97fcd733f4b4",
        "model.safetensors": "cae2fb7b184deafb248e919b94a1336c375198b21fc704745e88cdd848f78481",
        "tokenizer.json": "062f4b985a249e10f72f74188a4bac8e6dd88faefa77555a1ef5fe70908d598a",
        "tokenizer_config.json": "8f7c0d3f2dc15a242a0f5c7aa6179e4acd5bdb972a01c009d0f5e59678642179",
    },
    "tiny-aspects": {
        "config.json": "03ed7a3d14d34357137d428aab9fb85df18977015eb6df8e19fa97fcd733f4b4",
        "model.safetensors": "9d38539a6d223e71421c617790a3378fd085aad23dd549e597a3c0d9990f129c",
        "tokenizer.json": "062f4b985a249e10f72f74188a4bac8e6dd88faefa77555a1ef5fe70908d598a",
        "tokenizer_config.json": "8f7c0d3f2dc15a242a0f5c7aa6179e4acd5bdb972a01c009d0f5e59678642179",
    },
    "tiny-lm": {
        "config.json": "82ab3f0d9e35f7591e724aefdc9bcd7b9fb148735ec0089c5287d7bc7fa9dfc6",
        "generation_config.json": "84ad70ca6b861e865a1076cad5448ffe924be4541e7de83a232eb56a3350e057",
        "model.safetensors": "33d31182f4f5a45b0731669c05237d422bb4eeb7a4d6b7470f609cdbaafbfad5",
        "tokenizer.json": "1937d2c351ace598e7122cd8303feba5fa2abb9ba2cebfcb2c0dad91d1c26201",
        "tokenizer_config.json": "caaab6cce968b3f3b231247e4cf9bb29bdd7321ec3dc095b9441889811e12018",
    },
}


class ShippedModelError(RuntimeError):
    """A shipped model's file is missing or differs from the hash pinned in the code."""


def shipped_root() -> Path:
    """The folder holding one sub-folder per shipped model (inside the installed package)."""
    return Path(str(importlib.resources.files("gnorm_kernels").joinpath("models", "shipped")))


def shipped_folder(name: str, root: str | os.PathLike | None = None) -> Path:
    """The checked folder of shipped model `name`: every pinned file present with its pinned hash.

    Raises `ShippedModelError` naming the first file that is missing or differs.
    """
    if name not in SHIPPED_SHA256:
        raise KeyError(f"no shipped model {name!r}; shipped models are {', '.join(SHIPPED_SHA256)}")
    folder = Path(root if root is not None else shipped_root()) / name
    pinned = SHIPPED_SHA256[name]
    if not pinned:
        raise ShippedModelError(f"no files of {name!r} are pinned in {__name__}.SHIPPED_SHA256: run `make models`")
    for file_name, expected in pinned.items():
        file = folder / file_name
        if not file.is_file():
            raise ShippedModelError(
                f"{file} is missing: the shipped {name!r} model needs it. Reinstall the package "
                "(or run `make models` in a checkout to retrain it)"
            )
        found = file_sha256(file)
        if found != expected:
            raise ShippedModelError(
                f"{file} has SHA-256 {found}, expected {expected} (pinned in {__name__}): the shipped {name!r} "
                "model was changed or damaged. Reinstall the package, or after `make models` pin the new hashes"
            )
    return folder


def shipped_record(name: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """How shipped model `name` was made: recipe, recipe key, machine, date and measured figures."""
    file = Path(root if root is not None else shipped_root()) / name / RECORD
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ShippedModelError(f"{file} is missing or unreadable ({err})") from err
