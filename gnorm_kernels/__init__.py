"""gnorm_kernels: gradient-norm attention-head pruning for BERT-family transformers.

The public API, re-exported from the submodules. Names resolve on first use, so
``import gnorm_kernels`` stays cheap and the command line starts quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # architectures, masking, pruning
    "head_layout": "arch",
    "HeadLayout": "arch",
    "register_family": "arch",
    "supported_families": "arch",
    "mask_heads": "masking",
    "prune_heads": "pruning",
    "save_pruned": "pruning",
    "load_pruned": "pruning",
    # data, models, evaluation
    "load_task": "data",
    "Task": "data",
    "Example": "data",
    "load_model": "models",
    "train_tiny": "models",
    "TinyRecipe": "models",
    "synthetic_tokenizer": "data",
    "evaluate": "evaluate",
    "parameter_count": "evaluate",
    "model_size_mb": "evaluate",
    "measure_latency": "evaluate",
    "single_head_ablation": "evaluate",
    # scores and pruning drivers
    "gnorm_scores": "scores",
    "attention_entropy": "scores",
    "taylor_importance": "scores",
    "random_scores": "scores",
    "get_scorer": "scores",
    "greedy_prune": "greedy",
    "static_prune": "greedy",
    "Trajectory": "greedy",
    "run_method": "greedy",
    "get_method": "scores",
    "METHODS": "scores",
    "qkv_gradient_norms": "scores",
    # plots
    "plot_accuracy_curves": "viz",
    "plot_head_grid": "viz",
    "plot_rank_changes": "viz",
    # kernels
    "head_block_norms": "kernels",
    "qkv_head_norms": "kernels",
    "qkv_head_scores": "kernels",
    "per_example_head_norms": "kernels",
    "per_example_qkv_head_norms": "kernels",
    "combine_qkv_norms": "kernels",
    "QKVGradientBuffer": "kernels",
    # widgets
    "head_toggle_grid": "widgets",
    "pruning_explorer": "widgets",
    # intra-attention pruning
    "grain_prune": "grain",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gnorm_kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"gnorm_kernels.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
