"""`gnorm grain`: GRAIN intra-attention pruning from the command line.

    gnorm grain --density 0.2                 # the offline default: tiny model, synthetic task
    gnorm grain --density 0.05 --output out/  # also save the shrunk model (load it with load_grain)

The teacher is the loaded model; the student starts as a copy of it. Prints accuracy, encoder
parameters kept and CPU latency against the dense teacher.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_parser", "run", "DEFAULT_STEPS"]

# Steps of the offline default (batch 32 on the synthetic task); bench/RESULTS.md "## GRAIN" records
# what it reaches and how long it takes.
DEFAULT_STEPS = 1500


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "grain",
        help="GRAIN: prune attention and FFN units with distillation, then shrink the model",
        description=(
            "Distil a student (a copy of the model) from the model while pruning its query units, value "
            "units and FFN neurons to the target density on GRAIN's schedule; then shrink it and report "
            "accuracy, encoder parameters kept and CPU latency against the dense model."
        ),
    )
    p.add_argument("--density", type=float, default=0.2, help="fraction of encoder units to keep, in (0, 1] (default 0.2)")
    p.add_argument("--model", default="tiny", help='teacher: "tiny" (offline default), a hub id or a folder')
    p.add_argument("--task", default="synthetic", help='"synthetic" (offline default), glue/<task>, or a csv/tsv/jsonl file')
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"optimiser steps (default {DEFAULT_STEPS})")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate (default 2e-4)")
    p.add_argument("--temperature", type=float, default=8.0, help="distillation temperature τ (default 8)")
    p.add_argument("--alpha", type=float, default=0.3, help="structure regulariser α (default 0.3)")
    p.add_argument("--no-structure-reg", action="store_true", help="rank value units without the structure regulariser")
    p.add_argument("--impl", choices=("grouped", "padded", "loop"), default="grouped", help="uneven-head attention implementation")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N test examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=None, help="save the shrunk model (and report.json) here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> int:
    import copy

    from gnorm_kernels.data import load_task
    from gnorm_kernels.grain.prune import grain_prune
    from gnorm_kernels.grain.shrink import save_grain
    from gnorm_kernels.models import load_model

    if not 0.0 < args.density <= 1.0:
        raise SystemExit(f"gnorm grain: --density must be in (0, 1], got {args.density}")
    if args.steps < 1 or args.batch_size < 1:
        raise SystemExit(f"gnorm grain: --steps and --batch-size must be >= 1, got {args.steps} and {args.batch_size}")
    progress = not args.quiet
    teacher, tokenizer = load_model(args.model, progress=progress)
    task = load_task(args.task)
    train = task.batches(
        "train", tokenizer, batch_size=args.batch_size, max_length=args.max_length,
        shuffle=True, seed=args.seed, group_by_length=True,
    )
    test = task.batches("test", tokenizer, batch_size=256, max_length=args.max_length, limit=args.eval_limit)
    timing = task.batches("test", tokenizer, batch_size=32, max_length=args.max_length, limit=4 * 32)
    model, report = grain_prune(
        teacher,
        copy.deepcopy(teacher),
        train,
        density=args.density,
        eval_data=test,
        steps=args.steps,
        lr=args.lr,
        temperature=args.temperature,
        alpha=args.alpha,
        structure_regularization=not args.no_structure_reg,
        impl=args.impl,
        metric=task.metric,
        latency_batches=timing,
        seed=args.seed,
        progress=progress,
    )
    result = report.as_dict()
    result.update(model=str(args.model), task=task.name, lr=args.lr, batch_size=args.batch_size)
    if args.output is not None:
        save_grain(model, args.output, tokenizer)
        (Path(args.output) / "report.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "structure"}, indent=2))
    else:
        print(report)
        print(report.structure.describe())
        if args.output is not None:
            print(f"saved to {args.output} (load with gnorm_kernels.grain.load_grain)")
    return 0
