"""Run a block of code with a model in a given train/eval mode, then put every module back.

Scoring, evaluation, timing and distillation each need a mode of their own (eval for
deterministic scores and metrics, train for dropout-on scoring); this is the one place that
saves and restores it. Module by module, so a model whose submodules were in mixed modes comes
back exactly as it was.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

__all__ = ["model_mode"]


@contextmanager
def model_mode(model: nn.Module, training: bool = False) -> Iterator[nn.Module]:
    """`model` in train (`training=True`) or eval mode inside the block; every submodule's own
    mode restored afterwards, also when the block raises."""
    saved = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for module, was_training in saved:
            module.training = was_training
