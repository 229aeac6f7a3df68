"""The pruning engine: one greedy/static driver, the choice of units, the trajectory record, resuming."""

from __future__ import annotations

from gnorm_kernels.engine.choice import budget, check_count, choose, unit_words
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
from gnorm_kernels.engine.trajectory import TRAJECTORY_FORMAT, TRAJECTORY_VERSION, Step, Trajectory, check_ratio

__all__ = [
    "Step",
    "Trajectory",
    "TRAJECTORY_FORMAT",
    "TRAJECTORY_VERSION",
    "check_ratio",
    "check_count",
    "unit_words",
    "budget",
    "choose",
    "batches_fingerprint",
    "model_fingerprint",
    "describe_setting",
    "resume_run",
    "ResumeMismatch",
    "EVALUATION_KEYS",
    "FINGERPRINTS",
    "greedy_prune",
    "static_prune",
    "run_method",
]
