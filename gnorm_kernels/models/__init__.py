"""Models: `load_model` (the one router) and the offline models with their shared training and cache."""

from __future__ import annotations

from gnorm_kernels.models.loading import load_model, max_positions
from gnorm_kernels.models.tiny_bert import TinyRecipe, ensure_tiny, tiny_cache_path, train_tiny
from gnorm_kernels.models.tiny_lm import LMRecipe, ensure_tiny_lm, load_tiny_lm, tiny_lm_cache_path, train_tiny_lm
from gnorm_kernels.models.training import TrainingStuck, cache_dir, cached_model, entry_problem, torch_threads

__all__ = [
    "TrainingStuck",
    "cache_dir",
    "cached_model",
    "entry_problem",
    "torch_threads",
    "TinyRecipe",
    "train_tiny",
    "tiny_cache_path",
    "ensure_tiny",
    "LMRecipe",
    "train_tiny_lm",
    "ensure_tiny_lm",
    "load_tiny_lm",
    "tiny_lm_cache_path",
    "load_model",
    "max_positions",
]
