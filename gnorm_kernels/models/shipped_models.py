"""The offline models' trained weights, shipped inside the package.

`tiny` (the 4-layer BERT of `gnorm_kernels.models.tiny_bert`) and `tiny-lm` (the 4-layer grouped-query
Llama of `gnorm_kernels.models.tiny_lm`) are trained once from their recipes and their files ship under
``gnorm_kernels/models/shipped/<name>/``. Training is deterministic on one kind of CPU but not
across kinds (vector instruction sets round differently), so shipping the files is what makes
every machine use the same model, and what lets the first `load_model("tiny")` take seconds.

Every model file's SHA-256 is pinned here: `shipped_folder` refuses a folder whose files differ.
``python -m gnorm_kernels.models.shipped_models`` (`make models`) retrains every shipped model from its
recipe, writes it into the package folder and prints the new hashes (to pin below) and the
behavioural figures the tests hold.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.resources
import json
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gnorm_kernels.checkpoints.formats import file_sha256

__all__ = ["SHIPPED_MODELS", "SHIPPED_SHA256", "ShippedModelError", "behaviour", "build_shipped", "ship_model",
           "shipped_folder", "shipped_record", "shipped_root"]

SHIPPED_MODELS = ("tiny", "tiny-lm")
RECORD = "training.json"  # how the model was made (recipe, machine, date, figures): not pinned

# The files that make up each model, with their SHA-256 (`make models` prints these lines).
SHIPPED_SHA256: dict[str, dict[str, str]] = {
    "tiny": {
        "config.json": "03ed7a3d14d34357137d428aab9fb85df18977015eb6df8e19fa97fcd733f4b4",
        "model.safetensors": "cae2fb7b184deafb248e919b94a1336c375198b21fc704745e88cdd848f78481",
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


# --------------------------------------------------------------------------- making them


def _recipe(name: str) -> Any:
    if name == "tiny":
        from gnorm_kernels.models.tiny_bert import TinyRecipe

        return TinyRecipe()
    from gnorm_kernels.models.tiny_lm import LMRecipe

    return LMRecipe()


def _train(name: str, progress: bool) -> tuple[Any, Any, dict[str, Any]]:
    if name == "tiny":
        from gnorm_kernels.models.tiny_bert import train_tiny

        return train_tiny(_recipe(name), progress=progress)
    from gnorm_kernels.models.tiny_lm import train_tiny_lm

    return train_tiny_lm(_recipe(name), progress=progress)


def _test_batches(name: str, tokenizer: Any) -> list:
    if name == "tiny":
        from gnorm_kernels.data.synthetic import synthetic_task

        return synthetic_task(train_size=100).batches("test", tokenizer, batch_size=500)
    from gnorm_kernels.data.lm_tasks import synthetic_lm_task

    return synthetic_lm_task(train_size=100).batches("test", tokenizer, batch_size=500)


def behaviour(name: str, model: Any, tokenizer: Any, *, progress: bool = False) -> dict[str, Any]:
    """The figures the tests and tutorial rely on, on the 2,000 test reviews: test accuracy (and
    perplexity for the LM), the largest single-head drop and its head, the share of heads whose
    removal costs under 0.5 points."""
    from gnorm_kernels.evaluate import evaluate, single_head_ablation

    batches = _test_batches(name, tokenizer)
    result = evaluate(model, batches)
    drops = single_head_ablation(model, batches, progress=progress)
    worst = int(drops.argmax())
    figures = {
        "test_accuracy": result["accuracy"],
        "largest_head_drop": round(float(drops.max()), 6),
        "largest_drop_head": [worst // drops.shape[1], worst % drops.shape[1]],
        "share_of_heads_under_half_a_point": round(float((drops < 0.005).float().mean()), 6),
        "head_drops": [[round(float(d), 6) for d in row] for row in drops],
    }
    if "perplexity" in result:
        figures["test_perplexity"] = result["perplexity"]
    return figures


def _machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
            "platform": platform.platform()}


def ship_model(name: str, model: Any, tokenizer: Any, info: dict[str, Any], out: str | os.PathLike | None = None,
               *, progress: bool = False) -> dict[str, Any]:
    """Write model `name` trained from its recipe (`info`: its training record) into `out`/<name>
    (default: the package's shipped folder), measure its behaviour, and write its record."""
    import torch

    from gnorm_kernels.checkpoints.formats import write_checkpoint

    if name not in SHIPPED_MODELS:
        raise KeyError(f"no shipped model {name!r}; shipped models are {', '.join(SHIPPED_MODELS)}")
    if info.get("recipe") != json.loads(json.dumps(asdict(_recipe(name)))):
        raise ValueError(f"{name!r} was not trained from its default recipe: {info.get('recipe')}")
    folder = Path(out if out is not None else shipped_root()) / name
    if folder.exists():
        for old in folder.iterdir():
            old.unlink()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # saved without the truncation/padding its last call happened to set
        backend.no_truncation()
        backend.no_padding()
    write_checkpoint(model, folder, tokenizer)
    files = sorted(p.name for p in folder.iterdir())
    with torch.no_grad():
        figures = behaviour(name, model, tokenizer, progress=progress)
    record = {
        "model": name,
        "recipe_key": _recipe(name).key(),
        **info,
        "behaviour": figures,
        "machine": _machine(),
        "made_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": "make models (python -m gnorm_kernels.models.shipped_models)",
        "sha256": {f: file_sha256(folder / f) for f in files},
    }
    (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


def build_shipped(names: tuple[str, ...] = SHIPPED_MODELS, out: str | os.PathLike | None = None, *,
                  progress: bool = True) -> dict[str, dict[str, Any]]:
    """Retrain each model of `names` from its recipe into `out`/<name> (default: the package's
    shipped folder) with its record; returns each model's record (hashes and figures included)."""
    records = {}
    for name in names:
        if name not in SHIPPED_MODELS:
            raise KeyError(f"no shipped model {name!r}; shipped models are {', '.join(SHIPPED_MODELS)}")
        model, tokenizer, info = _train(name, progress)
        records[name] = ship_model(name, model, tokenizer, info, out, progress=progress)
    return records


def _report(records: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, record in records.items():
        fig = record["behaviour"]
        extra = f", test perplexity {fig['test_perplexity']:.3f}" if "test_perplexity" in fig else ""
        lines.append(
            f"{name}: test accuracy {fig['test_accuracy']:.4f}{extra}; largest single-head drop "
            f"{100 * fig['largest_head_drop']:.1f} points at head {tuple(fig['largest_drop_head'])}; "
            f"{100 * fig['share_of_heads_under_half_a_point']:.1f}% of heads under 0.5 points; "
            f"trained in {record['train_seconds']:.0f} s on {record['machine']['cpu']} ({record['machine']['cpu_capability']})"
        )
    lines.append("\nPinned hashes (SHIPPED_SHA256 in gnorm_kernels/models/shipped_models.py):")
    for name, record in records.items():
        lines.append(f"    {name!r}: {{")
        lines.extend(f"        {f!r}: {h!r}," for f, h in record["sha256"].items())
        lines.append("    },")
    changed = [n for n, r in records.items() if r["sha256"] != {**SHIPPED_SHA256.get(n, {})}]
    lines.append("unchanged: the pinned hashes already match" if not changed
                 else f"CHANGED: {', '.join(changed)} differ from the pinned hashes; pin the lines above to ship them")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gnorm_kernels.models.shipped_models",
                                     description="Retrain the shipped offline models from their recipes.")
    parser.add_argument("--out", default=None, help="folder to write <name>/ into (default: the package's)")
    parser.add_argument("--only", choices=SHIPPED_MODELS, action="append", help="retrain only this model")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    records = build_shipped(tuple(args.only or SHIPPED_MODELS), args.out, progress=not args.no_progress)
    print(_report(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
