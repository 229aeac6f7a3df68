"""`grain_prune`: the whole GRAIN recipe in one call.

Distil a student from a fine-tuned teacher while masking its units down to the target density on
GRAIN's schedule, rank units by their (EMA-smoothed, structure-regularised) Taylor importance
read from the L_CE gradient alone, then shrink the student for real and measure it.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from gnorm_kernels.data.batches import Batch
from gnorm_kernels.grain.attention import DEFAULT_IMPL, check_impl
from gnorm_kernels.grain.distill import Distiller, separated_backward
from gnorm_kernels.grain.importance import (
    READS,
    ImportanceEMA,
    select_units,
    structure_regularize,
    unit_taylor_importance,
)
from gnorm_kernels.grain.schedule import DensitySchedule
from gnorm_kernels.grain.shrink import GrainStructure, shrink_model
from gnorm_kernels.grain.units import Units, mask_units, unit_layout
from gnorm_kernels.heads.families import stack_module
from gnorm_kernels.progress import progress_bar
from gnorm_kernels.schedules import lr_factor

__all__ = ["grain_prune", "GrainReport", "check_pair"]



@dataclass
class GrainReport:
    """What a GRAIN run reached: density, size, accuracy and CPU/GPU latency against the teacher."""

    density_target: float
    density: float  # kept fraction of the prunable encoder weights (all units)
    encoder_params: int  # every encoder parameter left (biases and LayerNorms included)
    encoder_params_dense: int
    heads_kept: int
    heads_total: int
    steps: int
    train_seconds: float
    structure: GrainStructure
    accuracy: float | None = None
    teacher_accuracy: float | None = None
    latency_s: float | None = None
    teacher_latency_s: float | None = None
    masked_vs_shrunk: float | None = None  # max |logit difference| on one batch
    history: list[dict[str, float]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def encoder_fraction(self) -> float:
        return self.encoder_params / self.encoder_params_dense

    @property
    def speedup(self) -> float | None:
        if self.latency_s is None or self.teacher_latency_s is None:
            return None
        return self.teacher_latency_s / self.latency_s

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data (the structure as `GrainStructure.to_dict`)."""
        return {
            "density_target": self.density_target,
            "density": self.density,
            "encoder_params": self.encoder_params,
            "encoder_params_dense": self.encoder_params_dense,
            "encoder_fraction": self.encoder_fraction,
            "heads_kept": self.heads_kept,
            "heads_total": self.heads_total,
            "accuracy": self.accuracy,
            "teacher_accuracy": self.teacher_accuracy,
            "latency_s": self.latency_s,
            "teacher_latency_s": self.teacher_latency_s,
            "speedup": self.speedup,
            "masked_vs_shrunk": self.masked_vs_shrunk,
            "steps": self.steps,
            "train_seconds": self.train_seconds,
            "settings": self.settings,
            "structure": self.structure.to_dict(),
        }

    def as_dict(self) -> dict[str, Any]:
        """The same as `to_dict` (the package's name for this); kept for existing callers."""
        return self.to_dict()

    def __str__(self) -> str:
        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.2f}%"

        def ms(x: float | None) -> str:
            return "n/a" if x is None else f"{1000 * x:.2f} ms"

        speed = "n/a" if self.speedup is None else f"{self.speedup:.2f}x"
        return "\n".join(
            [
                f"GRAIN at density {self.density_target:g}: {self.steps} steps in {self.train_seconds:.0f} s",
                f"  units kept          {pct(self.density)} of the prunable encoder weights",
                f"  encoder parameters  {self.encoder_params:,} of {self.encoder_params_dense:,} "
                f"({pct(self.encoder_fraction)})",
                f"  heads with values   {self.heads_kept} of {self.heads_total}",
                f"  accuracy            {pct(self.accuracy)} (teacher {pct(self.teacher_accuracy)})",
                f"  latency per batch   {ms(self.latency_s)} (teacher {ms(self.teacher_latency_s)}; speed-up {speed})",
            ]
        )


# --------------------------------------------------------------------------- checks


def check_pair(teacher: nn.Module, student: nn.Module) -> None:
    """Raise if the student cannot be distilled from the teacher (vocabulary, labels, depth)."""
    for name, model in (("teacher", teacher), ("student", student)):
        if not isinstance(model, nn.Module) or not hasattr(model, "config"):
            raise TypeError(f"{name} must be a transformers model, got {type(model).__name__}")
    tc, sc = teacher.config, student.config
    checks = (
        ("vocabulary size", "vocab_size"),
        ("label count", "num_labels"),
        ("number of layers", "num_hidden_layers"),
    )
    for what, attr in checks:
        t, s = getattr(tc, attr, None), getattr(sc, attr, None)
        if t != s:
            raise ValueError(f"teacher and student must have the same {what} ({attr}): teacher {t}, student {s}")


def _check_batches(batches: Any, what: str) -> list[Batch]:
    if isinstance(batches, Mapping) or not isinstance(batches, Sequence):
        raise TypeError(f"{what} must be a list of batches (dicts with input_ids), got {type(batches).__name__}")
    batches = list(batches)
    if not batches:
        raise ValueError(f"{what} is empty: expected at least one batch")
    for i, b in enumerate(batches):
        if not isinstance(b, Mapping) or "input_ids" not in b:
            raise ValueError(f"{what}[{i}] must be a dict with at least input_ids, got {type(b).__name__}")
    return batches


def _batch_order(num_batches: int, steps: int, seed: int) -> list[int]:
    """Batch indices for `steps` steps: epochs of the batches, each epoch in a new shuffled order."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < steps:
        epoch = list(range(num_batches))
        rng.shuffle(epoch)
        order += epoch
    return order[:steps]


# --------------------------------------------------------------------------- the driver


def grain_prune(
    teacher: nn.Module,
    student: nn.Module | None,
    data: Sequence[Batch],
    *,
    density: float,
    eval_data: Sequence[Batch] | None = None,
    epochs: float = 1.0,
    steps: int | None = None,
    lr: float = 3e-5,
    weight_decay: float = 0.0,
    warmup: float = 0.05,
    grad_clip: float | None = 1.0,
    dropout: float | None = 0.1,
    temperature: float = 8.0,
    alpha: float = 0.3,
    beta: float = 0.998,
    structure_regularization: bool = True,
    reads: str = "official",
    prune_start: float = 0.2,
    prune_end: float = 0.4,
    impl: str = DEFAULT_IMPL,
    metric: str = "accuracy",
    latency_batches: Sequence[Batch] | None = None,
    measure_speed: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> tuple[nn.Module, GrainReport]:
    """Prune `student` (a copy of `teacher` when None) to `density` of its encoder units with GRAIN.

    `data` are the training batches (model kwargs; labels are not used: the teacher supplies
    the targets), `eval_data` optional held-out batches for accuracy. Training runs for `steps`
    optimiser steps, or `epochs` passes over `data`; AdamW at `lr` (GRAIN's 3e-5 for BERT-base;
    a small model trained at a high rate wants more, e.g. 1e-3 for the tiny default), linear
    warm-up over `warmup` of the steps, then linear decay. Neither model passed in is modified: the
    student is copied first. Returns the shrunk student (eval mode) and a `GrainReport`.

    `dropout` is the student's dropout while it trains (GRAIN fine-tunes BERT with its usual 0.1;
    None keeps the model's own). It matters: without dropout a student that starts as a copy of
    the teacher has exactly zero distillation loss and gradients, so every unit would look equally
    unimportant until pruning starts. The shrunk model gets the model's own dropout back.

    Everything is checked before training starts: the density, the teacher/student pair, the
    batches, and that the schedule has room for a distillation-only phase and a pruning ramp.
    """
    # ---- checks, all before any training
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    if reads not in READS:
        raise ValueError(f"reads must be one of {list(READS)}, got {reads!r}")
    student_in = teacher if student is None else student
    check_pair(teacher, student_in)
    data = _check_batches(data, "data")
    if eval_data is not None:
        eval_data = _check_batches(eval_data, "eval_data")
    if steps is None:
        if epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {epochs}")
        steps = int(math.ceil(epochs * len(data)))
    schedule = DensitySchedule(float(density), int(steps), prune_start, prune_end)
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1) or None, got {dropout}")
    impl = check_impl(impl)
    settings = dict(
        steps=steps, lr=lr, weight_decay=weight_decay, warmup=warmup, grad_clip=grad_clip, dropout=dropout,
        temperature=temperature, alpha=alpha, beta=beta, structure_regularization=structure_regularization,
        reads=reads, prune_start=prune_start, prune_end=prune_end, impl=impl, seed=seed,
    )

    student = copy.deepcopy(student_in)
    layout = unit_layout(student)
    own_dropout = _set_dropout(student, dropout)
    masks = Units.full(layout)
    device = next(student.parameters()).device
    distiller = Distiller(teacher, layout.hidden_size, layout.num_layers, temperature=temperature).to(device)
    params = [p for p in student.parameters() if p.requires_grad] + list(distiller.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup_steps = max(1, int(warmup * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup_steps, steps))
    ema = ImportanceEMA(beta)
    order = _batch_order(len(data), steps, seed)

    teacher_was_training = teacher.training
    teacher.eval()
    student.train()
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = progress_bar(range(steps), desc=f"GRAIN to density {density:g}", disable=not progress, mininterval=1.0)
    # dropout is seeded; the caller's random state is left as it was
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        try:
            for step in bar:
                batch = data[order[step]]
                optimizer.zero_grad(set_to_none=True)
                with mask_units(student, masks, layout):
                    loss_ce, loss_hidden, _ = distiller.losses(student, batch)
                    collect = step < schedule.end_step  # importance matters until the structure is final
                    read = (lambda: unit_taylor_importance(layout, reads=reads)) if collect else (lambda: None)
                    scores = separated_backward(loss_ce, loss_hidden, read)
                if scores is not None:
                    ema.update(scores)
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                optimizer.step()
                scheduler.step()
                if schedule.pruning(step):
                    ranked = ema.value
                    if structure_regularization:
                        ranked = structure_regularize(ranked, masks, alpha)
                    masks = select_units(ranked, masks, schedule(step))
                if step % 25 == 0 or step == steps - 1:
                    record = {
                        "step": step,
                        "target_density": schedule(step),
                        "density": masks.density(),
                        "loss_ce": loss_ce.item(),
                        "loss_hidden": loss_hidden.item(),
                        "lr": scheduler.get_last_lr()[0],
                    }
                    history.append(record)
                    bar.set_postfix(
                        density=f"{record['density']:.3f}", ce=f"{record['loss_ce']:.4f}",
                        hid=f"{record['loss_hidden']:.4f}",
                    )
        finally:
            bar.close()
            teacher.train(teacher_was_training)
    train_seconds = time.perf_counter() - start

    # ---- shrink for real, and check it against the masked model on one batch
    _restore_dropout(own_dropout)
    student.eval()
    probe = {k: v.to(device) for k, v in (eval_data or data)[0].items() if k != "labels"}
    with torch.no_grad():
        with mask_units(student, masks, layout):
            masked_logits = student(**probe).logits
        shrink_model(student, masks, impl=impl)
        shrunk_logits = student(**probe).logits
    structure = GrainStructure.from_masks(masks)
    report = GrainReport(
        density_target=float(density),
        density=masks.density(),
        encoder_params=_encoder_params(student),
        encoder_params_dense=_encoder_params(teacher),
        heads_kept=int(masks.heads_kept().sum()),
        heads_total=layout.num_layers * layout.num_heads,
        steps=steps,
        train_seconds=train_seconds,
        structure=structure,
        masked_vs_shrunk=float((masked_logits - shrunk_logits).abs().max()),
        history=history,
        settings=settings,
    )
    if eval_data is not None:
        from gnorm_kernels.evaluation import evaluate

        report.accuracy = evaluate(student, eval_data, metric=metric)["accuracy"]
        report.teacher_accuracy = evaluate(teacher, eval_data, metric=metric)["accuracy"]
    if measure_speed:
        from gnorm_kernels.evaluation import measure_latency

        timing = list(latency_batches) if latency_batches is not None else list((eval_data or data)[:4])
        report.teacher_latency_s = measure_latency(teacher, timing, repeats=3)["median_s"]
        report.latency_s = measure_latency(student, timing, repeats=3)["median_s"]
    return student, report


def _set_dropout(model: nn.Module, p: float | None) -> list[tuple[nn.Dropout, float]]:
    """Set every dropout of `model` to `p` (None: leave them); returns what to restore."""
    saved = [(m, m.p) for m in model.modules() if isinstance(m, nn.Dropout)]
    if p is not None:
        for m, _ in saved:
            m.p = p
    return saved


def _restore_dropout(saved: list[tuple[nn.Dropout, float]]) -> None:
    for m, p in saved:
        m.p = p


def _encoder_params(model: nn.Module) -> int:
    return sum(p.numel() for p in stack_module(model).parameters())
