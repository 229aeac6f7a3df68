"""gnorm_kernels: gradient-norm attention-head pruning (Greedy-Gnorm, GRAIN) for transformers.

The public API, re-exported from the submodules. Names resolve on first use, so
``import gnorm_kernels`` stays cheap and the command line starts quickly; the block under
``TYPE_CHECKING`` names the same objects for type checkers, IDEs and ``help()``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from gnorm_kernels.arch import HeadLayout, head_layout, register_family, supported_families
    from gnorm_kernels.masking import mask_heads
    from gnorm_kernels.pruning import load_pruned, prune_heads, prune_kv_groups, save_pruned
    from gnorm_kernels.data import load_task
    from gnorm_kernels.tasks import Example, Task
    from gnorm_kernels.synthetic import synthetic_tokenizer
    from gnorm_kernels.models import TinyRecipe, load_model, train_tiny
    from gnorm_kernels.tiny_lm import LMRecipe, synthetic_lm_task
    from gnorm_kernels.evaluate import evaluate, measure_latency, model_size_mb, parameter_count, single_head_ablation
    from gnorm_kernels.gnorm import gnorm_scores, qkv_gradient_norms
    from gnorm_kernels.baselines import attention_entropy, random_scores, taylor_importance
    from gnorm_kernels.scores import METHODS, get_method, get_scorer
    from gnorm_kernels.greedy import greedy_prune, run_method, static_prune
    from gnorm_kernels.heal import heal
    from gnorm_kernels.trajectory import Trajectory
    from gnorm_kernels.report import comparison_table
    from gnorm_kernels.evidence import compare
    from gnorm_kernels.viz import plot_accuracy_curves, plot_head_grid, plot_rank_changes
    from gnorm_kernels.kernels import QKVGradientBuffer, combine_qkv_norms, head_block_norms, per_example_head_norms, per_example_qkv_head_norms, qkv_head_norms, qkv_head_scores
    from gnorm_kernels.widgets import head_toggle_grid, pruning_explorer
    from gnorm_kernels.grain import grain_prune

_EXPORTS = {
    "head_layout": "arch",
    "HeadLayout": "arch",
    "register_family": "arch",
    "supported_families": "arch",
    "mask_heads": "masking",
    "prune_heads": "pruning",
    "prune_kv_groups": "pruning",
    "save_pruned": "pruning",
    "load_pruned": "pruning",
    "load_task": "data",
    "Task": "tasks",
    "Example": "tasks",
    "synthetic_tokenizer": "synthetic",
    "load_model": "models",
    "LMRecipe": "tiny_lm",
    "synthetic_lm_task": "tiny_lm",
    "train_tiny": "models",
    "TinyRecipe": "models",
    "evaluate": "evaluate",
    "parameter_count": "evaluate",
    "model_size_mb": "evaluate",
    "measure_latency": "evaluate",
    "single_head_ablation": "evaluate",
    "gnorm_scores": "gnorm",
    "qkv_gradient_norms": "gnorm",
    "attention_entropy": "baselines",
    "taylor_importance": "baselines",
    "random_scores": "baselines",
    "get_scorer": "scores",
    "get_method": "scores",
    "METHODS": "scores",
    "greedy_prune": "greedy",
    "static_prune": "greedy",
    "run_method": "greedy",
    "heal": "heal",
    "Trajectory": "trajectory",
    "comparison_table": "report",
    "compare": "evidence",
    "plot_accuracy_curves": "viz",
    "plot_head_grid": "viz",
    "plot_rank_changes": "viz",
    "head_block_norms": "kernels",
    "qkv_head_norms": "kernels",
    "qkv_head_scores": "kernels",
    "per_example_head_norms": "kernels",
    "per_example_qkv_head_norms": "kernels",
    "combine_qkv_norms": "kernels",
    "QKVGradientBuffer": "kernels",
    "head_toggle_grid": "widgets",
    "pruning_explorer": "widgets",
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
