"""Checkpoint folders: formats (a registry the format loaders join), pruned checkpoints, manifests.

Names resolve on first use (`gnorm_kernels._lazy`): importing one module never imports its siblings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gnorm_kernels._lazy import lazy_exports

if TYPE_CHECKING:
    from gnorm_kernels.checkpoints.formats import (
        FORMATS,
        check_manifest,
        checkpoint_format,
        file_sha256,
        load_checkpoint,
        load_weights,
        model_from_config,
        progress_bars,
        read_config,
        read_weights,
        register_format,
        weight_files,
        write_checkpoint,
        write_manifest,
    )
    from gnorm_kernels.checkpoints.pruned import load_pruned, save_pruned

__getattr__, __dir__, __all__, _EXPORTS = lazy_exports(__name__, __file__)
