"""Named settings that reproduce someone else's setup: ``preset="authors"``.

The project's defaults are deterministic: Gnorm scores the model in eval mode (dropout off) on
256 calibration examples in batches of 32. The "authors" preset is the Greedy-Gnorm authors'
revised code instead: scoring in train mode (dropout on, so the scores are random; here seeded,
so a run repeats), batches of 128 drawn from 1000 training examples, the logits-norm objective
averaged per batch, one head per step, and the score grid z-scored (monotone: the pruning order
is the same as without it, only the recorded scores change).

A preset changes two things: the scorer settings of the Gnorm-scored methods (`apply_preset`,
used by `gnorm_kernels.engine.driver.run_method`), and the calibration data (`Preset.calibration_size`
and `Preset.batch_size`, which whoever makes the batches applies: `gnorm_kernels.evidence.comparison.
calibration_draws` and the `gnorm --preset` flag do). Other methods keep their own scorers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import nn

from gnorm_kernels.data.batches import Batch, model_device
from gnorm_kernels.scoring.gnorm import gnorm_scores

if TYPE_CHECKING:
    from gnorm_kernels.scoring.registry import Method

__all__ = ["Preset", "PRESETS", "get_preset", "apply_preset", "zscore", "authors_gnorm_scores"]


@dataclass(frozen=True)
class Preset:
    """A named group of settings (see the module docstring for what each one touches)."""

    name: str
    description: str
    calibration_size: int  # calibration examples
    batch_size: int  # calibration batch size
    heads_per_step: int
    gnorm_options: Mapping[str, Any] = field(default_factory=dict)  # options of the Gnorm scorer


def zscore(grid: torch.Tensor) -> torch.Tensor:
    """(score - mean) / standard deviation over the heads present (finite entries); NaN stays
    NaN, and a grid with no spread becomes zeros. Monotone, so it never changes an order."""
    grid = grid.float()
    present = torch.isfinite(grid)
    if not present.any():
        return grid.clone()
    values = grid[present]
    spread = values.std(correction=0)
    out = grid.clone()
    out[present] = (values - values.mean()) / spread if spread > 0 else torch.zeros_like(values)
    return out


def authors_gnorm_scores(model: nn.Module, batches: Sequence[Batch], *, seed: int = 0, **options: Any) -> torch.Tensor:
    """Gnorm scores as the authors' revised code makes them: `gnorm_scores` with `options`
    (``dropout=True`` puts the model in train mode), z-scored. The dropout masks come from a
    private random stream seeded with `seed`, so a run repeats and torch's global stream is
    left alone."""
    device = model_device(model)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return zscore(gnorm_scores(model, batches, **options))


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "authors",
            "the Greedy-Gnorm authors' revised code: train-mode (dropout) scoring, 1000 calibration "
            "examples in batches of 128, logits-norm objective, one head per step, z-scored scores",
            calibration_size=1000,
            batch_size=128,
            heads_per_step=1,
            gnorm_options={"objective": "logits_norm", "aggregation": "per_batch", "dropout": True},
        ),
    )
}


def get_preset(name: str | Preset) -> Preset:
    """The preset registered under `name` (see `PRESETS`); a `Preset` is returned as it is."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}") from None


def apply_preset(
    preset: str | Preset | None,
    method: Method,
    scorer_options: Mapping[str, Any],
    heads_per_step: int,
    *,
    keep_heads_per_step: bool = False,
    seed: int = 0,
) -> tuple[str | Any, dict[str, Any], int]:
    """(scorer, scorer options, heads per step) for running `method` under `preset` (None: as given).

    Gnorm-scored methods get `authors_gnorm_scores` with the preset's options under the caller's
    (an option the caller gives wins); every method gets the preset's heads per step unless
    `keep_heads_per_step` (the caller chose one). Other scorers are left as they are."""
    if preset is None:
        return method.scorer, dict(scorer_options), heads_per_step
    spec = get_preset(preset)
    if not keep_heads_per_step:
        heads_per_step = spec.heads_per_step
    if method.scorer != "gnorm":
        return method.scorer, dict(scorer_options), heads_per_step
    options = {**spec.gnorm_options, "seed": seed, **scorer_options}
    return authors_gnorm_scores, options, heads_per_step
