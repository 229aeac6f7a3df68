"""Several processes: torch.distributed reductions and FSDP2-sharded models.

Names resolve on first use (`gnorm_kernels._lazy`): importing one module never imports its siblings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gnorm_kernels._lazy import lazy_exports

if TYPE_CHECKING:
    from gnorm_kernels.parallel.distributed import (
        CHECK_TIMEOUT,
        DistributedError,
        all_reduce_,
        all_reduce_max,
        all_reduce_sums,
        broadcast_object,
        check_same,
        data_parallel,
        fingerprint_model,
        from_main,
        gather_shards,
        init_from_env,
        is_distributed,
        is_initialised,
        is_main,
        is_sharded,
        main_first,
        mean_over_ranks,
        rank,
        shard,
        shutdown,
        where,
        world_size,
    )
    from gnorm_kernels.parallel.fsdp import MaskedPruning, ShardedQKVGradients, row_shard, save_pruned_sharded, shard_model, unsharded_copy

__getattr__, __dir__, __all__, _EXPORTS = lazy_exports(__name__, __file__)
