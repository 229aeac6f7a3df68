"""`gnorm grain`: GRAIN intra-attention pruning from the command line.

    gnorm grain --density 0.2                      # the offline default: tiny model, synthetic task
    gnorm grain --density 0.05 --out runs/grain5   # also save the shrunk model and report.json

The teacher is the loaded model; the student starts as a copy of it. Prints accuracy, encoder
parameters kept and CPU latency against the dense teacher (timed round-robin; the ratio with its
interval, "not resolved" when it holds 1). A saved model reloads with
`gnorm_kernels.grain.load_grain`.

Its flags and defaults are built here without importing torch or GRAIN (`gnorm --help` stays
fast); `run` does the work once the command is parsed.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

from gnorm_kernels.cli.outputs import CLIError, OutputFolder

__all__ = ["run", "add_grain_command", "GRAIN_STEPS", "GRAIN_LR", "GRAIN_PAPER_LR", "GRAIN_IMPLEMENTATIONS"]

# GRAIN's schedule for the offline default (batch 32 on the synthetic task); bench/RESULTS.md
# "## GRAIN" records what it reaches and how long it takes. Other models get GRAIN's own learning
# rate (3e-5, for BERT-base on GLUE); the tiny model, trained at 1.5e-3, distils best at 1e-3.
GRAIN_STEPS = 1500
GRAIN_LR = {"tiny": 1e-3}
GRAIN_PAPER_LR = 3e-5
# gnorm_kernels.grain.attention.IMPLEMENTATIONS, the default first (tests/test_cli.py holds them together)
GRAIN_IMPLEMENTATIONS = ("grouped", "loop")
LATENCY_ROUNDS = 9  # dense and GRAIN timed in turn, round-robin (gnorm_kernels.evidence.timing)


def _check(args: argparse.Namespace) -> None:
    if not 0.0 < args.density <= 1.0:
        raise CLIError(f"--density must be in (0, 1], got {args.density}")
    for name in ("steps", "batch_size", "max_length"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("train_size", "eval_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.lr is None:
        raise CLIError("no learning rate: expected args.lr set (add_grain_command's handler fills in the default)")
    if args.lr <= 0:
        raise CLIError(f"--lr must be > 0, got {args.lr}")


def run(args: argparse.Namespace) -> int:
    """Run `gnorm grain` with the arguments its parser in `gnorm_kernels.cli.commands` produced (the
    learning rate already resolved); returns the exit status."""
    from gnorm_kernels.cli.load import check_device, fit_max_length, load_model_and_task
    from gnorm_kernels.evidence.timing import compare_latency
    from gnorm_kernels.grain.prune import grain_prune
    from gnorm_kernels.grain.shrink import save_grain

    _check(args)
    # the output folder is checked before any work
    with OutputFolder(args.out, force=args.force) if args.out is not None else nullcontext() as out:
        progress = not args.quiet
        # the same checks as every command: a usable --device, the task's labels fitted to the model's classes
        teacher, tokenizer, task = load_model_and_task(args, check_device(args.device))
        max_length = fit_max_length(args.max_length, teacher)
        train = task.batches(
            "train", tokenizer, batch_size=args.batch_size, max_length=max_length,
            shuffle=True, seed=args.seed, group_by_length=True, limit=args.train_size,
        )
        test = task.batches("test", tokenizer, batch_size=256, max_length=max_length, limit=args.eval_size)
        timing = task.batches("test", tokenizer, batch_size=32, max_length=max_length, limit=4 * 32)
        model, report = grain_prune(
            teacher,
            None,  # the student: grain_prune starts it as a copy of the teacher
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
            measure_speed=False,  # timed below, round-robin, with an interval on the ratio
            seed=args.seed,
            progress=progress,
        )
        timings = compare_latency({"dense": teacher, "GRAIN": model}, timing, rounds=LATENCY_ROUNDS)
        report.teacher_latency_s, report.latency_s = timings.median("dense"), timings.median("GRAIN")
        ratio = timings.ratios["GRAIN"]
        result = report.to_dict()
        result["latency_ratio"] = {"value": ratio.value, "low": ratio.low, "high": ratio.high, "level": ratio.level,
                                   "resolved": ratio.resolved, "rounds": LATENCY_ROUNDS}
        result.update(model=str(args.model), task=task.name, batch_size=args.batch_size)
        if out is not None:
            save_grain(model, out.path("model"), tokenizer)
            out.path("report.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "structure"}, indent=2))
    else:
        print(report)
        print(report.structure.describe())
        print(timings.markdown())
        if out is not None:
            print(f"saved to {Path(args.out) / 'model'} (reload with gnorm_kernels.load_model or gnorm_kernels.grain.load_grain)")
    return 0


def add_grain_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grain", help="GRAIN: prune attention and FFN units with distillation, then shrink",
        description="Distil a student (a copy of the model) from the model while pruning its query units, value "
                    "units and FFN neurons to the target density on GRAIN's schedule (distil 20%, cubic ramp to "
                    "40%, distil the rest); then shrink it and report accuracy, encoder parameters kept and CPU "
                    "latency against the dense model.",
    )
    p.add_argument("--density", type=float, default=0.2, help="fraction of encoder units to keep, in (0, 1] (default 0.2)")
    p.add_argument("--model", default="tiny", help='teacher: "tiny" (trained here on first use), a hub id or a local folder')
    p.add_argument("--task", default="synthetic", help='"synthetic" (offline default), glue/<task>, or a csv/tsv/jsonl file')
    p.add_argument("--steps", type=int, default=GRAIN_STEPS, help=f"optimiser steps (default {GRAIN_STEPS})")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size (default 32)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"AdamW learning rate (default {GRAIN_LR['tiny']:g} for the tiny model, {GRAIN_PAPER_LR:g} otherwise)")
    p.add_argument("--temperature", type=float, default=8.0, help="distillation temperature τ (default 8)")
    p.add_argument("--alpha", type=float, default=0.3, help="structure regulariser α (default 0.3)")
    p.add_argument("--no-structure-reg", action="store_true", help="rank value units without the structure regulariser")
    p.add_argument("--impl", choices=GRAIN_IMPLEMENTATIONS, default=GRAIN_IMPLEMENTATIONS[0],
                   help="attention implementation of the shrunk model (default grouped: one matmul per group of "
                        "equal-sized heads; loop: one per head; auto: a deprecated alias of grouped)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per example (default 128)")
    p.add_argument("--train-size", type=int, default=None, help="training examples used (default: all)")
    p.add_argument("--eval-size", type=int, default=None, help="test examples used for evaluation (default: all)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch order (default 0)")
    p.add_argument("--out", type=Path, default=None, help="save the shrunk model, tokenizer and report.json here")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out once this run has finished")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_grain)


def _run_grain(args: argparse.Namespace) -> int:
    from gnorm_kernels.parallel.distributed import is_distributed

    if is_distributed():
        raise CLIError("gnorm grain runs in one process; start it without torchrun")
    if args.lr is None:
        args.lr = GRAIN_LR.get(str(args.model), GRAIN_PAPER_LR)
    return run(args)
