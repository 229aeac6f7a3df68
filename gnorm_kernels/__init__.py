"""gnorm_kernels: gradient-norm attention-head pruning (Greedy-Gnorm, GRAIN) for transformers.

The public API. Names resolve on first use, so ``import gnorm_kernels`` stays cheap and the
command line starts quickly. The block under ``TYPE_CHECKING`` is the one list of exports: type
checkers, IDEs and ``help()`` read it as imports, and `__getattr__` resolves each name from the
module that block names (read from this file's own source, once).

The subpackages, lowest first: ``kernels`` (block-norm kernels), ``heads`` (families, layouts,
masking, pruning), ``data``, ``checkpoints``, ``parallel``, ``scoring``, ``models``, ``engine``
(the greedy/static driver), ``evidence`` (statistics, comparisons, reports, figures, widgets),
``grain`` (intra-attention pruning) and ``cli``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gnorm_kernels._aliases import install as _install_aliases

__version__ = "0.1.0"

if TYPE_CHECKING:
    from gnorm_kernels.checkpoints.pruned import load_pruned, save_pruned
    from gnorm_kernels.data.lm_tasks import synthetic_lm_task
    from gnorm_kernels.data.loading import load_task
    from gnorm_kernels.data.synthetic import synthetic_tokenizer
    from gnorm_kernels.data.tasks import Example, Task
    from gnorm_kernels.engine.driver import greedy_prune, run_method, static_prune
    from gnorm_kernels.engine.trajectory import Trajectory
    from gnorm_kernels.evaluate import evaluate, measure_latency, model_size_mb, parameter_count, single_head_ablation
    from gnorm_kernels.evidence.compare import compare
    from gnorm_kernels.evidence.report import comparison_table
    from gnorm_kernels.evidence.viz import plot_accuracy_curves, plot_head_grid, plot_rank_changes
    from gnorm_kernels.evidence.widgets import head_toggle_grid, pruning_explorer
    from gnorm_kernels.grain import grain_prune
    from gnorm_kernels.heads.families import head_layout, register_family, supported_families
    from gnorm_kernels.heads.layout import HeadLayout
    from gnorm_kernels.heads.masking import mask_heads
    from gnorm_kernels.heads.pruning import prune_heads, prune_kv_groups
    from gnorm_kernels.kernels import (
        QKVGradientBuffer,
        combine_qkv_norms,
        head_block_norms,
        per_example_head_norms,
        per_example_qkv_head_norms,
        qkv_head_norms,
        qkv_head_scores,
    )
    from gnorm_kernels.models.loading import load_model
    from gnorm_kernels.models.tiny_bert import TinyRecipe, train_tiny
    from gnorm_kernels.models.tiny_lm import LMRecipe
    from gnorm_kernels.scoring.baselines import attention_entropy, random_scores, taylor_importance
    from gnorm_kernels.scoring.gnorm import gnorm_scores, qkv_gradient_norms
    from gnorm_kernels.scoring.registry import METHODS, get_method, get_scorer


def _exports() -> dict[str, str]:
    """name -> module, read from the TYPE_CHECKING block above (the one list of exports)."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    found.update({alias.asname or alias.name: stmt.module for alias in stmt.names})
    return found


_EXPORTS = _exports()
__all__ = sorted(_EXPORTS)
_install_aliases()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gnorm_kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
