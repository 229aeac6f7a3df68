"""The pruning engine: one greedy/static driver, the choice of units, the trajectory record, resuming.

Names resolve on first use (`gnorm_kernels._lazy`): importing one module never imports its siblings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gnorm_kernels._lazy import lazy_exports

if TYPE_CHECKING:
    from gnorm_kernels.engine.choice import budget, check_count, choose
    from gnorm_kernels.engine.driver import greedy_prune, run_method, static_prune
    from gnorm_kernels.engine.resume import (
        EVALUATION_KEYS,
        FINGERPRINTS,
        ResumeMismatch,
        batches_fingerprint,
        describe_setting,
        model_fingerprint,
        resume_run,
    )
    from gnorm_kernels.engine.settings import PruneSettings
    from gnorm_kernels.engine.trajectory import TRAJECTORY_FORMAT, TRAJECTORY_VERSION, Step, Trajectory, check_ratio

__getattr__, __dir__, __all__, _EXPORTS = lazy_exports(__name__, __file__)
