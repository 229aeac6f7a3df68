"""Models: `load_model` (the one router) and the offline models with their shared training and cache.

Names resolve on first use (`gnorm_kernels._lazy`): importing one module never imports its siblings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gnorm_kernels._lazy import lazy_exports

if TYPE_CHECKING:
    from gnorm_kernels.models.loading import load_model, max_positions
    from gnorm_kernels.models.packaged import PackagedModel
    from gnorm_kernels.models.sentence import (
        MINILM,
        SentenceEmbedder,
        embedding_agreement,
        load_minilm,
        pair_retrieval,
        sentence_embeddings,
    )
    from gnorm_kernels.models.tiny_bert import TinyRecipe, ensure_tiny, tiny_cache_path, train_tiny
    from gnorm_kernels.models.tiny_lm import LMRecipe, ensure_tiny_lm, load_tiny_lm, tiny_lm_cache_path, train_tiny_lm
    from gnorm_kernels.models.training import TrainingStuck, cache_dir, cached_model, entry_problem, torch_threads

__getattr__, __dir__, __all__, _EXPORTS = lazy_exports(__name__, __file__)
