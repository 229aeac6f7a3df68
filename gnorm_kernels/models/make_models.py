"""`make models`: retrain every shipped offline model from its recipe into the package folder.

``python -m gnorm_kernels.models.make_models`` trains `tiny`, `tiny-aspects` and `tiny-lm` from their
recipes, writes each into ``gnorm_kernels/models/shipped/<name>/`` with a record of how it was
made (``training.json``: recipe, machine, date, figures), and prints the files' hashes (to pin in
`gnorm_kernels.models.shipped_models.SHIPPED_SHA256`) and the behavioural figures the tests hold.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gnorm_kernels.checkpoints.formats import file_sha256
from gnorm_kernels.models.shipped_models import RECORD, SHIPPED_MODELS, SHIPPED_SHA256, shipped_root

__all__ = ["behaviour", "build_shipped", "make_models", "ship_model"]


def _recipe(name: str) -> Any:
    if name == "tiny":
        from gnorm_kernels.models.tiny_bert import TinyRecipe

        return TinyRecipe()
    if name == "tiny-aspects":
        from gnorm_kernels.models.tiny_bert import ASPECTS_RECIPE

        return ASPECTS_RECIPE
    from gnorm_kernels.models.tiny_lm import LMRecipe

    return LMRecipe()


def _train(name: str, progress: bool) -> tuple[Any, Any, dict[str, Any]]:
    if name in ("tiny", "tiny-aspects"):
        from gnorm_kernels.models.tiny_bert import train_tiny

        return train_tiny(_recipe(name), progress=progress)
    from gnorm_kernels.models.tiny_lm import train_tiny_lm

    return train_tiny_lm(_recipe(name), progress=progress)


def _test_batches(name: str, tokenizer: Any) -> list:
    if name == "tiny":
        from gnorm_kernels.data.synthetic import synthetic_task

        return synthetic_task(train_size=100).batches("test", tokenizer, batch_size=500)
    if name == "tiny-aspects":
        from gnorm_kernels.data.aspects import aspects_task

        return aspects_task(train_size=100).batches("test", tokenizer, batch_size=500)
    from gnorm_kernels.data.lm_tasks import synthetic_lm_task

    return synthetic_lm_task(train_size=100).batches("test", tokenizer, batch_size=500)


def behaviour(name: str, model: Any, tokenizer: Any, *, progress: bool = False) -> dict[str, Any]:
    """The figures the tests and tutorial rely on, on the 2,000 test reviews: test accuracy (and
    perplexity for the LM), the largest single-head drop and its head, the share of heads whose
    removal costs under 0.5 points."""
    from gnorm_kernels.evaluation import evaluate, single_head_ablation

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
        "command": "make models (python -m gnorm_kernels.models.make_models)",
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


def make_models(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gnorm_kernels.models.make_models",
                                     description="Retrain the shipped offline models from their recipes.")
    parser.add_argument("--out", default=None, help="folder to write <name>/ into (default: the package's)")
    parser.add_argument("--only", choices=SHIPPED_MODELS, action="append", help="retrain only this model")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    records = build_shipped(tuple(args.only or SHIPPED_MODELS), args.out, progress=not args.no_progress)
    print(_report(records))
    return 0


if __name__ == "__main__":
    sys.exit(make_models())
