"""Healing a pruned model by distillation from the model it was cut from.

Pruning without fine-tuning loses some of what the removed heads did. `heal` trains the pruned
model (the student) to give the unpruned model's (the teacher's) output distribution on
calibration text: for a causal LM the next-token distribution at every non-padding position, for a
classifier its class logits. The loss is GRAIN's soft cross-entropy (`grain.distill.
soft_cross_entropy`, no tau^2 factor, no hard labels); `hidden_weight` > 0 adds GRAIN's hidden-state
MSE through identity-initialised maps (`grain.distill.HiddenStateMaps`). Only what the pruned model
kept is trained: its weights are the physically pruned ones, so removed heads cannot come back.

With `checkpoint=path` the state (student, optimiser, maps, step) is written atomically every
`save_every` steps and after the last; a call with the same path and the same student, teacher,
batches and settings carries on from there and ends where an uninterrupted run ends.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from gnorm_kernels.data.batches import Batch
from gnorm_kernels.engine.resume import ResumeMismatch, batches_fingerprint, model_fingerprint
from gnorm_kernels.grain.distill import (
    HiddenStateMaps,
    distill_layers,
    hidden_state_mse,
    soft_cross_entropy,
)

__all__ = ["distillation_loss", "heal"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      attention_mask: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Soft cross-entropy over the positions that are not padding ([B, T, V] logits, a causal
    LM), or over the examples ([B, C], a classifier)."""
    if student_logits.dim() == 3 and attention_mask is not None:
        keep = attention_mask.bool()
        student_logits, teacher_logits = student_logits[keep], teacher_logits[keep]
    return soft_cross_entropy(student_logits, teacher_logits, temperature)


def _inputs(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    skip = ("labels", "label_token_ids", "verdict_index")
    return {k: v.to(device) for k, v in batch.items() if k not in skip}


def heal(
    student: nn.Module,
    teacher: nn.Module,
    batches: Sequence[Batch],
    *,
    steps: int = 200,
    lr: float = 1e-4,
    temperature: float = 1.0,
    hidden_weight: float = 0.0,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    checkpoint: str | os.PathLike | None = None,
    save_every: int = 50,
    max_steps: int | None = None,
    progress: bool = True,
) -> nn.Module:
    """Distil `teacher` into `student` for `steps` AdamW steps at `lr`, cycling through `batches`
    in order; returns `student` (trained in place, left in eval mode).

    `temperature` softens both distributions (1: match the teacher's probabilities as they are).
    `hidden_weight` weighs the hidden-state MSE of every other layer (0: logits only; needs equal
    layer counts). `checkpoint` makes the run resumable (see the module docstring); `max_steps`
    stops this call after that many new steps (resume later with the same checkpoint).
    """
    batches = list(batches)
    if not batches or any("input_ids" not in b for b in batches):
        raise ValueError("heal needs a non-empty list of batches with input_ids (calibration text)")
    for name, value, low in (("steps", steps, 0), ("save_every", save_every, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not (lr > 0 and temperature > 0 and hidden_weight >= 0):
        raise ValueError(f"expected lr > 0, temperature > 0, hidden_weight >= 0; got {lr}, {temperature}, {hidden_weight}")
    device = next(student.parameters()).device
    teacher.eval()
    maps = None
    if hidden_weight > 0:
        layers = int(student.config.num_hidden_layers)
        if layers != int(teacher.config.num_hidden_layers):
            raise ValueError(f"hidden_weight > 0 matches layer by layer: the student has {layers} layers, "
                             f"the teacher {teacher.config.num_hidden_layers}")
        maps = HiddenStateMaps(distill_layers(layers), int(student.config.hidden_size),
                               int(teacher.config.hidden_size)).to(device)
    params = [p for p in student.parameters() if p.requires_grad] + ([*maps.parameters()] if maps else [])
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    settings = {"steps": steps, "lr": lr, "temperature": temperature, "hidden_weight": hidden_weight,
                "weight_decay": weight_decay, "grad_clip": grad_clip,
                "student": model_fingerprint(student), "teacher": model_fingerprint(teacher),
                "batches": batches_fingerprint(batches)}
    done = _resume(checkpoint, settings, student, optimizer, maps)
    bar = tqdm(total=steps, initial=done, desc="heal", unit="step", disable=not progress)
    new = 0
    student.train()
    try:
        while done < steps and (max_steps is None or new < max_steps):
            batch = _inputs(batches[done % len(batches)], device)
            with torch.no_grad():
                t_out = teacher(**batch, output_hidden_states=maps is not None)
            s_out = student(**batch, output_hidden_states=maps is not None)
            loss = distillation_loss(s_out.logits, t_out.logits, batch.get("attention_mask"), temperature)
            if maps is not None:
                loss = loss + hidden_weight * hidden_state_mse(s_out.hidden_states, t_out.hidden_states,
                                                               batch.get("attention_mask"), maps)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"heal, step {done + 1}: the distillation loss is {loss.item()} "
                                         "(lr too high?)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            done += 1
            new += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if checkpoint is not None and (done % save_every == 0 or done == steps):
                _save(checkpoint, settings, done, student, optimizer, maps)
    finally:
        bar.close()
        student.eval()
    if checkpoint is not None and new and done % save_every and done < steps:  # stopped by max_steps
        _save(checkpoint, settings, done, student, optimizer, maps)
    return student


def _save(path: str | os.PathLike, settings: dict[str, Any], done: int, student: nn.Module,
          optimizer: torch.optim.Optimizer, maps: nn.Module | None) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"settings": settings, "done": done, "student": student.state_dict(),
                "optimizer": optimizer.state_dict(), "maps": maps.state_dict() if maps else None}, tmp)
    os.replace(tmp, path)


def _resume(path: str | os.PathLike | None, settings: dict[str, Any], student: nn.Module,
            optimizer: torch.optim.Optimizer, maps: nn.Module | None) -> int:
    """Steps already done by the run saved at `path` (0 if none), its state loaded into ours."""
    if path is None or not Path(path).is_file():
        return 0
    saved = torch.load(path, map_location="cpu", weights_only=True)
    differences = [f"{k}: {saved['settings'].get(k)!r} saved, {v!r} now" for k, v in settings.items()
                   if saved["settings"].get(k) != v]
    if differences:
        raise ResumeMismatch(path, differences)
    student.load_state_dict(saved["student"])
    optimizer.load_state_dict(saved["optimizer"])
    if maps is not None and saved["maps"] is not None:
        maps.load_state_dict(saved["maps"])
    return int(saved["done"])
