"""Short hashes of what a pruning run depends on: its model's weights and its data.

A trajectory records them in its settings, so that a run resumed from a checkpoint can check it
continues on the same model, calibration set and evaluation set (`gnorm_kernels.greedy`).
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import torch
from torch import nn

__all__ = ["batch_fingerprint", "model_fingerprint", "EVALUATION_KEYS", "FINGERPRINTS"]

# the calibration fingerprint hashes token ids and masks only (as trajectories have always
# recorded it); the evaluation set's also covers what decides its metric
EVALUATION_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")

# the fingerprints of a trajectory's settings, in words for a refused resume
FINGERPRINTS = {
    "model_fingerprint": "the model's weights",
    "calibration_fingerprint": "the calibration set",
    "evaluation_fingerprint": "the evaluation set",
}


def batch_fingerprint(
    batches: Sequence[Mapping[str, torch.Tensor]], keys: Sequence[str] = ("input_ids", "attention_mask")
) -> str:
    """A short hash of the batches' tensors under `keys` (token ids and masks by default)."""
    digest = hashlib.sha256()
    for batch in batches:
        for key in keys:
            if key in batch:
                digest.update(batch[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of every weight and buffer: name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
