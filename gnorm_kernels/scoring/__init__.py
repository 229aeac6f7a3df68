"""Head scores: objectives, the Greedy-Gnorm score, baselines, the registry of scorers and methods, presets."""

from __future__ import annotations

from gnorm_kernels.scoring.baselines import ENTROPY_EPS, attention_entropy, random_scores, taylor_importance
from gnorm_kernels.scoring.gnorm import AGGREGATIONS, gnorm_scores, qkv_gradient_norms
from gnorm_kernels.scoring.objectives import (
    OBJECTIVES,
    Batch,
    NonFiniteGradientError,
    Objective,
    check_batches,
    model_logits,
    objective_value,
    progress_over,
    scoring_mode,
)
from gnorm_kernels.scoring.per_example import QKV_PARTS, Norms, check_finite_norms, per_example_qkv_norms, with_bias_norms
from gnorm_kernels.scoring.presets import PRESETS, Preset, apply_preset, authors_gnorm_scores, get_preset, zscore
from gnorm_kernels.scoring.registry import METHODS, SCORERS, Method, Scorer, get_method, get_scorer

__all__ = [
    "OBJECTIVES",
    "Batch",
    "NonFiniteGradientError",
    "Objective",
    "check_batches",
    "model_logits",
    "objective_value",
    "progress_over",
    "scoring_mode",
    "Norms",
    "QKV_PARTS",
    "per_example_qkv_norms",
    "check_finite_norms",
    "with_bias_norms",
    "AGGREGATIONS",
    "gnorm_scores",
    "qkv_gradient_norms",
    "ENTROPY_EPS",
    "attention_entropy",
    "random_scores",
    "taylor_importance",
    "METHODS",
    "SCORERS",
    "Method",
    "Scorer",
    "get_method",
    "get_scorer",
    "Preset",
    "PRESETS",
    "get_preset",
    "apply_preset",
    "zscore",
    "authors_gnorm_scores",
]
