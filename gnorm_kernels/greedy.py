"""The pruning drivers: greedy (re-score after every step) and static (score once).

`greedy_prune` is Greedy-Gnorm's loop: score every remaining head, physically remove the lowest
(or highest) `heads_per_step`, evaluate, repeat, with no fine-tuning. `static_prune` scores once
and removes heads in that order. Both are the same loop (`_drive`), told whether to re-score.
They work on a copy of the model (the caller's model is left as it was unless ``inplace=True``,
which prunes it once, at the end) and return a `Trajectory` (`gnorm_kernels.trajectory`): the
pruning order, the score grid each choice was made on, the metrics, sizes and times per step.

A trajectory can be written after every step (``checkpoint=path``, atomically); a run started
again with the same path replays the pruned heads and carries on, ending where an uninterrupted
run would have ended.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from gnorm_kernels.arch import HeadLayout, head_layout
from gnorm_kernels.fingerprints import EVALUATION_KEYS, FINGERPRINTS, batch_fingerprint, model_fingerprint
from gnorm_kernels.pruning import prune_heads
from gnorm_kernels.gnorm import check_batches
from gnorm_kernels.scores import Batch, Method, NonFiniteGradientError, get_method, get_scorer
from gnorm_kernels.trajectory import TRAJECTORY_FORMAT, Step, Trajectory, check_ratio

__all__ = ["Step", "Trajectory", "greedy_prune", "static_prune", "run_method", "TRAJECTORY_FORMAT", "ResumeMismatch"]

Head = tuple[int, int]


class ResumeMismatch(ValueError):
    """A checkpoint that belongs to another run: other settings, model weights or data.
    `differences` lists them in words (e.g. "the model's weights changed, model_fingerprint: ...")."""

    def __init__(self, path: str | os.PathLike, differences: list[str]):
        self.path, self.differences = Path(path), differences
        super().__init__(
            f"checkpoint {path} belongs to a different run ({'; '.join(differences)}); "
            "delete it or choose another checkpoint path"
        )


# --------------------------------------------------------------------------- checks

def _check_count(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _budget(layout: HeadLayout, ratio: float | None, steps: int | None, per_step: int, min_heads: int) -> int:
    """Heads to prune, checked against what `min_heads_per_layer` allows."""
    present = layout.num_kept_heads
    prunable = sum(max(0, len(b.kept_heads) - min_heads) for b in layout.blocks)
    if ratio is not None and steps is not None:
        raise ValueError(f"give ratio= or steps=, not both (got ratio={ratio!r}, steps={steps!r})")
    if ratio is not None:
        wanted = round(check_ratio(ratio) * present)
        what = f"ratio {ratio} means {wanted} of {present} heads"
    elif steps is not None:
        steps = _check_count(steps, "steps", 0)
        max_steps = math.ceil(prunable / per_step)
        if steps > max_steps:
            raise ValueError(
                f"steps={steps} is more than this model allows: {prunable} prunable heads at "
                f"{per_step} per step make at most {max_steps} steps"
            )
        return min(steps * per_step, prunable)
    else:
        return prunable
    if wanted > prunable:
        raise ValueError(
            f"{what}, but only {prunable} can be pruned with min_heads_per_layer={min_heads}"
        )
    return wanted


def _choose(
    scores: torch.Tensor, kept: torch.Tensor, k: int, prune_first: str, min_heads: int, where: str
) -> list[Head]:
    """The next `k` heads: lowest (or highest) scores first, ties broken by (layer, head)."""
    bad = kept & ~torch.isfinite(scores)
    if bad.any():
        l, h = bad.nonzero()[0].tolist()
        raise NonFiniteGradientError(
            f"{where}: the score of present head ({l}, {h}) is {scores[l, h].item()}: the model gives non-finite "
            "values (NaN or inf in its weights or inputs?), so no head can be chosen"
        )
    key = scores.double() if prune_first == "lowest" else -scores.double()
    key = torch.where(kept, key, torch.full_like(key, math.inf))
    order = torch.argsort(key.flatten(), stable=True).tolist()
    left = kept.sum(dim=1).tolist()
    chosen: list[Head] = []
    width = scores.shape[1]
    for flat in order:
        l, h = divmod(flat, width)
        if not kept[l, h] or left[l] <= min_heads:
            continue
        chosen.append((l, h))
        left[l] -= 1
        if len(chosen) == k:
            break
    return chosen


def _as_map(heads: Sequence[Head]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for l, h in heads:
        out.setdefault(l, []).append(h)
    return out


def _describe(value: Any) -> Any:
    """A JSON-friendly, run-to-run stable description of a setting (callables by name)."""
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
    if isinstance(value, Mapping):
        return {str(k): _describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    return value


def _measure(model: nn.Module) -> dict[str, Any]:
    from gnorm_kernels.evaluate import model_size_mb, parameter_count

    return {
        "params": parameter_count(model),
        "encoder_params": parameter_count(model, encoder_only=True),
        "size_mb": model_size_mb(model),
    }


def _evaluate(model: nn.Module, batches: Sequence[Batch] | None, metric: str, where: str) -> tuple[dict | None, float]:
    if batches is None:
        return None, 0.0
    from gnorm_kernels.evaluate import evaluate

    start = time.perf_counter()
    try:
        result = evaluate(model, batches, metric=metric)
    except FloatingPointError as err:
        raise FloatingPointError(f"{where}, evaluating: {err}") from err
    bad = {k: v for k, v in result.items() if not math.isfinite(v)}
    if bad:  # finite logits can still overflow the loss: never a NaN/inf in the record
        raise FloatingPointError(f"{where}, evaluating: the metrics {bad} are not finite (logits too large?)")
    return {k: float(v) for k, v in result.items()}, time.perf_counter() - start


# --------------------------------------------------------------------------- the drivers


def _drive(
    model: nn.Module,
    calibration: Sequence[Batch],
    evaluation: Sequence[Batch] | None,
    *,
    greedy: bool,
    scorer: str | Callable[..., torch.Tensor],
    scorer_options: Mapping[str, Any] | None,
    prune_first: Literal["lowest", "highest"],
    method: str | None,
    ratio: float | None,
    steps: int | None,
    heads_per_step: int,
    min_heads_per_layer: int,
    eval_every: int,
    metric: str,
    checkpoint: str | os.PathLike | None,
    max_steps: int | None,
    inplace: bool,
    progress: bool,
) -> Trajectory:
    """The one pruning loop: `greedy_prune` (``greedy=True``) and `static_prune` (``False``)."""
    score_fn = get_scorer(scorer) if isinstance(scorer, str) else scorer
    if not callable(score_fn):
        raise TypeError(f"scorer must be a registered name or a callable, got {type(scorer).__name__}")
    if prune_first not in ("lowest", "highest"):
        raise ValueError(f"prune_first must be 'lowest' or 'highest', got {prune_first!r}")
    heads_per_step = _check_count(heads_per_step, "heads_per_step", 1)
    eval_every = _check_count(eval_every, "eval_every", 1)
    if max_steps is not None:
        _check_count(max_steps, "max_steps", 0)
    calibration = check_batches(calibration)  # a list of non-empty batches with input_ids, or a clear error
    evaluation = None if evaluation is None else list(evaluation)
    if evaluation is not None and not evaluation:
        raise ValueError("the evaluation set is empty: pass batches with labels, or None to skip evaluation")
    options = dict(scorer_options or {})
    layout = head_layout(model)
    min_heads = _check_count(min_heads_per_layer, "min_heads_per_layer", 0)
    if min_heads > layout.num_heads:
        raise ValueError(f"min_heads_per_layer={min_heads} exceeds the {layout.num_heads} heads of a layer")
    budget = _budget(layout, ratio, steps, heads_per_step, min_heads)
    scorer_name = scorer if isinstance(scorer, str) else _describe(scorer)
    settings = {
        "scorer": scorer_name,
        "scorer_options": _describe(options),
        "ratio": ratio,
        "steps": steps,
        "heads_per_step": heads_per_step,
        "min_heads_per_layer": min_heads,
        "eval_every": eval_every,
        "metric": metric,
        "calibration_batches": len(calibration),
        "calibration_examples": sum(int(b["input_ids"].shape[0]) for b in calibration),
        "calibration_fingerprint": batch_fingerprint(calibration),
        "evaluation_examples": None if evaluation is None else sum(int(b["input_ids"].shape[0]) for b in evaluation),
        "evaluation_fingerprint": None if evaluation is None else batch_fingerprint(evaluation, EVALUATION_KEYS),
        "model_fingerprint": model_fingerprint(model),
    }
    initially_pruned = [tuple(x) for x in (~layout.kept_mask()).nonzero().tolist()]
    name = method or f"{'greedy' if greedy else 'static'}-{scorer_name}"

    work = copy.deepcopy(model)
    trajectory = _resume(checkpoint, name, layout, greedy, prune_first, settings, initially_pruned, budget)
    if trajectory is not None and trajectory.order:
        prune_heads(work, _as_map(trajectory.order))  # replay the saved run on the copy
    if trajectory is None:  # a new run: step 0 is the model as given
        metrics, eval_seconds = _evaluate(work, evaluation, metric, f"{name}, step 0 (the model as given)")
        trajectory = Trajectory(
            method=name, family=layout.family, num_layers=layout.num_layers, num_heads=layout.num_heads,
            greedy=greedy, prune_first=prune_first, settings=settings, initially_pruned=initially_pruned,
            budget=budget, steps=[Step(0, [], metrics, seconds=0.0, eval_seconds=eval_seconds, **_measure(work))],
        )
    trajectory.complete = len(trajectory.order) >= budget
    if checkpoint is not None:
        trajectory.save(checkpoint)

    done = len(trajectory.order)
    static_scores = None if greedy else trajectory.scores_at(len(trajectory.steps) - 1)
    new_steps = 0
    bar = tqdm(total=budget, initial=done, desc=name, unit="head", disable=not progress)
    try:
        while done < budget and (max_steps is None or new_steps < max_steps):
            index = len(trajectory.steps)
            start = time.perf_counter()
            scores = static_scores  # static: the grid scored at the first step, reused
            recorded = None  # the grid recorded on this step: only a newly scored one
            if scores is None:
                scores = recorded = _score(score_fn, work, calibration, options, layout, f"{name}, step {index}")
                if not greedy:
                    static_scores = scores
            where = f"{name}, step {index}"
            chosen = _choose(scores, head_layout(work).kept_mask(), min(heads_per_step, budget - done),
                             prune_first, min_heads, where)
            if not chosen:  # cannot happen: the budget counts only prunable heads
                raise RuntimeError(f"step {index}: no head left to prune")
            prune_heads(work, _as_map(chosen))
            seconds = time.perf_counter() - start
            done += len(chosen)
            last = done >= budget
            metrics, eval_seconds = (None, 0.0)
            if last or index % eval_every == 0:
                metrics, eval_seconds = _evaluate(work, evaluation, metric, where)
            trajectory.steps.append(
                Step(index, chosen, metrics, seconds=seconds, eval_seconds=eval_seconds, scores=recorded, **_measure(work))
            )
            trajectory.complete = last
            if checkpoint is not None:
                trajectory.save(checkpoint)
            new_steps += 1
            bar.update(len(chosen))
            if metrics is not None:
                bar.set_postfix(accuracy=f"{metrics.get('accuracy', float('nan')):.3f}")
    finally:
        bar.close()
    if inplace and trajectory.order:
        prune_heads(model, _as_map(trajectory.order))
    return trajectory


def _score(
    score_fn: Callable[..., torch.Tensor], model: nn.Module, calibration: list[Batch],
    options: Mapping[str, Any], layout: HeadLayout, where: str,
) -> torch.Tensor:
    """The scorer's float32 CPU grid, checked to be the layout's shape; errors name the step."""
    try:
        scores = score_fn(model, calibration, **options).detach().float().cpu()
    except NonFiniteGradientError as err:
        raise NonFiniteGradientError(f"{where}: {err}") from err
    if tuple(scores.shape) != layout.shape:
        raise ValueError(f"scorer returned shape {list(scores.shape)}, expected {list(layout.shape)}")
    return scores


def _resume(
    checkpoint: str | os.PathLike | None,
    name: str,
    layout: HeadLayout,
    greedy: bool,
    prune_first: str,
    settings: dict[str, Any],
    initially_pruned: list[Head],
    budget: int,
) -> Trajectory | None:
    """The saved trajectory at `checkpoint`, checked to belong to this run; None if there is none."""
    if checkpoint is None or not Path(checkpoint).exists():
        return None
    path = Path(checkpoint)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint must be a file path for the trajectory JSON, got the folder {path}")
    saved = Trajectory.load(path)
    mismatch = []
    for what, mine, theirs in (
        ("method", name, saved.method),
        ("grid", layout.shape, saved.shape),
        ("greedy", greedy, saved.greedy),
        ("prune_first", prune_first, saved.prune_first),
        ("heads pruned before the run", sorted(initially_pruned), sorted(saved.initially_pruned)),
        ("budget", budget, saved.budget),
    ):
        if mine != theirs:
            mismatch.append(f"{what}: {theirs!r} saved, {mine!r} now")
    for key, value in settings.items():
        theirs = saved.settings.get(key, "not recorded")
        if json.loads(json.dumps(value)) != theirs:
            what = f"{FINGERPRINTS[key]} changed, " if key in FINGERPRINTS else ""
            mismatch.append(f"{what}{key}: {theirs!r} saved, {value!r} now")
    if mismatch:
        raise ResumeMismatch(path, mismatch)
    return saved

# --------------------------------------------------------------------------- the public drivers
# Both keep their full signatures visible to users and type checkers, and pass every argument,
# by name, to `_drive` (test_greedy checks that the three signatures agree).


def greedy_prune(
    model: nn.Module,
    calibration: Sequence[Batch],
    evaluation: Sequence[Batch] | None = None,
    *,
    scorer: str | Callable[..., torch.Tensor] = "gnorm",
    scorer_options: Mapping[str, Any] | None = None,
    prune_first: Literal["lowest", "highest"] = "lowest",
    method: str | None = None,
    ratio: float | None = None,
    steps: int | None = None,
    heads_per_step: int = 1,
    min_heads_per_layer: int = 0,
    eval_every: int = 1,
    metric: str = "accuracy",
    checkpoint: str | os.PathLike | None = None,
    max_steps: int | None = None,
    inplace: bool = False,
    progress: bool = True,
) -> Trajectory:
    """Greedy pruning: score the remaining heads, remove the `heads_per_step` lowest (or highest),
    re-score the pruned model, repeat until `ratio` of the heads (or `steps` steps, or every
    prunable head) is gone. No fine-tuning between steps.

    `scorer` is a name from `gnorm_kernels.scores.SCORERS` or any ``f(model, batches, **options)``
    returning an [L, H] grid; Greedy-Gnorm is the default. `evaluation` batches (with labels) are
    scored with `metric` after step 0 and every `eval_every` steps and after the last. The model
    passed in is not changed unless `inplace` (then it ends pruned to the final state).
    `checkpoint` names a JSON file written after every step; if it exists, the run resumes from
    it. `max_steps` stops this call after that many new steps (resume later with the same
    checkpoint).
    """
    return _drive(greedy=True, **locals())


def static_prune(
    model: nn.Module,
    calibration: Sequence[Batch],
    evaluation: Sequence[Batch] | None = None,
    *,
    scorer: str | Callable[..., torch.Tensor] = "gnorm",
    scorer_options: Mapping[str, Any] | None = None,
    prune_first: Literal["lowest", "highest"] = "lowest",
    method: str | None = None,
    ratio: float | None = None,
    steps: int | None = None,
    heads_per_step: int = 1,
    min_heads_per_layer: int = 0,
    eval_every: int = 1,
    metric: str = "accuracy",
    checkpoint: str | os.PathLike | None = None,
    max_steps: int | None = None,
    inplace: bool = False,
    progress: bool = True,
) -> Trajectory:
    """Static pruning: score the full model once, then remove heads in that order,
    `heads_per_step` at a time, evaluating as `greedy_prune` does (same arguments)."""
    return _drive(greedy=False, **locals())


def run_method(
    method: str | Method,
    model: nn.Module,
    calibration: Sequence[Batch],
    evaluation: Sequence[Batch] | None = None,
    *,
    seed: int = 0,
    scorer_options: Mapping[str, Any] | None = None,
    **driver_options: Any,
) -> Trajectory:
    """Run a method of `gnorm_kernels.scores.METHODS` by name (e.g. "greedy-gnorm", "random").

    `seed` reaches seeded methods (random); `scorer_options` go to the scorer; everything else
    goes to `greedy_prune` / `static_prune`.
    """
    spec = get_method(method) if isinstance(method, str) else method
    options = dict(scorer_options or {})
    if spec.seeded:
        options.setdefault("seed", seed)
    driver = greedy_prune if spec.greedy else static_prune
    return driver(
        model, calibration, evaluation, scorer=spec.scorer, scorer_options=options,
        prune_first=spec.prune_first, method=spec.name, **driver_options,
    )
