"""The record of a pruning run: `Step` and `Trajectory`, read by plots, widgets, reports and the CLI.

A trajectory holds the pruning order, the score grid each choice was made on, and the metrics,
sizes and times after every step. It is a plain record: it imports nothing of the pruning engine
(only torch, numpy and the standard library), so reading a saved run needs no model code.

A run prunes units (`unit`): query heads on the original [num_layers, num_heads] grid, or
key/value groups on [num_layers, num_kv_heads]. Order, score grids and `mask_at` are on the unit's
grid; `head_mask_at` and `pruned_heads_at` speak of query heads (a group stands for all of its).
Positions are a pruning ratio (of the units present at the start) or a step number; `step_for`,
`mask_at`, `head_mask_at` and `pruned_heads_at` are the one place that turns either into a step.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from gnorm_kernels.durable import sync_folder
from gnorm_kernels.heads.layout import Head
from gnorm_kernels.heads.units import unit_of

__all__ = ["Step", "Trajectory", "TRAJECTORY_FORMAT", "TRAJECTORY_VERSION", "check_ratio"]

TRAJECTORY_FORMAT = "gnorm-kernels/trajectory"
TRAJECTORY_VERSION = 2  # 2: unit, num_kv_heads, initially_pruned_heads (absent in 1: a "head" run)


def check_ratio(ratio: Any) -> float:
    """`ratio` as a float, checked to be a number in [0, 1] (a fraction of heads pruned)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"ratio must be a number in [0, 1] (the fraction of heads to prune), got {ratio!r}")
    return float(ratio)


def _grid_to_json(grid: torch.Tensor | None) -> list | None:
    if grid is None:
        return None
    return [[None if math.isnan(v) else v for v in row] for row in grid.tolist()]


def _grid_from_json(data: list | None) -> torch.Tensor | None:
    if data is None:
        return None
    return torch.tensor([[float("nan") if v is None else v for v in row] for row in data], dtype=torch.float32)


def _labels_to_json(labels: list[int] | None) -> str | list[int] | None:
    """Per-example classes compactly: a digit string when every class is 0-9, else a list (floats too)."""
    if labels is None or not all(isinstance(v, int) and 0 <= v <= 9 for v in labels):
        return labels
    return "".join(map(str, labels))


def _labels_from_json(data: str | list | None) -> list[int] | None:
    if data is None:
        return None
    return data if isinstance(data, list) else [int(c) for c in data]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass
class Step:
    """One pruning step. Step 0 is the model as given (nothing pruned)."""

    step: int
    pruned: list[Head]  # (layer, original unit) removed at this step, in the order chosen
    metrics: dict[str, float] | None  # evaluate() on the evaluation batches; None if not evaluated
    params: int
    encoder_params: int
    size_mb: float
    seconds: float  # scoring + choosing + pruning
    eval_seconds: float = 0.0
    scores: torch.Tensor | None = None  # unit grid this step's choice was made on (NaN: pruned)
    # per evaluation example (evaluated steps of runs with per_example=True; what the bootstrap of evidence.comparison
    # resamples): the predicted and true class, or for text alone each window's summed next-token NLL and token count
    predictions: list[int] | list[float] | None = None
    golds: list[int] | None = None

    @property
    def accuracy(self) -> float | None:
        """The step's accuracy, or None when the step was not evaluated."""
        return None if self.metrics is None else self.metrics.get("accuracy")

    @property
    def perplexity(self) -> float | None:
        """A causal LM's perplexity after the step, or None (not evaluated, or not an LM)."""
        return None if self.metrics is None else self.metrics.get("perplexity")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (score grids as nested lists, NaN written as null; per-example
        classes, where kept, as digit strings)."""
        data = {
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
        if self.predictions is not None:
            data.update(predictions=_labels_to_json(self.predictions), golds=_labels_to_json(self.golds))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Step":
        """The step `to_dict` wrote."""
        return cls(
            step=int(data["step"]),
            pruned=[(int(l), int(h)) for l, h in data["pruned"]],
            metrics=data.get("metrics"),
            params=int(data.get("params", 0)),
            encoder_params=int(data.get("encoder_params", 0)),
            size_mb=float(data.get("size_mb", 0.0)),
            seconds=float(data.get("seconds", 0.0)),
            eval_seconds=float(data.get("eval_seconds", 0.0)),
            scores=_grid_from_json(data.get("scores")),
            predictions=_labels_from_json(data.get("predictions")),
            golds=_labels_from_json(data.get("golds")),
        )


@dataclass
class Trajectory:
    """The record of one pruning run: order, scores, metrics, sizes and times per step.

    `num_heads` is the model's query heads per layer; `unit` says what the run pruned ("head", or
    "kv_group" with `num_kv_heads` groups per layer), and `initially_pruned` lists the units gone
    before the run (a "kv_group" run lists the query heads gone before it in
    `initially_pruned_heads` too, since a group may have been only partly present)."""

    method: str
    family: str
    num_layers: int
    num_heads: int
    greedy: bool
    prune_first: str
    settings: dict[str, Any]
    steps: list[Step] = field(default_factory=list)
    initially_pruned: list[Head] = field(default_factory=list)
    budget: int = 0  # units this run is to prune
    complete: bool = False
    unit: str = "head"
    num_kv_heads: int = 0  # key/value heads per layer of a grouped-query model; 0 = num_heads
    initially_pruned_heads: list[Head] = field(default_factory=list)  # query heads ("kv_group" runs)

    def __post_init__(self) -> None:
        if self.unit not in ("head", "kv_group"):
            raise ValueError(f"unit must be 'head' or 'kv_group', got {self.unit!r}")
        if self.unit == "kv_group" and not 0 < self.num_kv_heads < self.num_heads:
            raise ValueError(
                f"a kv_group trajectory needs 0 < num_kv_heads < num_heads, got {self.num_kv_heads} and {self.num_heads}"
            )

    # ---- shape and order
    _RENAMED = {"num_units": "units_per_layer", "num_heads_total": "units_total", "num_heads_start": "units_at_start",
                "heads_pruned": "units_pruned"}  # 0.1's names, which said "heads" for KV groups too

    def __getattr__(self, name: str) -> Any:
        if name in Trajectory._RENAMED:
            new = Trajectory._RENAMED[name]
            warnings.warn(f"Trajectory.{name} is now Trajectory.{new}", DeprecationWarning, stacklevel=2)
            return getattr(self, new)
        raise AttributeError(f"'Trajectory' object has no attribute {name!r}")

    @property
    def units_per_layer(self) -> int:
        """Units per layer: query heads, or key/value groups for a "kv_group" run."""
        return self.num_heads if self.unit == "head" else self.num_kv_heads

    @property
    def shape(self) -> tuple[int, int]:
        """(num_layers, units_per_layer): the original grid of the run's unit ([L, H] for heads)."""
        return (self.num_layers, self.units_per_layer)

    @property
    def units_total(self) -> int:
        """Units on the original grid (heads, or key/value groups for a "kv_group" run)."""
        return self.num_layers * self.units_per_layer

    @property
    def units_at_start(self) -> int:
        """Units present when the run started (units_total unless the model came pruned)."""
        return self.units_total - len(self.initially_pruned)

    @property
    def order(self) -> list[Head]:
        """Every unit pruned, first to last."""
        return [h for s in self.steps for h in s.pruned]

    @property
    def units_pruned(self) -> list[int]:
        """Cumulative number of units pruned after each step (0 for step 0)."""
        out, n = [], 0
        for s in self.steps:
            n += len(s.pruned)
            out.append(n)
        return out

    # ---- ratio -> step -> mask
    def step_for(self, ratio: float) -> int:
        """The last step after which at most round(ratio * units_at_start) heads are pruned.

        With one head per step that step prunes exactly that many; with several it is the last
        step not past the ratio. Past the end of the run it is the last step."""
        wanted = round(check_ratio(ratio) * self.units_at_start)
        step = 0
        for index, count in enumerate(self.units_pruned):
            if count <= wanted:
                step = index
        return step

    def _heads_for(self, ratio: float | None, steps: int | None) -> list[Head]:
        if (ratio is None) == (steps is None):
            raise ValueError("give exactly one of ratio= (fraction of heads pruned) or steps= (pruning steps)")
        order = self.order
        if steps is not None:
            if not isinstance(steps, int) or not 0 <= steps < len(self.steps):
                raise ValueError(f"steps must be an integer in 0..{len(self.steps) - 1} for this trajectory, got {steps!r}")
            return [h for s in self.steps[1 : steps + 1] for h in s.pruned]
        ratio = check_ratio(ratio)
        n = round(ratio * self.units_at_start)
        if n > len(order):
            raise ValueError(
                f"ratio {ratio} means {n} heads pruned, but this trajectory covers only {len(order)} "
                f"of {self.units_at_start} heads"
            )
        return order[:n]

    def mask_at(self, ratio: float | None = None, *, steps: int | None = None) -> torch.Tensor:
        """Bool kept mask on the unit grid (`shape`) after pruning the first
        round(ratio * units_at_start) units of the order, or after `steps` steps (units pruned
        before the run count as gone)."""
        mask = torch.ones(self.shape, dtype=torch.bool)
        for l, h in [*self.initially_pruned, *self._heads_for(ratio, steps)]:
            mask[l, h] = False
        return mask

    def head_mask_at(self, ratio: float | None = None, *, steps: int | None = None) -> torch.Tensor:
        """Bool [L, num_heads] kept mask of the query heads at that point: `mask_at` for a "head"
        run; for a "kv_group" run each pruned group's query heads are gone (query heads h with
        h // (num_heads / num_kv_heads) = g), and so are the heads gone before the run."""
        if self.unit == "head":
            return self.mask_at(ratio, steps=steps)
        size = self.num_heads // self.num_kv_heads
        mask = self.mask_at(ratio, steps=steps).repeat_interleave(size, dim=1)
        for l, h in self.initially_pruned_heads:
            mask[l, h] = False
        return mask

    def pruned_heads_at(self, ratio: float | None = None, *, steps: int | None = None) -> dict[int, list[int]]:
        """{layer: [original query heads]} pruned at that point (including any pruned before the
        run; a key/value group as all its query heads), ready for `gnorm_kernels.heads.pruning.prune_heads`."""
        return _gone(self.head_mask_at(ratio, steps=steps))

    def pruned_units_at(self, ratio: float | None = None, *, steps: int | None = None) -> dict[int, list[int]]:
        """{layer: [original units]} pruned at that point: heads for a "head" run (as
        `pruned_heads_at`), key/value groups for a "kv_group" run (for `prune_kv_groups`)."""
        return _gone(self.mask_at(ratio, steps=steps))

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
        for n, s in zip(self.units_pruned, self.steps):
            if s.metrics is not None and s.metrics.get(metric) is not None:
                xs.append(n / self.units_at_start)
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
        divided by that range: the curve's mean value (of log-perplexity: `data.tasks.auc_values`)."""
        xs, ys = self.curve(metric)
        if len(xs) < 2 or xs[-1] <= 0:
            return float("nan")
        ys = np.log(ys) if metric == "perplexity" else ys  # the rule of data.tasks.auc_values (no data import here)
        return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2) / xs[-1])

    # ---- JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, tagged with `TRAJECTORY_FORMAT` and `TRAJECTORY_VERSION`."""
        return {
            "format": TRAJECTORY_FORMAT,
            "version": TRAJECTORY_VERSION,
            "method": self.method,
            "family": self.family,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "units_total": self.units_total,
            "unit": self.unit,
            "num_kv_heads": self.num_kv_heads,
            "greedy": self.greedy,
            "prune_first": self.prune_first,
            "settings": self.settings,
            "initially_pruned": [list(h) for h in self.initially_pruned],
            "initially_pruned_heads": [list(h) for h in self.initially_pruned_heads],
            "budget": self.budget,
            "complete": self.complete,
            "steps": [s.to_dict() for s in self.steps],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Trajectory":
        """The trajectory `to_dict` wrote; a dict missing the essential keys is refused."""
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
            unit=str(data.get("unit", "head")),
            num_kv_heads=int(data.get("num_kv_heads", 0)),
            initially_pruned_heads=[(int(l), int(h)) for l, h in data.get("initially_pruned_heads", [])],
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the trajectory as JSON, atomically and durably: a temporary file flushed to disk,
        renamed into place, the folder synced; a crash leaves the previous record or this one."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=1, allow_nan=False)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it the usual mode
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        sync_folder(path.parent)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trajectory":
        """Read a trajectory `save` wrote."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        return cls.from_dict(data)

    def __repr__(self) -> str:
        acc = [s.accuracy for s in self.steps if s.accuracy is not None]
        tail = f", accuracy {acc[0]:.4f} -> {acc[-1]:.4f}" if acc else ""
        return (f"Trajectory({self.method!r}, {self.family} {self.num_layers}x{self.units_per_layer}, "
                f"{len(self.order)} of {self.units_at_start} {unit_of(self.unit).words} pruned in {len(self.steps) - 1} steps{tail})")


def _gone(mask: torch.Tensor) -> dict[int, list[int]]:
    """{row: [columns]} where the bool mask is False."""
    out: dict[int, list[int]] = {}
    for l, h in (~mask).nonzero().tolist():
        out.setdefault(l, []).append(h)
    return out
