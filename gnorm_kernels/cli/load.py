"""What a `gnorm` command loads, checked to agree before any work (device, task, model, lengths),
and how its checkpointed runs pick up after a kill.

* `--device` must name a device this machine has;
* the task's labels are numbered as the model's classes (`gnorm_kernels.data.labels.fit_labels`):
  names by name, ids within the model's range; a class-count or name mismatch is an error
  unless `--new-head` gives the model a new, untrained classifier for the task's classes;
* `--max-length` never exceeds the model's position table (`models.max_positions`).

`checkpointed` says where a resumed run picks up and turns a checkpoint of another run
(settings, weights, data) into a command-line error. Notes go to stderr (rank 0 only under torchrun).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from gnorm_kernels.cli.outputs import CLIError, OutputFolder
from gnorm_kernels.data.text import TextTask, is_text_file
from gnorm_kernels.parallel import distributed

__all__ = ["DEFAULT_MAX_LENGTH", "check_device", "check_task_fits", "fit_max_length", "load_model_and_task",
           "load_inputs", "checkpointed"]

DEFAULT_MAX_LENGTH = 128


def note(text: str) -> None:
    if distributed.is_main():
        print(f"note: {text}", file=sys.stderr, flush=True)


def check_device(name: str) -> str:
    """`name` as a torch device this machine has; a clear CLIError otherwise."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise CLIError(f"--device {name!r} is not a torch device ({err}); expected cpu, cuda, cuda:N or mps") from None
    if device.type == "meta":
        raise CLIError("--device meta holds no weights; expected cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise CLIError(f"--device {name}: no CUDA device is available here (torch {torch.__version__}, {build}); "
                           "use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise CLIError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError, AttributeError) as err:
        raise CLIError(f"--device {name} cannot be used here: {err}") from None
    return str(device)


def fit_max_length(requested: int | None, model: Any) -> int:
    """The tokens per example: `requested` (default 128), never past the model's positions."""
    from gnorm_kernels.models.loading import max_positions

    limit = max_positions(model)
    if requested is None:
        return DEFAULT_MAX_LENGTH if limit is None else min(DEFAULT_MAX_LENGTH, limit)
    if limit is not None and requested > limit:
        note(f"--max-length {requested} is more than the model's {limit} positions; using {limit}")
        return limit
    return requested


def _load_task(name: str, options: dict[str, Any]) -> Any:
    """`load_task`, with the data warnings (skipped rows, repeated texts) printed as notes."""
    from gnorm_kernels.data.loading import load_task
    from gnorm_kernels.data.tables import DataWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        task = load_task(name, **options)
    for warning in caught:
        if issubclass(warning.category, DataWarning):
            note(str(warning.message))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return task


def _checkpoint_classes(name: str) -> int | None:
    """How many classes a local checkpoint's classifier has (2 for "tiny" and "tiny-aspects"); None if unknown."""
    if name in ("tiny", "tiny-aspects"):
        return 2
    config = Path(name).expanduser() / "config.json"
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    count = data.get("num_labels") or len(data.get("id2label") or {}) or None
    return int(count) if count else None


def _labels_in_range(task: Any, classes: int) -> None:
    used = sorted({ex.label for split in task.splits.values() for ex in split})
    bad = [i for i in used if not 0 <= i < classes]
    if bad:
        raise CLIError(f"task {task.name!r} has class ids {bad[:10]} outside the model's {classes} classes")


# the tasks whose batches a causal LM can be scored and evaluated on (labels as one-token verdict words)
CAUSAL_LM_TASKS = ('"synthetic-lm" (the film reviews as text, each ending in a verdict word), or text alone, scored by '
                   'perplexity: "python-docs", a .txt file, or a csv/tsv/jsonl file with a text column and no label column')


def _check_fits_causal_lm(task: Any, tokenizer: Any, model: str) -> None:
    """A causal LM reads a labelled task through each class's verdict word: a classification task
    (labels as class ids only) is refused before any work, with the tasks that fit."""
    for split in ("calibration", "test"):
        if task.splits.get(split):
            batch = task.batches(split, tokenizer, batch_size=1, limit=1)[0]
            if "labels" in batch and "label_token_ids" not in batch:
                raise CLIError(
                    f"--task {task.name} is a classification task (labels as class ids), but --model {model} is a "
                    f"causal language model, which is scored and evaluated on text with a verdict word per class; "
                    f"tasks that fit it: {CAUSAL_LM_TASKS}"
                )
            return


def _load_model(args: argparse.Namespace, **options: Any) -> tuple[Any, Any]:
    """`load_model` of --model, a failure while building or filling the model (a RuntimeError of
    torch or transformers) turned into the one-line error that names the model."""
    from gnorm_kernels.models.loading import load_model

    try:
        return load_model(args.model, **options)
    except RuntimeError as err:
        raise ValueError(f"could not load --model {args.model}: {err}") from err


def load_model_and_task(args: argparse.Namespace, device: str, source: str | None = None,
                        **task_options: Any) -> tuple[Any, Any, Any]:
    """(model, tokenizer, task) of a command's --model, --tokenizer, --task and --new-head,
    the task's labels numbered as the model's classes."""
    from gnorm_kernels.data.labels import fit_labels

    task = _load_task(source or str(args.task), task_options)  # a bad file fails before a slow model load
    options = dict(device=device, progress=not args.quiet and distributed.is_main(),
                   tokenizer=getattr(args, "tokenizer", None))
    if getattr(args, "new_head", False):
        before = _checkpoint_classes(str(args.model))
        model, tokenizer = _load_model(args, num_labels=task.num_labels, new_head=True, **options)
        names = ", ".join(task.label_names)
        if before == task.num_labels:
            note(f"--new-head: the model's classifier already has {before} classes, so it is kept as trained; "
                 f"the task's classes ({names}) are used as its ids 0..{before - 1}")
        else:
            was = f"{before} classes" if before else "another class count, if it had one"
            note(f"--new-head: the model's classifier ({was}) is replaced by a new, untrained one for the task's "
                 f"{task.num_labels} classes ({names}): expect chance-level results until it is trained")
            model.config.id2label = dict(enumerate(task.label_names))
            model.config.label2id = {n: i for i, n in enumerate(task.label_names)}
        _labels_in_range(task, int(model.config.num_labels))
        return model, tokenizer, task
    model, tokenizer = _load_model(args, **options)
    from gnorm_kernels.heads.families import is_causal_lm

    if is_causal_lm(model):  # a language model's classes are verdict words, not a classifier's ids
        _check_fits_causal_lm(task, tokenizer, str(args.model))
        return model, tokenizer, task
    if isinstance(task, TextTask):
        raise CLIError(f"task {task.name!r} holds text without labels, which fits a causal LM (perplexity); "
                       f"{args.model} is a classifier ({type(model).__name__}): give it a labelled task "
                       "(a csv/tsv/jsonl file with a label column, glue/<task>, synthetic)")
    try:
        task = fit_labels(task, model.config.label2id)
    except ValueError as err:
        raise CLIError(str(err)) from None
    _labels_in_range(task, int(model.config.num_labels))
    return model, tokenizer, task


def load_inputs(args: argparse.Namespace) -> tuple[Any, Any, Any, list, list]:
    """(model, tokenizer, task, calibration batches, evaluation batches) of a command's flags,
    checked to agree; under torchrun this rank's share of the batches (or the model sharded)."""
    device = check_device(args.device)
    # only the calibration and test splits are used here; the synthetic generator draws those
    # first, so a one-example train split leaves them unchanged and saves generating 40k texts
    needed = args.calib_size * getattr(args, "calib_draws", 1)
    options = {"train_size": 1, "calibration_size": max(512, needed)} if str(args.task) in ("synthetic", "aspects", "synthetic-lm") else {}
    source = str(args.task)
    if getattr(args, "calib_data", None) is not None:  # two files: calibrate on one, evaluate on every row of the other
        options, source = {"eval_file": args.eval_data, "calibration_size": needed}, str(args.calib_data)
        if is_text_file(args.calib_data):  # documents: --calib-size counts windows, cut from all of them
            del options["calibration_size"]
        args.task = f"{args.calib_data} + {args.eval_data}"
    with distributed.main_first():  # rank 0 fills the caches (the tiny model, downloads) alone
        model, tokenizer, task = load_model_and_task(args, device, source=source, **options)
    check_task_fits(args, model, task)
    max_length = fit_max_length(args.max_length, model)
    args.effective_max_length = max_length
    calibration = task.batches("calibration", tokenizer, batch_size=args.batch_size,
                               limit=args.calib_size, max_length=max_length)
    # evaluation order does not matter: batches of similar lengths pad less and run about twice as fast;
    # windows of text: about 2,048 tokens a batch, so a large vocabulary's logits stay a few hundred MB
    eval_batch = max(1, 2048 // max_length) if isinstance(task, TextTask) else 256
    evaluation = task.batches("test", tokenizer, batch_size=eval_batch, limit=args.eval_size, max_length=max_length,
                              group_by_length=True)
    if not calibration or not evaluation:
        empty = "calibration" if not calibration else "test"
        raise CLIError(f"task {task.name!r} gives no {empty} examples at --max-length {max_length}")
    text_only = isinstance(task, TextTask)  # --calib-size counts windows of --max-length tokens there
    available = sum(len(b["input_ids"]) for b in calibration) if text_only else len(task.splits["calibration"])
    if available < args.calib_size:
        note(f"the calibration split has {available} {'windows' if text_only else 'examples'}; using all of them")
    if getattr(args, "fsdp", False):  # gradients are averaged over ranks: each must see every batch
        from gnorm_kernels.parallel.fsdp import shard_model

        shard_model(model)
    else:  # torchrun: this rank's share of the batches (all of them in one process)
        calibration = distributed.shard(calibration)
        evaluation = distributed.shard(evaluation, "evaluation batches", allow_empty=True)
    return model, tokenizer, task, calibration, evaluation


def check_task_fits(args: argparse.Namespace, model: Any, task: Any) -> None:
    """Sets an unset --metric to the task's kind (perplexity for text alone) and refuses a metric
    the task or model cannot give (a labelled task on a causal LM: `_check_fits_causal_lm`)."""
    from gnorm_kernels.heads.families import is_causal_lm

    text_only = isinstance(task, TextTask)
    if not hasattr(args, "metric"):
        return
    if args.metric is None:
        args.metric = "perplexity" if text_only else "accuracy"
    elif text_only and args.metric != "perplexity":
        raise CLIError(f"--metric {args.metric} needs labels; task {task.name!r} holds text only: use --metric perplexity")
    elif args.metric == "perplexity" and not is_causal_lm(model):
        raise CLIError(f"--metric perplexity needs a causal LM; {args.model} is a classifier ({type(model).__name__})")


@contextmanager
def checkpointed(folder: OutputFolder, path: Path) -> Iterator[None]:
    """Around driver runs checkpointed at `path` (a trajectory file, or a folder of them): a resumed
    run says where each picks up, and a checkpoint of another run is refused with what differs
    (its progress is kept)."""
    from gnorm_kernels.engine.resume import ResumeMismatch
    from gnorm_kernels.engine.trajectory import Trajectory

    found = sorted(path.glob("[!.]*.json")) if path.is_dir() else [path] if path.is_file() else []
    for file in found if folder.resumed else []:
        try:
            saved = Trajectory.load(file)
            done = "finished" if saved.complete else f"{len(saved.order)} of {saved.budget} units pruned"
            print(f"resuming {saved.method} from step {len(saved.steps) - 1} ({done})", file=sys.stderr, flush=True)
        except ValueError:
            pass  # the driver reports a damaged checkpoint
    try:
        yield
    except ResumeMismatch as err:
        raise CLIError(f"--resume: {path} is from a different run ({'; '.join(err.differences)}); "
                       "rerun with the same settings, or pass --force without --resume to start over") from None
