"""What a batch holds: the model's inputs and the targets beside them.

A batch is a dict of tensors: the model's inputs (``input_ids``, ``attention_mask``, and
``token_type_ids`` for BERT-style pairs) and targets that never go into the forward pass:

* classifiers: ``labels`` [B], class ids;
* causal LMs: no targets for perplexity (the next token is the target); a labelled LM task adds
  ``labels`` [B], ``label_token_ids`` [C] (the one-token verdict word of each class) and
  ``verdict_index`` [B] (where each row's verdict token sits), so the verdict predicted at the
  position before it is the task's prediction.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

__all__ = ["Batch", "MODEL_INPUTS", "model_inputs", "model_device"]

Batch = Mapping[str, torch.Tensor]  # one batch: model inputs and targets

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: Mapping[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """The forward-pass keyword arguments of a batch, moved to `device` (targets left out)."""
    if "input_ids" not in batch:
        raise ValueError(f"a batch needs 'input_ids'; got keys {sorted(batch)}")
    return {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
