"""Head scores: objectives, the Greedy-Gnorm score, baselines, the registry of scorers and methods, presets.

Names resolve on first use (`gnorm_kernels._lazy`): importing one module never imports its siblings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gnorm_kernels._lazy import lazy_exports

if TYPE_CHECKING:
    from gnorm_kernels.scoring.baselines import ENTROPY_EPS, attention_entropy, random_scores, taylor_importance
    from gnorm_kernels.scoring.gnorm import AGGREGATIONS, gnorm_scores, qkv_gradient_norms
    from gnorm_kernels.scoring.objectives import (
        OBJECTIVES,
        NonFiniteGradientError,
        Objective,
        check_batches,
        model_logits,
        objective_value,
        progress_over,
        scoring_mode,
    )
    from gnorm_kernels.scoring.per_example import QKV_PARTS, Norms, Sweep, check_finite_norms, per_example_qkv_norms, with_bias_norms
    from gnorm_kernels.scoring.presets import PRESETS, Preset, apply_preset, authors_gnorm_scores, get_preset, zscore
    from gnorm_kernels.scoring.registry import METHODS, SCORERS, Method, Scorer, get_method, get_scorer

__getattr__, __dir__, __all__, _EXPORTS = lazy_exports(__name__, __file__)
