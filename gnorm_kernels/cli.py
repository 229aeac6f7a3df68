"""The `gnorm` command line.

    gnorm prune   --model tiny --task synthetic --method greedy-gnorm --ratio 0.5 --out runs/prune
    gnorm compare --model tiny --task synthetic --methods greedy-gnorm,entropy,random --out runs/cmp
    gnorm ablate  --model tiny --task synthetic

Output folders are written into a temporary folder beside `--out` and moved into place only when
the run has finished, so a failed or interrupted run leaves nothing half-written and never
touches an earlier run's files. An existing non-empty `--out` is refused unless `--force` is
given, in which case it is replaced once the new run is complete.

Other parts of the package add subcommands as modules defining ``add_parser(subparsers)`` and
``run(args) -> int`` (listed in `PLUGINS`); a module is imported when its command is used, and
an import error there is an error, never skipped.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["main", "build_parser", "PLUGINS", "OutputFolder", "comparison_table"]

# command -> (module, one-line help shown before the module is imported)
PLUGINS: dict[str, tuple[str, str]] = {
    "grain": ("gnorm_kernels.grain.cli", "GRAIN: prune attention and FFN units with distillation, then shrink"),
}

TABLE_FRACTIONS = (0.25, 0.5, 0.75)


class CLIError(Exception):
    """Bad input on the command line: reported as ``gnorm: error: ...`` with exit status 2."""


# --------------------------------------------------------------------------- output folders


class OutputFolder:
    """A run's output folder, built in a temporary sibling folder and moved into place at the end.

    Checks happen on construction, before any work: `out` must not be a file, must be empty or
    absent unless `force`, and its parent must be writable.
    """

    def __init__(self, out: str | Path, *, force: bool = False):
        self.out = Path(out)
        self.force = force
        if self.out.exists() and not self.out.is_dir():
            raise CLIError(f"--out {self.out} is a file; expected a folder for the run's outputs")
        if self.out.is_dir() and any(self.out.iterdir()) and not force:
            raise CLIError(
                f"--out {self.out} already holds files (an earlier run?); choose another folder "
                "or pass --force to replace it when this run finishes"
            )
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(self.tmp, 0o777 & ~mask)  # mkdtemp makes it private; the run's folder should not be
        except OSError as err:
            raise CLIError(f"cannot write beside --out {self.out}: {err}") from None

    def path(self, *parts: str) -> Path:
        """Where to write a file of this run (inside the temporary folder until `commit`)."""
        target = self.tmp.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def commit(self) -> Path:
        """Move the finished run into `out` (replacing an earlier one only with `force`)."""
        old = None
        if self.out.exists():
            if any(self.out.iterdir()) and not self.force:  # appeared while we ran
                raise CLIError(f"--out {self.out} filled up while this run was going; outputs left in {self.tmp}")
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
            self.out.rename(old / "run")
        self.tmp.rename(self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------- shared pieces


def _add_data_args(p: argparse.ArgumentParser, *, eval_size: int | None = None) -> None:
    p.add_argument("--model", default="tiny", help='"tiny" (trained here on first use), a hub id, or a local folder')
    p.add_argument("--task", default="synthetic", help='"synthetic" (offline default), glue/<task>, or a csv/tsv/jsonl file')
    p.add_argument("--calib-size", type=int, default=256, help="calibration examples used for scoring (default 256)")
    p.add_argument("--eval-size", type=int, default=eval_size,
                   help=f"test examples used for evaluation (default: {eval_size or 'the whole test split'})")
    p.add_argument("--batch-size", type=int, default=32, help="calibration batch size (default 32, as the authors use)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per example (default 128)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_pruning_args(p: argparse.ArgumentParser, *, default_ratio: float | None) -> None:
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--ratio", type=float, default=None,
                        help=f"fraction of heads to prune, in [0, 1] (default {default_ratio})")
    budget.add_argument("--steps", type=int, default=None, help="number of pruning steps instead of a ratio")
    p.add_argument("--heads-per-step", type=int, default=1, help="heads removed per step (default 1)")
    p.add_argument("--min-heads-per-layer", type=int, default=0, help="never prune a layer below this (default 0)")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every N steps (default 1; the last step always)")
    p.add_argument("--objective", default="logits_norm", choices=("logits_norm", "loss"),
                   help="what Gnorm differentiates (default logits_norm: no labels needed)")
    p.add_argument("--aggregation", default="per_batch", choices=("per_batch", "per_example", "accumulated"),
                   help="how Gnorm averages gradient norms over the calibration set (default per_batch)")
    p.add_argument("--metric", default="accuracy", choices=("accuracy", "f1", "matthews"),
                   help="metric of the curve and the table (default accuracy)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline (default 0)")
    p.add_argument("--out", required=True, type=Path, help="output folder (must be new or empty, unless --force)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out once this run has finished")
    p.set_defaults(default_ratio=default_ratio)


def _check_args(args: argparse.Namespace) -> None:
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


def _check_methods(names: Sequence[str]) -> list[str]:
    from gnorm_kernels.scores import METHODS

    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise CLIError(f"unknown method(s) {unknown or names}; expected some of: {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise CLIError(f"a method is listed twice in {names}")
    return names


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any, list, list]:
    """(model, tokenizer, task, calibration batches, evaluation batches)."""
    from gnorm_kernels.data import load_task
    from gnorm_kernels.models import load_model

    progress = not args.quiet
    # only the calibration and test splits are used here; the synthetic generator draws those
    # first, so a one-example train split leaves them unchanged and saves generating 40k texts
    options = {"train_size": 1} if str(args.task) == "synthetic" else {}
    task = load_task(args.task, **options)
    model, tokenizer = load_model(args.model, num_labels=task.num_labels, device=args.device, progress=progress)
    calibration = task.batches("calibration", tokenizer, batch_size=args.batch_size,
                               limit=args.calib_size, max_length=args.max_length)
    # evaluation order does not matter: batches of similar lengths pad less and run about twice as fast
    evaluation = task.batches("test", tokenizer, batch_size=256, limit=args.eval_size, max_length=args.max_length,
                              group_by_length=True)
    available = len(task.splits["calibration"])
    if available < args.calib_size:
        print(f"note: the calibration split has {available} examples; using all of them", file=sys.stderr)
    return model, tokenizer, task, calibration, evaluation


def _driver_options(args: argparse.Namespace) -> dict[str, Any]:
    ratio = args.ratio
    if ratio is None and args.steps is None:
        ratio = args.default_ratio
    return dict(
        ratio=ratio, steps=args.steps, heads_per_step=args.heads_per_step,
        min_heads_per_layer=args.min_heads_per_layer, eval_every=args.eval_every,
        progress=not args.quiet,
    )


def _scorer_options(method: str, args: argparse.Namespace) -> dict[str, Any]:
    from gnorm_kernels.scores import get_method

    scorer = get_method(method).scorer
    if scorer == "gnorm":
        return {"objective": args.objective, "aggregation": args.aggregation}
    return {}


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- prune


def _add_prune(sub: argparse._SubParsersAction) -> None:
    from gnorm_kernels.scores import METHODS

    p = sub.add_parser(
        "prune", help="prune attention heads with one method; save the trajectory, plots and the pruned model",
        description="Prune heads with one method and write trajectory.json, accuracy.png, mask.png and the "
                    "pruned model (model/, load it with gnorm_kernels.load_pruned) into --out.",
    )
    _add_data_args(p)
    p.add_argument("--method", default="greedy-gnorm", help=f"one of: {', '.join(METHODS)} (default greedy-gnorm)")
    _add_pruning_args(p, default_ratio=0.5)
    p.set_defaults(handler=_run_prune)


def _run_prune(args: argparse.Namespace) -> int:
    import copy

    from gnorm_kernels.evaluate import parameter_count
    from gnorm_kernels.greedy import run_method
    from gnorm_kernels.pruning import prune_heads, save_pruned
    from gnorm_kernels.viz import plot_accuracy_curves, plot_head_grid

    _check_args(args)
    (method,) = _check_methods([args.method])
    folder = OutputFolder(args.out, force=args.force)
    try:
        model, tokenizer, task, calibration, evaluation = _load(args)
        trajectory = run_method(
            method, model, calibration, evaluation, seed=args.seed, metric=args.metric,
            scorer_options=_scorer_options(method, args), checkpoint=folder.path("trajectory.json"),
            **_driver_options(args),
        )
        trajectory.settings.update(model=str(args.model), task=str(args.task))
        trajectory.save(folder.path("trajectory.json"))
        last = len(trajectory.steps) - 1
        _save_figure(plot_accuracy_curves(trajectory, metric=args.metric,
                                          title=f"{method} on {args.task}: {args.metric} as heads are pruned"),
                     folder.path("accuracy.png"))
        final_mask = trajectory.mask_at(steps=last)
        _save_figure(plot_head_grid(final_mask, kind="mask",
                                    title=f"{method}: {int(final_mask.sum())} of {final_mask.numel()} heads kept"),
                     folder.path("mask.png"))
        pruned = prune_heads(copy.deepcopy(model), trajectory.pruned_heads_at(steps=last))
        save_pruned(pruned, folder.path("model"), tokenizer=tokenizer)
        out = folder.commit()
    except BaseException:
        folder.discard()
        raise
    first, final = trajectory.steps[0], trajectory.steps[-1]
    print(f"{method}: pruned {len(trajectory.order)} of {trajectory.num_heads_start} heads in {last} steps")
    if first.metrics is not None and final.metrics is not None:
        print(f"{args.metric}: {first.metrics[args.metric]:.4f} -> {final.metrics[args.metric]:.4f}")
    print(f"parameters: {parameter_count(model):,} -> {final.params:,}")
    print(f"wrote {out}/: trajectory.json, accuracy.png, mask.png, model/")
    return 0


# --------------------------------------------------------------------------- compare


def comparison_table(runs: dict[str, list], *, metric: str = "accuracy",
                     fractions: Sequence[float] = TABLE_FRACTIONS) -> list[dict[str, Any]]:
    """One row per method: `metric` unpruned, at each fraction of heads pruned, and the area under
    the curve (its mean over the fraction range covered). Methods with several runs give the
    median, with the lowest and highest runs in `<column>_min` / `<column>_max`."""
    import numpy as np

    rows = []
    for name, trajectories in runs.items():
        columns: dict[str, list[float]] = {"unpruned": [], **{f"at_{round(f * 100)}%": [] for f in fractions}, "auc": []}
        for t in trajectories:
            columns["unpruned"].append(t.metric_at(0.0, metric))
            for f in fractions:
                columns[f"at_{round(f * 100)}%"].append(t.metric_at(f, metric))
            columns["auc"].append(t.area_under_curve(metric))
        row: dict[str, Any] = {"method": name, "runs": len(trajectories)}
        for key, values in columns.items():
            values = np.asarray(values, dtype=float)
            row[key] = float(np.median(values))
            if len(values) > 1:
                row[f"{key}_min"] = float(values.min())
                row[f"{key}_max"] = float(values.max())
        rows.append(row)
    return rows


def _markdown(rows: list[dict[str, Any]], metric: str) -> str:
    keys = [k for k in rows[0] if k not in ("method", "runs") and not k.endswith(("_min", "_max"))]
    header = ["method", *[f"{metric} {k.replace('_', ' ')}" if k != "auc" else "AUC" for k in keys]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(keys)) + "|"]
    for row in rows:
        cells = [row["method"] + (f" (median of {row['runs']})" if row["runs"] > 1 else "")]
        for k in keys:
            value = row[k]
            text = "n/a" if value != value else f"{value:.4f}"
            if f"{k}_min" in row and value == value:
                text += f" [{row[f'{k}_min']:.3f}, {row[f'{k}_max']:.3f}]"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    import csv

    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in fields})


def _add_compare(sub: argparse._SubParsersAction) -> None:
    from gnorm_kernels.scores import METHODS

    p = sub.add_parser(
        "compare", help="run several pruning methods and compare their accuracy curves",
        description="Run several methods on one model and task; write one overlaid accuracy plot "
                    "(accuracy.png), a table (table.md, table.csv: accuracy at 25/50/75% of heads pruned "
                    "and the area under each curve), the kept masks at 50% (masks.png) and every "
                    "trajectory (trajectories/) into --out.",
    )
    # every method is evaluated after every step: a smaller default test set keeps the demo short
    _add_data_args(p, eval_size=500)
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated, from: {', '.join(METHODS)} (default: all)")
    p.add_argument("--random-seeds", type=int, default=5, help="runs of the random baseline (seeds seed..seed+N-1; default 5)")
    _add_pruning_args(p, default_ratio=1.0)
    p.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from gnorm_kernels.greedy import run_method
    from gnorm_kernels.scores import get_method
    from gnorm_kernels.viz import plot_accuracy_curves

    _check_args(args)
    methods = _check_methods(args.methods.split(","))
    if args.random_seeds < 1:
        raise CLIError(f"--random-seeds must be >= 1, got {args.random_seeds}")
    folder = OutputFolder(args.out, force=args.force)
    try:
        model, tokenizer, task, calibration, evaluation = _load(args)
        jobs = [(m, s) for m in methods
                for s in (range(args.seed, args.seed + args.random_seeds) if get_method(m).seeded else [args.seed])]
        runs: dict[str, list] = {}
        for i, (method, seed) in enumerate(jobs, 1):
            label = method + (f" (seed {seed})" if get_method(method).seeded else "")
            print(f"[{i}/{len(jobs)}] {label}", file=sys.stderr, flush=True)
            name = f"{method}-seed{seed}" if get_method(method).seeded else method
            trajectory = run_method(
                method, model, calibration, evaluation, seed=seed, metric=args.metric,
                scorer_options=_scorer_options(method, args),
                checkpoint=folder.path("trajectories", f"{name}.json"), **_driver_options(args),
            )
            trajectory.settings.update(model=str(args.model), task=str(args.task), seed=seed)
            trajectory.save(folder.path("trajectories", f"{name}.json"))
            runs.setdefault(method, []).append(trajectory)
        rows = comparison_table(runs, metric=args.metric)
        table = _markdown(rows, args.metric)
        folder.path("table.md").write_text(table)
        _write_csv(rows, folder.path("table.csv"))
        _save_figure(plot_accuracy_curves(runs, metric=args.metric,
                                          title=f"{args.task}: {args.metric} as heads are pruned"),
                     folder.path("accuracy.png"))
        _save_masks(runs, folder.path("masks.png"))
        out = folder.commit()
    except BaseException:
        folder.discard()
        raise
    print(table, end="")
    print(f"wrote {out}/: table.md, table.csv, accuracy.png, masks.png, trajectories/")
    return 0


def _save_masks(runs: dict[str, list], path: Path, ratio: float = 0.5) -> None:
    import math

    import matplotlib.pyplot as plt

    from gnorm_kernels.viz import plot_head_grid

    usable = {m: ts[0] for m, ts in runs.items() if len(ts[0].order) >= round(ratio * ts[0].num_heads_start)}
    if not usable:
        return
    cols = min(4, len(usable))
    rows = math.ceil(len(usable) / cols)
    first = next(iter(usable.values()))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 0.5 + (0.35 * first.num_layers + 0.9) * rows),
                             layout="constrained", squeeze=False)
    for ax, (method, t) in zip(axes.flat, usable.items()):
        plot_head_grid(t.mask_at(ratio), kind="mask", ax=ax, title=method, annotate=False)
    for ax in list(axes.flat)[len(usable):]:
        ax.set_visible(False)
    fig.suptitle(f"heads kept at {round(ratio * 100)}% pruned (blue: kept)")
    _save_figure(fig, path)


# --------------------------------------------------------------------------- ablate


def _add_ablate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate", help="print the accuracy drop when each head alone is masked",
        description="Single-head ablation: mask each head in turn and print the drop in the metric "
                    "as a layers x heads table (in points); --out also writes ablation.csv and ablation.png.",
    )
    _add_data_args(p)
    p.add_argument("--metric", default="accuracy", choices=("accuracy", "f1", "matthews"))
    p.add_argument("--out", type=Path, default=None, help="also write ablation.csv and ablation.png here")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out once this run has finished")
    p.set_defaults(handler=_run_ablate)


def _run_ablate(args: argparse.Namespace) -> int:
    from gnorm_kernels.evaluate import evaluate, single_head_ablation
    from gnorm_kernels.viz import plot_head_grid

    _check_args(args)
    folder = OutputFolder(args.out, force=args.force) if args.out is not None else None
    try:
        model, tokenizer, task, calibration, evaluation = _load(args)
        base = evaluate(model, evaluation, metric=args.metric)[args.metric]
        drops = single_head_ablation(model, evaluation, metric=args.metric, progress=not args.quiet)
        L, H = drops.shape
        lines = [f"{args.metric} {base:.4f} with every head; drop in points when one head is masked "
                 "(positive: worse without it)",
                 "layer " + "".join(f"{f'h{h}':>8}" for h in range(H))]
        for l in range(L):
            lines.append(f"{l:>5} " + "".join("     n/a" if v != v else f"{100 * v:8.2f}" for v in drops[l].tolist()))
        text = "\n".join(lines) + "\n"
        if folder is not None:
            with open(folder.path("ablation.csv"), "w") as f:
                f.write("layer," + ",".join(f"head{h}" for h in range(H)) + "\n")
                for l in range(L):
                    f.write(f"{l}," + ",".join("" if v != v else f"{v:.6f}" for v in drops[l].tolist()) + "\n")
            _save_figure(plot_head_grid(drops, kind="ablation", title=f"{args.metric} drop when one head is masked"),
                         folder.path("ablation.png"))
            folder.commit()
    except BaseException:
        if folder is not None:
            folder.discard()
        raise
    print(text, end="")
    return 0


# --------------------------------------------------------------------------- entry point


def _command(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The `gnorm` parser; the plugin whose command appears in `argv` is imported and built."""
    from gnorm_kernels import __version__

    parser = argparse.ArgumentParser(
        prog="gnorm", description="Gradient-norm attention-head pruning for BERT-family transformers."
    )
    parser.add_argument("--version", action="version", version=f"gnorm-kernels {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_prune(sub)
    _add_compare(sub)
    _add_ablate(sub)
    command = _command(argv)
    for name, (module_name, summary) in PLUGINS.items():
        if command != name:
            sub.add_parser(name, help=summary, add_help=False)
            continue
        module = importlib.import_module(module_name)
        before = set(sub.choices)
        module.add_parser(sub)
        if name not in set(sub.choices) - before:
            raise RuntimeError(f"{module_name}.add_parser did not add the {name!r} command")
        sub.choices[name].set_defaults(handler=module.run)
    return parser


@contextmanager
def _exit_cleanly_on_sigterm() -> Iterator[None]:
    """Inside the block SIGTERM raises SystemExit, so a killed run still removes its temporary
    output folder; the previous handler is restored on exit."""
    import signal
    import threading

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    install = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, handler) if install else None
    try:
        yield
    finally:
        if install:
            signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `gnorm` with `argv` (default: the process arguments); returns the exit status."""
    from gnorm_kernels.scores import NonFiniteGradientError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        with _exit_cleanly_on_sigterm():
            return int(args.handler(args) or 0)
    except CLIError as err:
        parser.exit(2, f"gnorm {args.command}: error: {err}\n")
    except (ValueError, OSError, NonFiniteGradientError) as err:
        parser.exit(1, f"gnorm {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"gnorm {args.command}: interrupted; earlier outputs untouched\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
