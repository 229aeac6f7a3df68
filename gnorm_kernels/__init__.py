"""gnorm_kernels: gradient-norm attention-head pruning (Greedy-Gnorm, GRAIN) for transformers.

The public API. Names resolve on first use, so ``import gnorm_kernels`` stays cheap and the
command line starts quickly. The block under ``TYPE_CHECKING`` is the one list of exports: type
checkers, IDEs and ``help()`` read it as imports, and `__getattr__` resolves each name from the
module that block names (`gnorm_kernels._lazy`, the mechanism every subpackage shares).

The subpackages, lowest first: ``kernels`` (block-norm kernels), ``heads`` (families, layouts,
masking, pruning), ``data``, ``checkpoints``, ``parallel``, ``scoring``, ``models``, ``engine``
(the greedy/static driver), ``evidence`` (statistics, comparisons, reports, figures, widgets),
``grain`` (intra-attention pruning) and ``cli``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gnorm_kernels._aliases import install as _install_aliases
from gnorm_kernels._lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from gnorm_kernels.checkpoints.pruned import load_pruned, save_pruned
    from gnorm_kernels.data.lm_tasks import synthetic_lm_task
    from gnorm_kernels.data.loading import load_task
    from gnorm_kernels.data.pairs import pair_batches, paragraph_halves
    from gnorm_kernels.data.synthetic import synthetic_tokenizer
    from gnorm_kernels.data.tasks import Example, Task
    from gnorm_kernels.engine.driver import greedy_prune, run_method, static_prune
    from gnorm_kernels.engine.trajectory import Trajectory
    from gnorm_kernels.evaluation import evaluate, measure_latency, model_size_mb, parameter_count, single_head_ablation
    from gnorm_kernels.evidence.comparison import compare
    from gnorm_kernels.evidence.report import comparison_table, findings
    from gnorm_kernels.evidence.statistics import compare_means, format_interval, holm_verdicts, wilson_interval
    from gnorm_kernels.evidence.timing import compare_latency, compare_timings
    from gnorm_kernels.evidence.viz import plot_accuracy_curves, plot_head_grid, plot_interval_curves, plot_rank_changes
    from gnorm_kernels.evidence.widgets import head_toggle_grid, pruning_explorer
    from gnorm_kernels.grain import grain_prune
    from gnorm_kernels.heads.families import head_layout, register_family, supported_families
    from gnorm_kernels.heads.layout import HeadLayout
    from gnorm_kernels.heads.masking import mask_heads
    from gnorm_kernels.heads.pruning import prune_heads, prune_kv_groups
    from gnorm_kernels.healing import heal
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
    from gnorm_kernels.models.sentence import SentenceEmbedder, embedding_agreement, pair_retrieval, sentence_embeddings
    from gnorm_kernels.models.tiny_bert import TinyRecipe, train_tiny
    from gnorm_kernels.models.tiny_lm import LMRecipe
    from gnorm_kernels.scoring.baselines import attention_entropy, random_scores, taylor_importance
    from gnorm_kernels.scoring.gnorm import gnorm_scores, qkv_gradient_norms
    from gnorm_kernels.scoring.registry import METHODS, get_method, get_scorer


__getattr__, __dir__, __all__, _EXPORTS = lazy_exports(__name__, __file__)
_install_aliases()
