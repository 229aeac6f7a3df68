"""The `gnorm` command line.

    gnorm prune   --model tiny --task synthetic --method greedy-gnorm --ratio 0.5 --out runs/prune
    gnorm compare --model tiny --task synthetic --methods greedy-gnorm,entropy,random --out runs/cmp
    gnorm ablate  --model tiny --task synthetic
    gnorm grain   --density 0.2 --out runs/grain

Building the parser imports neither torch nor the rest of the package, so `gnorm --help` and
`gnorm <command> --help` answer at once; a command imports what it needs when it runs (GRAIN's
runner is `gnorm_kernels.cli.grain.run`).

Output folders are written into `.NAME.partial` beside `--out` and moved into place only when
the run has finished (`gnorm_kernels.cli.outputs.OutputFolder`), so a failed run leaves nothing
half-written and never touches an earlier run's files. An existing non-empty `--out` is
refused unless `--force` is given, in which case it is replaced once the new run is complete.
One run writes a folder at a time (a lock beside it); `prune` and `compare --resume` carry on a run
stopped by Ctrl-C or SIGTERM (its partial folder is kept and the command to continue printed;
exit status 130 or 143) or killed outright (SIGKILL, power loss) to the end an uninterrupted run
reaches.

Under ``torchrun --nproc-per-node N -m gnorm_kernels.cli.commands ...`` prune, compare and ablate split their batches
across the processes and rank 0 writes the folder (`gnorm_kernels.parallel.distributed`); `--fsdp` shards the model.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

from gnorm_kernels.cli.grain import add_grain_command
from gnorm_kernels.cli.heal import add_heal
from gnorm_kernels.cli.interrupts import interruption, stop_like_ctrl_c_on_sigterm
from gnorm_kernels.cli.outputs import CLIError, OutputFolder
from gnorm_kernels.extras import MissingExtra, require_extra

__all__ = ["main", "build_parser", "METHOD_NAMES"]

# The names of gnorm_kernels.scoring.registry.METHODS, in its order, for the help text: that table lives
# beside the scorers, which import torch (tests/test_cli.py holds the two lists together).
METHOD_NAMES = ("greedy-gnorm", "static-gnorm", "inverse-gnorm", "entropy", "inverse-entropy", "taylor", "random")

PRESET_DATA, DATA_DEFAULTS = {"authors": (1000, 128)}, (256, 32)  # presets.PRESETS: (calibration examples, batch)


# --------------------------------------------------------------------------- shared pieces


def _add_data_args(p: argparse.ArgumentParser, *, eval_size: int | None = None) -> None:
    p.add_argument("--model", default="tiny", help='"tiny" or "tiny-aspects" (shipped with the package), smollm2-135m'
                   ', a .gguf file, a hub id, or a local folder')
    p.add_argument("--task", default=None, help='"synthetic", "aspects", "synthetic-lm", glue/<task>, python-docs, a '
                   'csv/tsv/jsonl or a .txt file (default: the task the offline model was trained on, "synthetic" otherwise)')
    p.add_argument("--calib-data", type=Path, help="instead of --task: a csv/tsv/jsonl/txt file to calibrate on ...")
    p.add_argument("--eval-data", type=Path, help="... and one to evaluate on, every row (e.g. GLUE train.tsv, dev.tsv)")
    p.add_argument("--calib-size", type=int, help="calibration examples used for scoring (default 256; authors: 1000)")
    p.add_argument("--eval-size", type=int, help=f"test examples used for evaluation (default: "
                   f"{eval_size or 'the whole test split'}; every row of --eval-data)")
    p.add_argument("--batch-size", type=int, help="calibration batch size (default 32, as the authors use; authors: 128)")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per example (default 128, or the model's positions if fewer; never more than those)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or hub id (default: the model's own)")
    p.add_argument("--new-head", action="store_true",
                   help="give the model a new, untrained classifier when its class count differs from the task's")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(default_eval_size=eval_size)


def _add_pruning_args(p: argparse.ArgumentParser, *, default_ratio: float | None) -> None:
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--ratio", type=float, default=None,
                        help=f"fraction of heads to prune, in [0, 1] (default {default_ratio})")
    budget.add_argument("--steps", type=int, default=None, help="number of pruning steps instead of a ratio")
    p.add_argument("--heads-per-step", type=int, default=1, help="heads removed per step (default 1)")
    p.add_argument("--min-heads-per-layer", type=int, default=0, help="never prune a layer below this (default 0)")
    p.add_argument("--unit", default="head", choices=("head", "kv_group"),
                   help="what is ranked and removed: a query head, or a key/value group with all its query "
                        "heads (grouped-query decoders; shrinks the KV cache) (default head)")
    p.add_argument("--uniform", action="store_true", help="prune every layer (key/value group) alike, one unit each "
                   "per step: Llama/Qwen2/Mistral then save as standard configs; --ratio rounds down to whole steps")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every N steps (default 1; the last step always)")
    p.add_argument("--objective", default="logits_norm", choices=("logits_norm", "loss"),
                   help="what Gnorm differentiates (default logits_norm: no labels needed)")
    p.add_argument("--aggregation", default="per_batch", choices=("per_batch", "per_example", "accumulated"),
                   help="how Gnorm averages gradient norms over the calibration set (default per_batch)")
    p.add_argument("--metric", default=None, choices=("accuracy", "f1", "matthews", "perplexity"),
                   help="metric of the curve and the table (default accuracy; perplexity for a text-only task)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline (default 0)")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the model with FSDP2 (every process sees every batch)")
    p.add_argument("--preset", choices=tuple(PRESET_DATA), help="authors: their revised code (gnorm_kernels.scoring.presets)")
    p.add_argument("--out", required=True, type=Path, help="output folder (must be new or empty, unless --force)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out once this run has finished")
    p.add_argument("--resume", action="store_true",
                   help="continue the run that was stopped (Ctrl-C, SIGTERM) or killed while writing --out, "
                        "from its last finished step")
    p.set_defaults(default_ratio=default_ratio)


# the task each offline model was trained on: what --task defaults to for it
DEFAULT_TASKS = {"tiny": "synthetic", "tiny-aspects": "aspects", "tiny-lm": "synthetic-lm"}


def _check_args(args: argparse.Namespace) -> None:
    require_extra("plots", "figures")  # before any work, not after it
    for name, default in zip(("calib_size", "batch_size"), PRESET_DATA.get(getattr(args, "preset", None), DATA_DEFAULTS)):
        setattr(args, name, default if getattr(args, name) is None else getattr(args, name))  # flags left unset
    if args.eval_size is None and args.eval_data is None:  # --eval-data: every row unless told otherwise
        args.eval_size = args.default_eval_size
    if (args.calib_data is None) != (args.eval_data is None) or (args.calib_data and args.task is not None):
        raise CLIError("--calib-data and --eval-data go together, instead of --task: give both files, or --task")
    if args.task is None and args.calib_data is None:
        args.task = DEFAULT_TASKS.get(str(args.model), "synthetic")
    for name in ("calib_size", "batch_size", "max_length", "heads_per_step", "eval_every"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if getattr(args, "eval_size", None) is not None and args.eval_size < 1:
        raise CLIError(f"--eval-size must be >= 1, got {args.eval_size}")
    if getattr(args, "min_heads_per_layer", 0) < 0:
        raise CLIError(f"--min-heads-per-layer must be >= 0, got {args.min_heads_per_layer}")
    ratio = getattr(args, "ratio", None)
    if ratio is not None and not 0.0 <= ratio <= 1.0:
        raise CLIError(f"--ratio must be in [0, 1] (the fraction of heads to prune), got {ratio}")
    steps = getattr(args, "steps", None)
    if steps is not None and steps < 0:
        raise CLIError(f"--steps must be >= 0, got {steps}")
    from gnorm_kernels.parallel.distributed import is_initialised
    if getattr(args, "fsdp", False) and not is_initialised():
        raise CLIError("--fsdp shards the model across processes: start the command with "
                       "torchrun --nproc-per-node N -m gnorm_kernels.cli.commands ...")


def _output_folder(args: argparse.Namespace) -> OutputFolder:
    from gnorm_kernels.cli.outputs import output_folder

    return output_folder(args.out, force=args.force, resume=getattr(args, "resume", None), command=args.command)


def _check_methods(names: Sequence[str]) -> list[str]:
    from gnorm_kernels.scoring.registry import METHODS

    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise CLIError(f"unknown method(s) {unknown or names}; expected some of: {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise CLIError(f"a method is listed twice in {names}")
    return names


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any, list, list]:
    """(model, tokenizer, task, calibration batches, evaluation batches), checked to agree before
    any work (`gnorm_kernels.cli.load.load_inputs`)."""
    from gnorm_kernels.cli.load import load_inputs

    return load_inputs(args)


def _driver_options(args: argparse.Namespace) -> dict[str, Any]:
    ratio = args.default_ratio if args.ratio is None and args.steps is None else args.ratio
    return dict(
        ratio=ratio, steps=args.steps, heads_per_step=args.heads_per_step,
        min_heads_per_layer=args.min_heads_per_layer, eval_every=args.eval_every, unit=args.unit,
        progress=not args.quiet, uniform=args.uniform)


def _run_method(method: str, model: Any, calibration: list, evaluation: list, args: argparse.Namespace,
                folder: OutputFolder, path: Path, seed: int, **options: Any) -> Any:
    """`run_method` checkpointed at `path`, resumed as `gnorm_kernels.cli.load.checkpointed` says."""
    from gnorm_kernels.cli.load import checkpointed
    from gnorm_kernels.engine import driver as greedy

    with checkpointed(folder, path):
        return greedy.run_method(
            method, model, calibration, evaluation, seed=seed, metric=args.metric,
            scorer_options=_scorer_options(method, args), checkpoint=path, **options, **_driver_options(args),
        )


def _scorer_options(method: str, args: argparse.Namespace) -> dict[str, Any]:
    from gnorm_kernels.scoring.registry import get_method

    if get_method(method).scorer == "gnorm":
        return {"objective": args.objective, "aggregation": args.aggregation}
    return {}


# --------------------------------------------------------------------------- prune


def _add_prune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune", help="prune attention heads with one method; save the trajectory, plots and the pruned model",
        description="Prune heads with one method and write trajectory.json, accuracy.png, mask.png and the "
                    "pruned model (model/, load it with gnorm_kernels.load_pruned) into --out.",
    )
    _add_data_args(p)
    p.add_argument("--method", default="greedy-gnorm", help=f"one of: {', '.join(METHOD_NAMES)} (default greedy-gnorm)")
    _add_pruning_args(p, default_ratio=0.5)
    p.set_defaults(handler=_run_prune)


def _run_prune(args: argparse.Namespace) -> int:
    import shutil

    from gnorm_kernels.checkpoints.pruned import save_pruned
    from gnorm_kernels.evidence.report import save_figure
    from gnorm_kernels.evidence.viz import plot_accuracy_curves, plot_head_grid
    from gnorm_kernels.heads.units import unit_of
    from gnorm_kernels.parallel.distributed import is_main

    _check_args(args)
    (method,) = _check_methods([args.method])
    with _output_folder(args) as folder:
        model, tokenizer, task, calibration, evaluation = _load(args)
        # inplace: `model` ends pruned to the trajectory's last step, ready to be saved
        trajectory = _run_method(method, model, calibration, evaluation, args, folder, folder.path("trajectory.json"),
                                 args.seed, inplace=not args.fsdp, preset=args.preset)
        if is_main():
            shutil.rmtree(folder.path("model"), ignore_errors=True)  # what a killed run began to write
        if args.fsdp:  # every rank takes part in gathering the weights; rank 0 prunes and saves them
            from gnorm_kernels.parallel.fsdp import save_pruned_sharded

            save_pruned_sharded(model, trajectory.pruned_heads_at(steps=len(trajectory.steps) - 1),
                                folder.path("model"), tokenizer=tokenizer)
        if not is_main():
            return 0  # rank 0 writes the outputs
        trajectory.settings.update(model=str(args.model), task=str(args.task), **({"new_head": True} if args.new_head else {}),
                                   **({"preset": args.preset} if args.preset else {}))
        trajectory.save(folder.path("trajectory.json"))
        last = len(trajectory.steps) - 1
        save_figure(plot_accuracy_curves(trajectory, metric=args.metric,
                                         title=f"{method} on {args.task}: {args.metric} as heads are pruned"),
                    folder.path("accuracy.png"))
        final_mask = trajectory.head_mask_at(steps=last)
        save_figure(plot_head_grid(final_mask, kind="mask",
                                   title=f"{method}: {int(final_mask.sum())} of {final_mask.numel()} heads kept"),
                    folder.path("mask.png"))
        if not args.fsdp:
            save_pruned(model, folder.path("model"), tokenizer=tokenizer)
    first, final = trajectory.steps[0], trajectory.steps[-1]
    print(f"{method}: pruned {len(trajectory.order)} of {trajectory.units_at_start} {unit_of(trajectory.unit).words} in {last} steps")
    if first.metrics is not None and final.metrics is not None:
        print(f"{args.metric}: {first.metrics[args.metric]:.4f} -> {final.metrics[args.metric]:.4f}")
    print(f"parameters: {first.params:,} -> {final.params:,}")
    print(f"wrote {folder.out}/: trajectory.json, accuracy.png, mask.png, model/")
    return 0


# --------------------------------------------------------------------------- compare


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="run several pruning methods and compare their accuracy curves",
        description="Run several methods on one model and task; write accuracy curves with 95% bootstrap bands "
                    "(accuracy.png), the metric at 25/50/75% pruned and the AUC (whole run, 0-50%, 0-75%) with 95% "
                    "intervals and differences from --reference (table.md, table.csv), every pairwise difference "
                    "(differences.csv), the masks at 50% (masks.png) and the trajectories (trajectories/) into --out.",
    )
    # every method is evaluated after every step: a smaller default test set keeps the demo short
    _add_data_args(p, eval_size=500)
    p.add_argument("--methods", default=",".join(METHOD_NAMES),
                   help=f"comma-separated, from: {', '.join(METHOD_NAMES)} (default: all)")
    p.add_argument("--random-seeds", type=int, default=5, help="runs of the random baseline (seeds seed..seed+N-1; default 5)")
    p.add_argument("--budgets", nargs="+", type=float, default=[], help="more fractions pruned to report (e.g. 0.1 0.9)")
    p.add_argument("--calib-draws", type=int, default=1, help="run on N disjoint calibration samples (default 1)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--reference", help="the method differences are taken from (default: the first)")
    _add_pruning_args(p, default_ratio=1.0)
    p.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from gnorm_kernels.cli.load import checkpointed
    from gnorm_kernels.evidence.calibration import calibration_draws
    from gnorm_kernels.evidence.comparison import DEFAULT_BUDGETS, compare
    from gnorm_kernels.parallel import distributed

    _check_args(args)
    methods = _check_methods(args.methods.split(","))
    for name in (n for n in ("random_seeds", "calib_draws", "resamples") if getattr(args, n) < 1):
        raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    with _output_folder(args) as folder:
        model, tokenizer, task, calibration, evaluation = _load(args)
        if args.calib_draws > 1:  # disjoint samples, shared out over the ranks as _load shares the first
            calibration = [c if args.fsdp else distributed.shard(c) for c in calibration_draws(task, tokenizer,
                           draws=args.calib_draws, size=args.calib_size, batch_size=args.batch_size,
                           max_length=args.effective_max_length)]
        comparison = compare(
            model, calibration, evaluation, methods=methods, reference=args.reference, metric=args.metric,
            budgets=[*DEFAULT_BUDGETS, *args.budgets], random_seeds=args.random_seeds, seed=args.seed, preset=args.preset,
            scorer_options={m: _scorer_options(m, args) for m in methods}, resamples=args.resamples,
            checkpoint_dir=folder.path("trajectories"), settings=dict(model=str(args.model), task=str(args.task)),
            log=(lambda line: print(line, file=sys.stderr, flush=True)) if distributed.is_main() else None,
            around=lambda path: checkpointed(folder, path), **_driver_options(args),
        )
        if not distributed.is_main():
            return 0  # rank 0 writes the outputs
        comparison.save(folder.path("."), title=f"{args.task}: {args.metric} as heads are pruned")
    print(comparison.markdown() + f"wrote {folder.out}/: table.md, table.csv, differences.csv, accuracy.png, masks.png, trajectories/")
    return 0


# --------------------------------------------------------------------------- ablate


def _add_ablate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate", help="print the accuracy drop when each head alone is masked",
        description="Single-head ablation: mask each head in turn and print the drop in the metric "
                    "as a layers x heads table (in points); --out also writes ablation.csv and ablation.png.",
    )
    _add_data_args(p)
    p.add_argument("--metric", default=None, choices=("accuracy", "f1", "matthews", "perplexity"))
    p.add_argument("--out", type=Path, default=None, help="also write ablation.csv and ablation.png here")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out once this run has finished")
    p.set_defaults(handler=_run_ablate)


def _run_ablate(args: argparse.Namespace) -> int:
    from gnorm_kernels.evaluation import evaluate, single_head_ablation
    from gnorm_kernels.evidence.report import ablation_table, save_figure, write_ablation_csv
    from gnorm_kernels.evidence.viz import plot_head_grid
    from gnorm_kernels.parallel.distributed import is_main

    _check_args(args)
    with _output_folder(args) if args.out is not None else nullcontext() as folder:
        model, tokenizer, task, calibration, evaluation = _load(args)
        base = evaluate(model, evaluation, metric=args.metric)[args.metric]
        drops = single_head_ablation(model, evaluation, metric=args.metric, progress=not args.quiet and is_main())
        if not is_main():
            return 0  # rank 0 writes and prints the table
        text = ablation_table(drops, base, args.metric)
        if folder is not None:
            write_ablation_csv(drops, folder.path("ablation.csv"))
            save_figure(plot_head_grid(drops, kind="ablation", title=f"{args.metric} drop when one head is masked"),
                        folder.path("ablation.png"))
    print(text, end="")
    return 0


# --------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    """The `gnorm` parser, every subcommand included; building it imports nothing heavy."""
    from gnorm_kernels import __version__

    parser = argparse.ArgumentParser(
        prog="gnorm", description="Gradient-norm attention-head pruning for transformer encoders and decoders."
    )
    parser.add_argument("--version", action="version", version=f"gnorm-kernels {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_prune, _add_compare, _add_ablate, add_grain_command, add_heal):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `gnorm` with `argv` (default: the process arguments); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # --help and --version exit here, before anything heavy is imported
    from gnorm_kernels.parallel import distributed

    owned = False  # a process group this call set up (under torchrun), destroyed at the end
    try:
        with stop_like_ctrl_c_on_sigterm():
            owned = not distributed.is_initialised() and distributed.init_from_env(getattr(args, "device", "cpu"))
            return int(args.handler(args) or 0)
    except (CLIError, MissingExtra) as err:
        parser.exit(2, f"gnorm {args.command}: error{distributed.where()}: {err}\n")
    except (ValueError, OSError, FloatingPointError, distributed.DistributedError) as err:  # NaN/inf: named by step
        parser.exit(1, f"gnorm {args.command}: error{distributed.where()}: {err}\n")
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM as `Interrupted`
        parser.exit(*interruption(stop, args.command, argv))
    finally:
        if owned:
            distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
