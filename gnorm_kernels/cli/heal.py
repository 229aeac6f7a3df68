"""`gnorm heal`: distil the unpruned model into a pruned one (`gnorm_kernels.healing.heal`).

    gnorm heal --model runs/prune/model --teacher tiny-lm --task synthetic-lm --steps 200 --out runs/heal

Writes the healed model (model/, a `save_pruned` checkpoint) and report.json / report.md: the
metrics of the pruned model before and after healing and of the teacher, on held-out test
examples (perplexity for a causal LM, with accuracy where the task has labels). The run's state
is kept in the partial output folder every --save-every steps, so a killed run carries on with
--resume, as `gnorm prune` does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gnorm_kernels.cli.outputs import CLIError

__all__ = ["add_heal", "run_heal"]

STATE = "heal_state.pt"


def add_heal(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "heal", help="distil the unpruned model into a pruned one; report the metric before and after",
        description="Train a pruned model (--model, a folder written by gnorm prune or save_pruned) to give the "
                    "unpruned model's (--teacher) next-token distribution (a classifier: its logits) on the task's "
                    "calibration examples; write model/, report.json and report.md into --out.",
    )
    p.add_argument("--model", required=True, help="the pruned model: a checkpoint folder")
    p.add_argument("--teacher", required=True, help='the unpruned model: "tiny", "tiny-lm", a hub id or a folder')
    p.add_argument("--task", default="synthetic", help='the text to distil on: "synthetic", "synthetic-lm", '
                   "glue/<task>, or a csv/tsv/jsonl file")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps (default 200)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of both models (default 1)")
    p.add_argument("--hidden-weight", type=float, default=0.0,
                   help="weight of GRAIN's hidden-state MSE beside the logits loss (default 0: logits only)")
    p.add_argument("--calib-size", type=int, default=512, help="calibration examples distilled on (default 512)")
    p.add_argument("--eval-size", type=int, default=500, help="test examples evaluated before and after (default 500)")
    p.add_argument("--batch-size", type=int, default=16, help="distillation batch size (default 16)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per example (default 128 or the model's)")
    p.add_argument("--save-every", type=int, default=50, help="keep the state every N steps for --resume (default 50)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, type=Path, help="output folder (must be new or empty, unless --force)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out once this run has finished")
    p.add_argument("--resume", action="store_true", help="continue the run that was killed while writing --out")
    p.set_defaults(handler=run_heal, tokenizer=None, new_head=False)


def _check(args: argparse.Namespace) -> None:
    for name in ("steps", "calib_size", "eval_size", "batch_size", "max_length", "save_every"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "steps" else 1):
            raise CLIError(f"--{name.replace('_', '-')} must be >= {0 if name == 'steps' else 1}, got {value}")
    if not (args.lr > 0 and args.temperature > 0 and args.hidden_weight >= 0):
        raise CLIError(f"expected --lr > 0, --temperature > 0, --hidden-weight >= 0; got {args.lr}, "
                       f"{args.temperature}, {args.hidden_weight}")
    if not Path(args.model).is_dir():
        raise CLIError(f"--model {args.model} is not a folder; expected a pruned checkpoint (gnorm prune's model/)")


def _metrics(model: Any, batches: list) -> dict[str, float]:
    from gnorm_kernels.evaluation import evaluate
    from gnorm_kernels.heads.families import is_causal_lm

    labelled = all("labels" in b for b in batches)
    metric = "accuracy" if labelled or not is_causal_lm(model) else "perplexity"
    return {k: float(v) for k, v in evaluate(model, batches, metric=metric).items()
            if k in ("accuracy", "perplexity", "token_loss")}


def run_heal(args: argparse.Namespace) -> int:
    from gnorm_kernels.checkpoints.pruned import save_pruned
    from gnorm_kernels.cli.load import load_inputs, note
    from gnorm_kernels.cli.outputs import OutputFolder
    from gnorm_kernels.engine.resume import ResumeMismatch
    from gnorm_kernels.healing import heal
    from gnorm_kernels.models.loading import load_model
    from gnorm_kernels.parallel.distributed import is_distributed

    _check(args)
    if is_distributed():
        raise CLIError("gnorm heal runs in one process; start it without torchrun")
    with OutputFolder(args.out, force=args.force, resume=args.resume, command="heal") as folder:
        student, tokenizer, _, calibration, evaluation = load_inputs(args)
        teacher, _ = load_model(args.teacher, device=args.device, progress=not args.quiet)
        for key in ("vocab_size", "hidden_size"):
            mine, theirs = getattr(student.config, key, None), getattr(teacher.config, key, None)
            if mine != theirs:
                raise CLIError(f"--teacher {args.teacher} has {key}={theirs}, the pruned model {mine}: "
                               "expected the model it was pruned from")
        state = folder.path(STATE)
        if folder.resumed and state.is_file():
            note(f"resuming the healing run kept in {state}")
        before, teacher_metrics = _metrics(student, evaluation), _metrics(teacher, evaluation)
        try:
            heal(student, teacher, calibration, steps=args.steps, lr=args.lr, temperature=args.temperature,
                 hidden_weight=args.hidden_weight, checkpoint=state, save_every=args.save_every,
                 progress=not args.quiet)
        except ResumeMismatch as err:
            raise CLIError(f"--resume: {state} is from a different run ({'; '.join(err.differences)}); "
                           "rerun with the same settings, or pass --force without --resume") from None
        after = _metrics(student, evaluation)
        report = {"model": str(args.model), "teacher": str(args.teacher), "task": str(args.task),
                  "steps": args.steps, "lr": args.lr, "temperature": args.temperature,
                  "hidden_weight": args.hidden_weight, "calibration_batches": len(calibration),
                  "evaluation_examples": sum(len(b["input_ids"]) for b in evaluation),
                  "before": before, "after": after, "teacher_metrics": teacher_metrics}
        save_pruned(student, folder.path("model"), tokenizer=tokenizer)
        folder.path("report.json").write_text(json.dumps(report, indent=2) + "\n")
        lines = [f"# heal: {args.model} from {args.teacher} on {args.task}, {args.steps} steps", "",
                 "| metric | pruned | healed | teacher |", "|---|---|---|---|"]
        lines += [f"| {k} | {before[k]:.4f} | {after[k]:.4f} | {teacher_metrics.get(k, float('nan')):.4f} |"
                  for k in before]
        folder.path("report.md").write_text("\n".join(lines) + "\n")
        state.unlink(missing_ok=True)
    for key in before:
        print(f"{key}: {before[key]:.4f} -> {after[key]:.4f} (teacher {teacher_metrics.get(key, float('nan')):.4f})")
    print(f"wrote {folder.out}/: model/, report.json, report.md")
    return 0
