"""The pruning drivers: greedy (re-score after every step) and static (score once), and their record.

`greedy_prune` is Greedy-Gnorm's loop: score every remaining head, physically remove the lowest
(or highest) `heads_per_step`, evaluate, repeat, with no fine-tuning. `static_prune` scores once
and removes heads in that order. Both work on a copy of the model (the caller's model is left as
it was unless ``inplace=True``, which prunes it once, at the end) and return a `Trajectory`: the
pruning order, the score grid each choice was made on, the metrics, sizes and times per step.

A trajectory can be written after every step (``checkpoint=path``, atomically); a run started
again with the same path replays the pruned heads and carries on, ending where an uninterrupted
run would have ended.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from gnorm_kernels.arch import HeadLayout, head_layout
from gnorm_kernels.pruning import prune_heads
from gnorm_kernels.scores import Batch, Method, NonFiniteGradientError, get_method, get_scorer

__all__ = ["Step", "Trajectory", "greedy_prune", "static_prune", "run_method", "TRAJECTORY_FORMAT"]

TRAJECTORY_FORMAT = "gnorm-kernels/trajectory"
TRAJECTORY_VERSION = 1
Head = tuple[int, int]


# --------------------------------------------------------------------------- the record


def _grid_to_json(grid: torch.Tensor | None) -> list | None:
    if grid is None:
        return None
    return [[None if math.isnan(v) else v for v in row] for row in grid.tolist()]


def _grid_from_json(data: list | None) -> torch.Tensor | None:
    if data is None:
        return None
    return torch.tensor([[float("nan") if v is None else v for v in row] for row in data], dtype=torch.float32)


@dataclass
class Step:
    """One pruning step. Step 0 is the model as given (nothing pruned)."""

    step: int
    pruned: list[Head]  # (layer, original head) removed at this step, in the order chosen
    metrics: dict[str, float] | None  # evaluate() on the evaluation batches; None if not evaluated
    params: int
    encoder_params: int
    size_mb: float
    seconds: float  # scoring + choosing + pruning
    eval_seconds: float = 0.0
    scores: torch.Tensor | None = None  # [L, H] grid this step's choice was made on (NaN: pruned)

    @property
    def accuracy(self) -> float | None:
        return None if self.metrics is None else self.metrics.get("accuracy")

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "pruned": [list(h) for h in self.pruned],
            "accuracy": self.accuracy,
            "metrics": self.metrics,
            "params": self.params,
            "encoder_params": self.encoder_params,
            "size_mb": self.size_mb,
            "seconds": self.seconds,
            "eval_seconds": self.eval_seconds,
            "scores": _grid_to_json(self.scores),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Step":
        return cls(
            step=int(data["step"]),
            pruned=[(int(l), int(h)) for l, h in data["pruned"]],
            metrics=data.get("metrics") if data.get("metrics") is not None else (
                None if data.get("accuracy") is None else {"accuracy": data["accuracy"]}
            ),
            params=int(data.get("params", 0)),
            encoder_params=int(data.get("encoder_params", 0)),
            size_mb=float(data.get("size_mb", 0.0)),
            seconds=float(data.get("seconds", 0.0)),
            eval_seconds=float(data.get("eval_seconds", 0.0)),
            scores=_grid_from_json(data.get("scores")),
        )


@dataclass
class Trajectory:
    """The record of one pruning run: order, scores, metrics, sizes and times per step."""

    method: str
    family: str
    num_layers: int
    num_heads: int
    greedy: bool
    prune_first: str
    settings: dict[str, Any]
    steps: list[Step] = field(default_factory=list)
    initially_pruned: list[Head] = field(default_factory=list)
    budget: int = 0  # heads this run is to prune
    complete: bool = False

    # ---- shape and order
    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_layers, self.num_heads)

    @property
    def num_heads_total(self) -> int:
        return self.num_layers * self.num_heads

    @property
    def num_heads_start(self) -> int:
        """Heads present when the run started (num_heads_total unless the model came pruned)."""
        return self.num_heads_total - len(self.initially_pruned)

    @property
    def order(self) -> list[Head]:
        """Every head pruned, first to last."""
        return [h for s in self.steps for h in s.pruned]

    @property
    def heads_pruned(self) -> list[int]:
        """Cumulative number of heads pruned after each step (0 for step 0)."""
        out, n = [], 0
        for s in self.steps:
            n += len(s.pruned)
            out.append(n)
        return out

    # ---- masks
    def _initial_mask(self) -> torch.Tensor:
        mask = torch.ones(self.shape, dtype=torch.bool)
        for l, h in self.initially_pruned:
            mask[l, h] = False
        return mask

    def _heads_for(self, ratio: float | None, steps: int | None) -> list[Head]:
        if (ratio is None) == (steps is None):
            raise ValueError("give exactly one of ratio= (fraction of heads pruned) or steps= (pruning steps)")
        order = self.order
        if steps is not None:
            if not isinstance(steps, int) or not 0 <= steps < len(self.steps):
                raise ValueError(f"steps must be an integer in 0..{len(self.steps) - 1} for this trajectory, got {steps!r}")
            return [h for s in self.steps[1 : steps + 1] for h in s.pruned]
        ratio = _check_ratio(ratio)
        n = round(ratio * self.num_heads_start)
        if n > len(order):
            raise ValueError(
                f"ratio {ratio} means {n} heads pruned, but this trajectory covers only {len(order)} "
                f"of {self.num_heads_start} heads"
            )
        return order[:n]

    def mask_at(self, ratio: float | None = None, *, steps: int | None = None) -> torch.Tensor:
        """Bool [L, H] kept mask after pruning a fraction `ratio` of the heads, or after `steps` steps."""
        mask = self._initial_mask()
        for l, h in self._heads_for(ratio, steps):
            mask[l, h] = False
        return mask

    def pruned_heads_at(self, ratio: float | None = None, *, steps: int | None = None) -> dict[int, list[int]]:
        """{layer: [original heads]} pruned at that point (including any pruned before the run),
        ready for `gnorm_kernels.pruning.prune_heads`."""
        gone = ~self.mask_at(ratio, steps=steps)
        out: dict[int, list[int]] = {}
        for l, h in gone.nonzero().tolist():
            out.setdefault(l, []).append(h)
        return out

    def scores_at(self, step: int) -> torch.Tensor | None:
        """The score grid step `step` was chosen on (static runs: the one grid scored at the start)."""
        for s in reversed(self.steps[1 : step + 1]):
            if s.scores is not None:
                return s.scores
        return None

    # ---- curves
    def curve(self, metric: str = "accuracy") -> tuple[np.ndarray, np.ndarray]:
        """(fraction of heads pruned, metric) at every evaluated step."""
        xs, ys = [], []
        for n, s in zip(self.heads_pruned, self.steps):
            if s.metrics is not None and s.metrics.get(metric) is not None:
                xs.append(n / self.num_heads_start)
                ys.append(float(s.metrics[metric]))
        return np.asarray(xs), np.asarray(ys)

    def metric_at(self, fraction: float, metric: str = "accuracy") -> float:
        """`metric` at a fraction of heads pruned, linear between evaluated steps; NaN past the curve."""
        xs, ys = self.curve(metric)
        if len(xs) == 0 or fraction > xs[-1] + 1e-9 or fraction < 0:
            return float("nan")
        return float(np.interp(fraction, xs, ys))

    def area_under_curve(self, metric: str = "accuracy") -> float:
        """Area under `metric` against the fraction of heads pruned, over the range the run covers,
        divided by that range: the curve's mean value (1.0 would be a perfect score throughout)."""
        xs, ys = self.curve(metric)
        if len(xs) < 2 or xs[-1] <= 0:
            return float("nan")
        return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2) / xs[-1])

    # ---- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TRAJECTORY_FORMAT,
            "version": TRAJECTORY_VERSION,
            "method": self.method,
            "family": self.family,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_heads_total": self.num_heads_total,
            "greedy": self.greedy,
            "prune_first": self.prune_first,
            "settings": self.settings,
            "initially_pruned": [list(h) for h in self.initially_pruned],
            "budget": self.budget,
            "complete": self.complete,
            "steps": [s.to_dict() for s in self.steps],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Trajectory":
        missing = [k for k in ("method", "num_layers", "num_heads", "steps") if k not in data]
        if missing:
            raise ValueError(f"not a pruning trajectory: missing keys {missing}")
        return cls(
            method=str(data["method"]),
            family=str(data.get("family", "")),
            num_layers=int(data["num_layers"]),
            num_heads=int(data["num_heads"]),
            greedy=bool(data.get("greedy", False)),
            prune_first=str(data.get("prune_first", "lowest")),
            settings=dict(data.get("settings") or {}),
            steps=[Step.from_dict(s) for s in data["steps"]],
            initially_pruned=[(int(l), int(h)) for l, h in data.get("initially_pruned", [])],
            budget=int(data.get("budget", 0)),
            complete=bool(data.get("complete", False)),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the trajectory as JSON, atomically (a temporary file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=1, allow_nan=False)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it the usual mode
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trajectory":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        return cls.from_dict(data)

    def __repr__(self) -> str:
        acc = [s.accuracy for s in self.steps if s.accuracy is not None]
        tail = f", accuracy {acc[0]:.4f} -> {acc[-1]:.4f}" if acc else ""
        return (
            f"Trajectory({self.method!r}, {self.family} {self.num_layers}x{self.num_heads}, "
            f"{len(self.order)} of {self.num_heads_start} heads pruned in {len(self.steps) - 1} steps{tail})"
        )


# --------------------------------------------------------------------------- checks


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"ratio must be a number in [0, 1] (the fraction of heads to prune), got {ratio!r}")
    return float(ratio)


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
        wanted = round(_check_ratio(ratio) * present)
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
    scores: torch.Tensor, kept: torch.Tensor, k: int, prune_first: str, min_heads: int, step: int
) -> list[Head]:
    """The next `k` heads: lowest (or highest) scores first, ties broken by (layer, head)."""
    bad = kept & ~torch.isfinite(scores)
    if bad.any():
        l, h = bad.nonzero()[0].tolist()
        raise NonFiniteGradientError(f"step {step}: the score of present head ({l}, {h}) is {scores[l, h].item()}")
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


def _fingerprint(batches: Sequence[Batch]) -> str:
    """A short hash of the batches' token ids and masks, so a resumed run can check its data."""
    digest = hashlib.sha256()
    for batch in batches:
        for key in ("input_ids", "attention_mask"):
            if key in batch:
                digest.update(batch[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


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


def _evaluate(model: nn.Module, batches: Sequence[Batch] | None, metric: str) -> tuple[dict | None, float]:
    if batches is None:
        return None, 0.0
    from gnorm_kernels.evaluate import evaluate

    start = time.perf_counter()
    result = evaluate(model, batches, metric=metric)
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
    score_fn = get_scorer(scorer) if isinstance(scorer, str) else scorer
    if not callable(score_fn):
        raise TypeError(f"scorer must be a registered name or a callable, got {type(scorer).__name__}")
    if prune_first not in ("lowest", "highest"):
        raise ValueError(f"prune_first must be 'lowest' or 'highest', got {prune_first!r}")
    heads_per_step = _check_count(heads_per_step, "heads_per_step", 1)
    eval_every = _check_count(eval_every, "eval_every", 1)
    if max_steps is not None:
        _check_count(max_steps, "max_steps", 0)
    calibration = list(calibration)
    if not calibration:
        raise ValueError("the calibration set is empty: expected at least one batch of model inputs")
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
        "calibration_fingerprint": _fingerprint(calibration),
        "evaluation_examples": None if evaluation is None else sum(int(b["input_ids"].shape[0]) for b in evaluation),
    }
    initially_pruned = [tuple(x) for x in (~layout.kept_mask()).nonzero().tolist()]
    name = method or f"{'greedy' if greedy else 'static'}-{scorer_name}"

    work = copy.deepcopy(model)
    trajectory = _resume(checkpoint, name, layout, greedy, prune_first, settings, initially_pruned, budget)
    if trajectory is not None and trajectory.order:
        prune_heads(work, _as_map(trajectory.order))
    if trajectory is None:
        metrics, eval_seconds = _evaluate(work, evaluation, metric)
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
            scores = static_scores
            if scores is None:
                try:
                    scores = score_fn(work, calibration, **options).detach().float().cpu()
                except NonFiniteGradientError as err:
                    raise NonFiniteGradientError(f"{name}, step {index}: {err}") from err
                if tuple(scores.shape) != layout.shape:
                    raise ValueError(f"scorer returned shape {list(scores.shape)}, expected {list(layout.shape)}")
                if not greedy:
                    static_scores = scores
                recorded = scores
            else:
                recorded = None
            chosen = _choose(scores, head_layout(work).kept_mask(), min(heads_per_step, budget - done),
                             prune_first, min_heads, index)
            if not chosen:  # cannot happen: the budget counts only prunable heads
                raise RuntimeError(f"step {index}: no head left to prune")
            prune_heads(work, _as_map(chosen))
            seconds = time.perf_counter() - start
            done += len(chosen)
            last = done >= budget
            metrics, eval_seconds = (None, 0.0)
            if last or index % eval_every == 0:
                metrics, eval_seconds = _evaluate(work, evaluation, metric)
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
        if json.loads(json.dumps(value)) != saved.settings.get(key):
            mismatch.append(f"{key}: {saved.settings.get(key)!r} saved, {value!r} now")
    if mismatch:
        raise ValueError(
            f"checkpoint {path} belongs to a different run ({'; '.join(mismatch)}); "
            "delete it or choose another checkpoint path"
        )
    return saved


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
    return _drive(
        model, calibration, evaluation, greedy=True, scorer=scorer, scorer_options=scorer_options,
        prune_first=prune_first, method=method, ratio=ratio, steps=steps, heads_per_step=heads_per_step,
        min_heads_per_layer=min_heads_per_layer, eval_every=eval_every, metric=metric,
        checkpoint=checkpoint, max_steps=max_steps, inplace=inplace, progress=progress,
    )


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
    return _drive(
        model, calibration, evaluation, greedy=False, scorer=scorer, scorer_options=scorer_options,
        prune_first=prune_first, method=method, ratio=ratio, steps=steps, heads_per_step=heads_per_step,
        min_heads_per_layer=min_heads_per_layer, eval_every=eval_every, metric=metric,
        checkpoint=checkpoint, max_steps=max_steps, inplace=inplace, progress=progress,
    )


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

    `seed` reaches seeded methods (random); `scorer_options` are merged over the method's own;
    everything else goes to `greedy_prune` / `static_prune`.
    """
    spec = get_method(method) if isinstance(method, str) else method
    options = {**spec.scorer_options, **(scorer_options or {})}
    if spec.seeded:
        options.setdefault("seed", seed)
    driver = greedy_prune if spec.greedy else static_prune
    return driver(
        model, calibration, evaluation, scorer=spec.scorer, scorer_options=options,
        prune_first=spec.prune_first, method=spec.name, **driver_options,
    )
