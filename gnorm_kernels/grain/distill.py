"""Knowledge distillation for GRAIN, and the gradient separation that goes with it.

* L_CE: cross-entropy between the teacher's and the student's logits, both softened by a
  temperature τ (8 in GRAIN; no τ² factor, no hard labels).
* L_Hidden: mean squared error between teacher hidden states and student hidden states passed
  through trainable Linear(D_s, D_t) maps initialised to the identity, at every other layer
  (0, 2, …, L; 0 is the embedding output), padding positions ignored.
* Gradient separation: unit importance is read from the gradient of L_CE alone; the optimiser
  steps on the gradient of L_CE + L_Hidden. Two backward passes over one graph do both.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "soft_cross_entropy",
    "distill_layers",
    "HiddenStateMaps",
    "hidden_state_mse",
    "Distiller",
    "separated_backward",
]

_T = TypeVar("_T")


def soft_cross_entropy(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 8.0
) -> torch.Tensor:
    """Mean over the batch of −Σ softmax(teacher/τ) · log softmax(student/τ)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"teacher and student logits must have the same shape, got {tuple(teacher_logits.shape)} "
            f"and {tuple(student_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    target = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return -(target * log_probs).sum(-1).mean()


def distill_layers(num_layers: int, every: int = 2) -> list[int]:
    """Hidden-state indices to match: 0, every, 2·every, …, and always the last layer."""
    if num_layers < 1 or every < 1:
        raise ValueError(f"expected num_layers >= 1 and every >= 1, got {num_layers} and {every}")
    layers = list(range(0, num_layers + 1, every))
    if layers[-1] != num_layers:
        layers.append(num_layers)
    return layers


class HiddenStateMaps(nn.Module):
    """One trainable Linear(student_size, teacher_size) per matched layer, initialised to the identity."""

    def __init__(self, layers: Sequence[int], student_size: int, teacher_size: int | None = None) -> None:
        super().__init__()
        teacher_size = teacher_size or student_size
        self.layers = list(layers)
        self.maps = nn.ModuleList(nn.Linear(student_size, teacher_size) for _ in self.layers)
        with torch.no_grad():
            for m in self.maps:
                m.weight.zero_()
                m.weight[:, : min(student_size, teacher_size)].fill_diagonal_(1.0)
                m.bias.zero_()


def hidden_state_mse(
    student_states: Sequence[torch.Tensor],
    teacher_states: Sequence[torch.Tensor],
    attention_mask: torch.Tensor | None,
    maps: HiddenStateMaps,
) -> torch.Tensor:
    """Σ over the matched layers of the MSE between mapped student and teacher states (non-padding tokens)."""
    total = student_states[0].new_zeros(())
    if attention_mask is None:
        weights = None
    else:
        weights = attention_mask.to(student_states[0].dtype)[..., None]
        count = weights.sum().clamp_min(1.0) * student_states[0].shape[-1]
    for layer, linear in zip(maps.layers, maps.maps):
        if layer >= len(student_states) or layer >= len(teacher_states):
            raise ValueError(
                f"cannot match hidden state {layer}: the student has {len(student_states)} and the "
                f"teacher {len(teacher_states)}"
            )
        diff = (linear(student_states[layer]) - teacher_states[layer].detach()) ** 2
        total = total + (diff.mean() if weights is None else (diff * weights).sum() / count)
    return total


def _model_inputs(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if k != "labels"}


class Distiller(nn.Module):
    """Teacher outputs and the two GRAIN losses for one batch. Its parameters are the hidden maps."""

    def __init__(
        self, teacher: nn.Module, student_size: int, num_layers: int, *, temperature: float = 8.0, every: int = 2
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.teacher = [teacher]  # a list, so the teacher is not registered as a submodule
        self.temperature = temperature
        self.maps = HiddenStateMaps(distill_layers(num_layers, every), student_size, int(teacher.config.hidden_size))

    def losses(
        self, student: nn.Module, batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L_CE, L_Hidden, student logits) for `batch`; the teacher runs without gradients."""
        teacher = self.teacher[0]
        device = next(student.parameters()).device
        inputs = _model_inputs(batch, device)
        with torch.no_grad():
            t_out = teacher(**inputs, output_hidden_states=True)
        s_out = student(**inputs, output_hidden_states=True)
        loss_ce = soft_cross_entropy(s_out.logits, t_out.logits, self.temperature)
        loss_hidden = hidden_state_mse(
            s_out.hidden_states, t_out.hidden_states, inputs.get("attention_mask"), self.maps
        )
        return loss_ce, loss_hidden, s_out.logits


def separated_backward(loss_ce: torch.Tensor, loss_hidden: torch.Tensor, read: Callable[[], _T]) -> _T:
    """Backward L_CE, call `read()` (e.g. unit importance from the gradients), backward L_Hidden.

    Gradients must be zero on entry; on return they hold ∂(L_CE + L_Hidden)/∂w.
    """
    loss_ce.backward(retain_graph=loss_hidden.requires_grad)
    value = read()
    if loss_hidden.requires_grad:
        loss_hidden.backward()
    return value
