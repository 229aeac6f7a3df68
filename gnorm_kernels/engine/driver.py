"""The pruning drivers: greedy (re-score after every step) and static (score once).

`greedy_prune` is Greedy-Gnorm's loop: score every remaining head, physically remove the lowest
(or highest) `heads_per_step`, evaluate, repeat, with no fine-tuning. The unit pruned is a query
head (``unit="head"``, `prune_heads`) or, on grouped-query models, a whole key/value group with its
query heads (``unit="kv_group"``, `prune_kv_groups`: what shrinks the KV cache). `static_prune` scores once
and removes heads in that order. Both are the same loop (`_drive`), told whether to re-score.
They work on a copy of the model (the caller's model is left as it was unless ``inplace=True``,
which prunes it once, at the end) and return a `Trajectory` (`gnorm_kernels.engine.trajectory`): the
pruning order, the score grid each choice was made on, the metrics, sizes and times per step.

A trajectory can be written after every step (``checkpoint=path``, atomically); a run started
again with the same path replays the pruned heads and carries on, ending where an uninterrupted
run would have ended.

Under torch.distributed every rank runs the loop on its shard of the batches (the scorers and
`evaluate` reduce to global values), every rank takes the same decision (checked each step), and
only rank 0 reads and writes the checkpoint and shows progress. A model sharded with FSDP2 is
pruned by masking (`gnorm_kernels.parallel.fsdp.MaskedPruning`), every rank seeing every batch.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from gnorm_kernels.data.batches import Batch
from gnorm_kernels.engine.choice import budget as unit_budget
from gnorm_kernels.engine.choice import check_count, choose, choose_uniform, uniform_plan
from gnorm_kernels.engine.resume import data_settings, describe_setting, model_fingerprint, resume_run
from gnorm_kernels.engine.settings import PruneSettings
from gnorm_kernels.engine.trajectory import Step, Trajectory
from gnorm_kernels.heads.families import head_layout, is_causal_lm
from gnorm_kernels.heads.layout import Head
from gnorm_kernels.heads.units import PruningUnit, unit_of
from gnorm_kernels.parallel import distributed
from gnorm_kernels.progress import progress_bar
from gnorm_kernels.scoring.objectives import NonFiniteGradientError, check_batches
from gnorm_kernels.scoring.registry import Method, get_method, get_scorer

__all__ = ["greedy_prune", "static_prune", "run_method"]



# --------------------------------------------------------------------------- checks

def _as_map(heads: Sequence[Head]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for l, h in heads:
        out.setdefault(l, []).append(h)
    return out


def _prune(model: nn.Module, units: Sequence[Head], unit: PruningUnit) -> nn.Module:
    """Remove (layer, unit) pairs: query heads, or key/value groups with all their query heads."""
    return unit.prune(model, _as_map(units))


class _Copy:
    """The loop's work model: a private copy pruned for real (`fsdp.MaskedPruning` on a sharded
    model); `structure` has the pruned model's layout and sizes, `applied()` gives the model to run."""

    def __init__(self, model: nn.Module, unit: str):
        self.model = self.structure = copy.deepcopy(model)
        self.unit = unit

    def prune(self, units: Sequence[Head]) -> None:
        _prune(self.model, units, self.unit)

    def applied(self):
        return nullcontext(self.model)


def _measure(model: nn.Module) -> dict[str, Any]:
    from gnorm_kernels.evaluation import model_size_mb, parameter_count

    return {
        "params": parameter_count(model),
        "encoder_params": parameter_count(model, encoder_only=True),
        "size_mb": model_size_mb(model),
    }


def _evaluate(
    work: Any, batches: Sequence[Batch] | None, metric: str, where: str, per_example: bool = False
) -> tuple[dict | None, float, dict[str, list[int]]]:
    """(metrics, seconds, per-example predictions and golds: empty unless `per_example`)."""
    if batches is None:
        return None, 0.0, {}
    from gnorm_kernels.evaluation import evaluate

    start = time.perf_counter()
    try:
        with work.applied() as model:
            result = evaluate(model, batches, metric=metric, per_example=per_example)
    except FloatingPointError as err:
        raise FloatingPointError(f"{where}, evaluating: {err}") from err
    # text alone: each window's NLL sum and token count stand where classes would (Step.predictions, Step.golds)
    renamed = {"predictions": "predictions", "golds": "golds", "example_nll": "predictions", "example_tokens": "golds"}
    outcomes = {renamed[k]: result.pop(k) for k in list(renamed) if k in result}
    bad = {k: v for k, v in result.items() if not math.isfinite(v)}
    if bad:  # finite logits can still overflow the loss: never a NaN/inf in the record
        raise FloatingPointError(f"{where}, evaluating: the metrics {bad} are not finite (logits too large?)")
    return {k: float(v) for k, v in result.items()}, time.perf_counter() - start, outcomes


# --------------------------------------------------------------------------- the drivers


def _drive(
    model: nn.Module,
    calibration: Sequence[Batch],
    evaluation: Sequence[Batch] | None,
    run: PruneSettings,
    *,
    greedy: bool,
) -> Trajectory:
    """The one pruning loop: `greedy_prune` (``greedy=True``) and `static_prune` (``False``)."""
    scorer, prune_first, unit, method, metric = run.scorer, run.prune_first, run.unit, run.method, run.metric
    ratio, steps, checkpoint, max_steps, progress, per_example = (
        run.ratio, run.steps, run.checkpoint, run.max_steps, run.progress, run.per_example)
    score_fn = get_scorer(scorer) if isinstance(scorer, str) else scorer
    if not callable(score_fn):
        raise TypeError(f"scorer must be a registered name or a callable, got {type(scorer).__name__}")
    if prune_first not in ("lowest", "highest"):
        raise ValueError(f"prune_first must be 'lowest' or 'highest', got {prune_first!r}")
    heads_per_step = check_count(run.heads_per_step, "heads_per_step", 1)
    eval_every = check_count(run.eval_every, "eval_every", 1)
    if max_steps is not None:
        check_count(max_steps, "max_steps", 0)
    # a rank's shard is checked over all ranks; else a list of non-empty batches with input_ids, or an error
    calibration = list(calibration) if distributed.data_parallel(model) else check_batches(calibration)
    evaluation = None if evaluation is None else list(evaluation)
    sharded = distributed.is_sharded(model)
    if run.inplace and sharded:
        raise ValueError("inplace=True cannot cut heads out of an FSDP-sharded model; "
                         "save the result with gnorm_kernels.parallel.fsdp.save_pruned_sharded")
    options = dict(run.scorer_options or {})
    if "unit" in options:
        raise ValueError(f"give the unit to the driver (unit={options['unit']!r}), not in scorer_options")
    layout = head_layout(model)
    unit = unit_of(unit, layout)
    grid = unit.shape(layout)
    _check_evaluation(model, evaluation, metric)
    min_heads = check_count(run.min_heads_per_layer, "min_heads_per_layer", 0)
    if min_heads > grid[1]:
        raise ValueError(f"min_heads_per_layer={min_heads} exceeds the {grid[1]} {unit.words} of a layer")
    plan = uniform_plan(layout, unit, ratio, steps, heads_per_step, min_heads) if run.uniform else None
    budget = plan.units if plan is not None else unit_budget(layout, unit, ratio, steps, heads_per_step, min_heads)
    scorer_name = scorer if isinstance(scorer, str) else describe_setting(scorer)
    settings = {
        "scorer": scorer_name,
        "scorer_options": describe_setting(options),
        "ratio": ratio,
        "steps": steps,
        "heads_per_step": heads_per_step,
        "min_heads_per_layer": min_heads,
        "eval_every": eval_every,
        "metric": metric,
        **data_settings(calibration, evaluation, parallel=distributed.data_parallel(model)),
        "model_fingerprint": model_fingerprint(model),
        **({"uniform": True} if run.uniform else {}),  # absent when False: earlier checkpoints still resume
    }
    initially_pruned = [tuple(x) for x in (~unit.kept_mask(layout)).nonzero().tolist()]
    pruned_heads = [tuple(x) for x in (~layout.kept_mask()).nonzero().tolist()] if unit.is_group else []
    name = method or f"{'greedy' if greedy else 'static'}-{scorer_name}"
    call_options = {**options, "unit": unit.name} if unit.is_group else options
    if distributed.is_distributed():  # same model (a sharded one: same shapes), same run, every rank
        model_id = layout.describe() if sharded else distributed.fingerprint_model(model)
        distributed.check_same({"model": model_id, "method": name, "budget": budget, **settings}, "models or settings")

    if sharded:
        from gnorm_kernels.parallel.fsdp import MaskedPruning

        work = MaskedPruning(model, unit)
    else:
        work = _Copy(model, unit)
    trajectory = distributed.from_main(
        lambda: resume_run(checkpoint, name, unit.name, grid, greedy, prune_first, settings, initially_pruned, budget),
        "the checkpoint",
    )
    if trajectory is not None and trajectory.order:
        work.prune(trajectory.order)  # replay the saved run on the copy
    if trajectory is None:  # a new run: step 0 is the model as given
        metrics, eval_seconds, outcomes = _evaluate(work, evaluation, metric, f"{name}, step 0 (the model as given)",
                                                    per_example)
        trajectory = Trajectory(
            method=name, family=layout.family, num_layers=layout.num_layers, num_heads=layout.num_heads,
            greedy=greedy, prune_first=prune_first, settings=settings, initially_pruned=initially_pruned,
            budget=budget, steps=[Step(0, [], metrics, seconds=0.0, eval_seconds=eval_seconds,
                                       **outcomes, **_measure(work.structure))],
            unit=unit.name, num_kv_heads=layout.kv_heads if layout.grouped else 0, initially_pruned_heads=pruned_heads,
        )
    trajectory.complete = len(trajectory.order) >= budget
    write = checkpoint is not None and distributed.is_main()
    if write:
        trajectory.save(checkpoint)

    done = len(trajectory.order)
    static_scores = None if greedy else trajectory.scores_at(len(trajectory.steps) - 1)
    new_steps = 0
    bar = progress_bar(total=budget, initial=done, desc=name, unit=unit.name.replace("kv_", ""),
               disable=not progress or not distributed.is_main())
    try:
        while done < budget and (max_steps is None or new_steps < max_steps):
            index = len(trajectory.steps)
            start = time.perf_counter()
            scores = static_scores  # static: the grid scored at the first step, reused
            recorded = None  # the grid recorded on this step: only a newly scored one
            kept = unit.kept_mask(head_layout(work.structure))
            if scores is None:
                with work.applied() as scored:
                    scores = _score(score_fn, scored, calibration, call_options, grid, f"{name}, step {index}")
                scores = recorded = scores.masked_fill(~kept, float("nan"))  # masked units score 0
                if not greedy:
                    static_scores = scores
            where = f"{name}, step {index}"
            if plan is not None:  # one round: the lowest (highest) unit of every layer, or of every group
                chosen = choose_uniform(scores, kept, plan.cells, prune_first, where)
            else:
                chosen = choose(scores, kept, min(heads_per_step, budget - done), prune_first, min_heads, where)
            if not chosen:  # cannot happen: the budget counts only prunable units
                raise RuntimeError(f"step {index}: no {unit} left to prune")
            distributed.check_same(chosen, f"units chosen at step {index}")
            work.prune(chosen)
            seconds = time.perf_counter() - start
            done += len(chosen)
            last = done >= budget
            metrics, eval_seconds, outcomes = (None, 0.0, {})
            if last or index % eval_every == 0:
                metrics, eval_seconds, outcomes = _evaluate(work, evaluation, metric, where, per_example)
            trajectory.steps.append(
                Step(index, chosen, metrics, seconds=seconds, eval_seconds=eval_seconds, scores=recorded,
                     **outcomes, **_measure(work.structure))
            )
            trajectory.complete = last
            if write:
                trajectory.save(checkpoint)
            new_steps += 1
            bar.update(len(chosen))
            if metrics is not None:
                bar.set_postfix({metric: f"{metrics.get(metric, float('nan')):.3f}"})
    finally:
        bar.close()
    if run.inplace and trajectory.order:
        _prune(model, trajectory.order, unit)
    return trajectory


def _check_evaluation(model: nn.Module, evaluation: Sequence[Batch] | None, metric: str) -> None:
    """A causal LM evaluated on text alone has only a perplexity: say so before any work."""
    if evaluation is None or metric == "perplexity" or not is_causal_lm(model):
        return
    if not all("labels" in batch for batch in evaluation):
        raise ValueError(
            f"metric {metric!r} needs labelled evaluation batches (labels, label_token_ids, verdict_index), but "
            "these carry text only: pass metric='perplexity' (a labelled LM task records perplexity beside its metric)"
        )


def _score(
    score_fn: Callable[..., torch.Tensor], model: nn.Module, calibration: list[Batch],
    options: Mapping[str, Any], grid: tuple[int, int], where: str,
) -> torch.Tensor:
    """The scorer's float32 CPU grid, checked to be the unit grid's shape; errors name the step."""
    try:
        scores = score_fn(model, calibration, **options).detach().float().cpu()
    except NonFiniteGradientError as err:
        raise NonFiniteGradientError(f"{where}: {err}") from err
    if tuple(scores.shape) != grid:
        raise ValueError(f"scorer returned shape {list(scores.shape)}, expected {list(grid)}")
    return scores


# --------------------------------------------------------------------------- the public drivers


def greedy_prune(
    model: nn.Module,
    calibration: Sequence[Batch],
    evaluation: Sequence[Batch] | None = None,
    settings: PruneSettings | None = None,
    **options: Any,
) -> Trajectory:
    """Greedy pruning: score the remaining units, remove the `heads_per_step` lowest (or highest),
    re-score the pruned model, repeat until `ratio` of the units (or `steps` steps, or every
    prunable unit) is gone. No fine-tuning between steps.

    The options are the fields of `PruneSettings` (given as `settings`, or by name:
    ``greedy_prune(model, calib, test, ratio=0.5, unit="kv_group")``). `unit="kv_group"`
    (grouped-query models) ranks and removes whole key/value groups instead of query heads
    (`prune_kv_groups`); the budget then counts groups and the trajectory's grid is [L, H_kv].
    `scorer` is a name from `gnorm_kernels.scoring.registry.SCORERS` or any
    ``f(model, batches, **options)`` returning the unit's grid (called with ``unit="kv_group"``
    for groups); Greedy-Gnorm is the default. `evaluation` batches (with labels; for a causal LM
    text alone with ``metric="perplexity"``) are scored after step 0, every `eval_every` steps and
    after the last; a causal LM's steps record its perplexity beside the task metric. The model
    passed in is not changed unless `inplace`. With `checkpoint` the run resumes from that file
    when it exists; `per_example` keeps what `gnorm_kernels.evidence.comparison` bootstraps
    (classes per example; text alone: each window's NLL sum and token count).

    `uniform=True` prunes every layer alike, so the result has one head count per layer (for
    Llama, Qwen2, Mistral: a standard config, see `save_pruned`). A step is then a round: one unit
    removed from every layer, or, for ``unit="head"`` under grouped-query attention, one query head
    from every key/value group of every layer, so groups stay equal. Within a round each layer
    (group) loses its own lowest-scored (highest, with ``prune_first="highest"``) unit on the
    current scores; the model is re-scored before the next round (greedy per round, not per unit,
    and never trading a unit of one layer for a lower one elsewhere). `steps` counts rounds;
    `ratio` is a fraction of the units present, rounded down to whole rounds with a warning when it
    is not one; `heads_per_step` must be 1; the model must start uniform.
    """
    return _drive(model, calibration, evaluation, PruneSettings.build(settings, **options), greedy=True)


def static_prune(
    model: nn.Module,
    calibration: Sequence[Batch],
    evaluation: Sequence[Batch] | None = None,
    settings: PruneSettings | None = None,
    **options: Any,
) -> Trajectory:
    """Static pruning: score the full model once, then remove units in that order,
    `heads_per_step` at a time (with `uniform`, a round per step on those first scores),
    evaluating as `greedy_prune` does (same settings)."""
    return _drive(model, calibration, evaluation, PruneSettings.build(settings, **options), greedy=False)


def run_method(
    method: str | Method,
    model: nn.Module,
    calibration: Sequence[Batch],
    evaluation: Sequence[Batch] | None = None,
    settings: PruneSettings | None = None,
    *,
    seed: int = 0,
    preset: str | None = None,
    **options: Any,
) -> Trajectory:
    """Run a method of `gnorm_kernels.scoring.registry.METHODS` by name (e.g. "greedy-gnorm", "random").

    `settings` and `options` are `PruneSettings` (as for `greedy_prune`); the method sets the
    scorer, the direction and the run's name. `seed` reaches seeded methods (random); `preset`
    (e.g. "authors", see `gnorm_kernels.scoring.presets`) sets the Gnorm scorer's options under
    the caller's own, and the preset's units per step unless the caller gave them.
    """
    spec = get_method(method) if isinstance(method, str) else method
    run = PruneSettings.build(settings, **options)
    unit = spec.check_unit(run.unit)
    scorer_options = dict(run.scorer_options or {})
    if spec.seeded:
        scorer_options.setdefault("seed", seed)
    scorer: Any = spec.scorer
    if preset is not None:
        from gnorm_kernels.scoring.presets import apply_preset

        chosen = "heads_per_step" in options or settings is not None  # the caller's own choice wins
        scorer, scorer_options, heads_per_step = apply_preset(preset, spec, scorer_options, run.heads_per_step,
                                                              keep_heads_per_step=chosen, seed=seed)
        run = PruneSettings.build(run, heads_per_step=heads_per_step)
    driver = greedy_prune if spec.greedy else static_prune
    return driver(model, calibration, evaluation, PruneSettings.build(
        run, scorer=scorer, scorer_options=scorer_options, prune_first=spec.prune_first, unit=unit, method=spec.name))
