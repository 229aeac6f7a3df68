"""Objectives that reduce large tensors accumulate in float64: on a real LM's logits (tens of
millions of elements) a float32 reduction is off by about 0.1% on this CPU build."""

from __future__ import annotations

import torch

from gnorm_kernels.scoring.objectives import objective_value


def _large_logits() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(4, 500, 12_800) * 3 + 0.5  # 25.6M elements, a real LM's [B, T, vocab] scale


def test_the_logits_norm_of_a_large_tensor_matches_a_float64_reference():
    logits = _large_logits()
    batch = {"input_ids": torch.zeros(4, 500, dtype=torch.long)}
    reference = logits.double().norm().item()
    whole = objective_value("logits_norm", logits, batch, 0, False, causal=True).item()
    assert abs(whole / reference - 1) < 1e-6
    per_example = objective_value("logits_norm", logits, batch, 0, True, causal=True)
    expected = logits.double().flatten(1).norm(dim=1)
    torch.testing.assert_close(per_example.double(), expected, rtol=1e-6, atol=0)


def test_the_next_token_loss_of_a_large_batch_matches_a_float64_reference():
    logits = _large_logits()
    ids = torch.randint(0, logits.shape[-1], (4, 500))
    mask = torch.ones(4, 500, dtype=torch.long)
    mask[1, 400:] = 0  # padding is left out
    batch = {"input_ids": ids, "attention_mask": mask}
    log_probs = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    keep = (mask[:, 1:] * mask[:, :-1]).double()
    reference = (-(log_probs * keep).sum() / keep.sum()).item()
    value = objective_value("loss", logits, batch, 0, False, causal=True).item()
    assert abs(value / reference - 1) < 1e-6
