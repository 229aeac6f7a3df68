"""Evidence: statistics, comparisons with intervals and their reports (figures and widgets live in
`gnorm_kernels.evidence.viz` and `gnorm_kernels.evidence.widgets`, which need the plots/notebooks extras)."""

from __future__ import annotations

from gnorm_kernels.evidence.calibration import calibration_draws
from gnorm_kernels.evidence.compare import (
    DEFAULT_BUDGETS,
    DEFAULT_RANGES,
    RESAMPLES,
    Estimate,
    Evidence,
    bootstrap_evidence,
    budget_key,
    range_key,
)
from gnorm_kernels.evidence.report import (
    TABLE_FRACTIONS,
    ablation_table,
    comparison_table,
    evidence_markdown,
    markdown_table,
    masks_figure,
    save_figure,
    write_ablation_csv,
    write_csv,
)
from gnorm_kernels.evidence.statistics import metric_on_resamples, point_weights, range_weights, resample_counts

__all__ = [
    "resample_counts",
    "metric_on_resamples",
    "point_weights",
    "range_weights",
    "calibration_draws",
    "DEFAULT_BUDGETS",
    "DEFAULT_RANGES",
    "RESAMPLES",
    "Estimate",
    "Evidence",
    "bootstrap_evidence",
    "budget_key",
    "range_key",
    "TABLE_FRACTIONS",
    "comparison_table",
    "markdown_table",
    "evidence_markdown",
    "write_csv",
    "masks_figure",
    "ablation_table",
    "write_ablation_csv",
    "save_figure",
]
