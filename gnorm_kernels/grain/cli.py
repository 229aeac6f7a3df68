"""`gnorm grain`: GRAIN intra-attention pruning from the command line.

    gnorm grain --density 0.2                      # the offline default: tiny model, synthetic task
    gnorm grain --density 0.05 --out runs/grain5   # also save the shrunk model and report.json

The teacher is the loaded model; the student starts as a copy of it. Prints accuracy, encoder
parameters kept and CPU latency against the dense teacher. A saved model reloads with
`gnorm_kernels.grain.load_grain`.

The command's flags and defaults are in `gnorm_kernels.cli` with every other command's, so that
`gnorm --help` needs neither torch nor GRAIN; this module runs the parsed command.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

from gnorm_kernels.outputs import OutputFolder

__all__ = ["run"]


def _check(args: argparse.Namespace) -> None:
    if not 0.0 < args.density <= 1.0:
        raise ValueError(f"--density must be in (0, 1], got {args.density}")
    for name in ("steps", "batch_size", "max_length"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("train_size", "eval_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.lr is None:
        raise ValueError("no learning rate: expected args.lr set (gnorm_kernels.cli fills in the default)")
    if args.lr <= 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")


def run(args: argparse.Namespace) -> int:
    """Run `gnorm grain` with the arguments its parser in `gnorm_kernels.cli` produced (the
    learning rate already resolved); returns the exit status."""
    from gnorm_kernels.data import load_task
    from gnorm_kernels.grain.prune import grain_prune
    from gnorm_kernels.grain.shrink import save_grain
    from gnorm_kernels.models import load_model

    _check(args)
    # the output folder is checked before any work
    with OutputFolder(args.out, force=args.force) if args.out is not None else nullcontext() as out:
        progress = not args.quiet
        teacher, tokenizer = load_model(args.model, device=args.device, progress=progress)
        task = load_task(args.task)
        if task.num_labels != teacher.config.num_labels:
            raise ValueError(f"task {task.name!r} has {task.num_labels} labels, the model {teacher.config.num_labels}")
        train = task.batches(
            "train", tokenizer, batch_size=args.batch_size, max_length=args.max_length,
            shuffle=True, seed=args.seed, group_by_length=True, limit=args.train_size,
        )
        test = task.batches("test", tokenizer, batch_size=256, max_length=args.max_length, limit=args.eval_size)
        timing = task.batches("test", tokenizer, batch_size=32, max_length=args.max_length, limit=4 * 32)
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
            latency_batches=timing,
            seed=args.seed,
            progress=progress,
        )
        result = report.to_dict()
        result.update(model=str(args.model), task=task.name, batch_size=args.batch_size)
        if out is not None:
            save_grain(model, out.path("model"), tokenizer)
            out.path("report.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "structure"}, indent=2))
    else:
        print(report)
        print(report.structure.describe())
        if out is not None:
            print(f"saved to {Path(args.out) / 'model'} (reload with gnorm_kernels.load_model or gnorm_kernels.grain.load_grain)")
    return 0
