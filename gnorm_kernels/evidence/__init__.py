"""Evidence: statistics, comparisons with intervals and their reports (figures and widgets live in
`gnorm_kernels.evidence.viz` and `gnorm_kernels.evidence.widgets`, which need the plots/notebooks extras).

Names resolve on first use (`gnorm_kernels._lazy`): importing one module never imports its siblings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gnorm_kernels._lazy import lazy_exports

if TYPE_CHECKING:
    from gnorm_kernels.evidence.ablation import (
        MaskingStudy,
        ablation_counts,
        accuracy_text,
        change_sentence,
        contrast_verdicts,
        correct_under_mask,
        drop_grid,
    )
    from gnorm_kernels.evidence.calibration import calibration_draws
    from gnorm_kernels.evidence.comparison import (
        DEFAULT_BUDGETS,
        DEFAULT_RANGES,
        RESAMPLES,
        bootstrap_evidence,
        budget_key,
        range_key,
    )
    from gnorm_kernels.evidence.ranks import (
        average_ranks,
        correlation_sentence,
        prune_positions,
        rank_correlations,
        spearman,
        tied_heads,
    )
    from gnorm_kernels.evidence.report import (
        TABLE_FRACTIONS,
        ablation_table,
        comparison_table,
        evidence_markdown,
        findings,
        key_label,
        markdown_table,
        masks_figure,
        save_figure,
        write_ablation_csv,
        write_csv,
    )
    from gnorm_kernels.evidence.runs import order_against_static, parameter_split
    from gnorm_kernels.evidence.sentences import difference_sentence, proportion_text, ratio_sentence
    from gnorm_kernels.evidence.statistics import (
        Estimate,
        Evidence,
        Verdict,
        bootstrap_p_value,
        compare_means,
        format_interval,
        holm_verdicts,
        metric_on_resamples,
        percentile_interval,
        perplexity_evidence,
        point_weights,
        range_weights,
        resample_counts,
        resample_runs,
        seed_difference,
        wilson_interval,
        with_wilson,
    )
    from gnorm_kernels.evidence.timing import DecodeLoop, Timings, compare_latency, compare_timings, forward_pass

__getattr__, __dir__, __all__, _EXPORTS = lazy_exports(__name__, __file__)
