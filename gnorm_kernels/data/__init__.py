"""Data: tasks and batches, data files, labels, the offline grammar and LM text tasks.

Names resolve on first use (`gnorm_kernels._lazy`): importing one module never imports its siblings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gnorm_kernels._lazy import lazy_exports

if TYPE_CHECKING:
    from gnorm_kernels.data.batches import MODEL_INPUTS, Batch, model_device, model_inputs
    from gnorm_kernels.data.labels import class_id, fit_labels, label_ids, placeholder_names
    from gnorm_kernels.data.lm_tasks import (
        LM_SPECIAL_TOKENS,
        VERDICT_CUE,
        VERDICTS,
        LMTask,
        lm_batches,
        lm_text,
        lm_tokenizer,
        synthetic_lm_task,
    )
    from gnorm_kernels.data.loading import GLUE_TASKS, load_task, task_from_file, task_from_files, task_from_glue
    from gnorm_kernels.data.pairs import pair_batches, paragraph_halves
    from gnorm_kernels.data.synthetic import (
        FILM_NOUNS,
        INTENSIFIERS,
        MAX_WORDS,
        NEGATIVE,
        NEGATORS,
        OPENERS,
        OTHER_NEGATIVE,
        OTHER_NOUNS,
        OTHER_POSITIVE,
        P_FILM_SEGMENT,
        P_INTENSIFIER,
        P_NEGATION,
        P_OPENER,
        P_OTHER_ADJECTIVE,
        P_TRAILING_OTHER,
        PERSONAL_NOUNS,
        POSITIVE,
        SEGMENT_COUNT_WEIGHTS,
        SPECIAL_TOKENS,
        VERBS,
        synthetic_fingerprint,
        synthetic_review,
        synthetic_task,
        synthetic_tokenizer,
        synthetic_vocabulary,
        word_level_tokenizer,
    )
    from gnorm_kernels.data.tables import (
        FILE_EXTENSIONS,
        PAIR_TEXT_COLUMNS,
        SINGLE_TEXT_COLUMNS,
        DataWarning,
        labelled_rows,
        lines_text,
        pick_text_columns,
        read_rows,
        read_table,
        rows_with_labels,
    )
    from gnorm_kernels.data.tasks import METRICS, SPLITS, Example, Task

__getattr__, __dir__, __all__, _EXPORTS = lazy_exports(__name__, __file__)
