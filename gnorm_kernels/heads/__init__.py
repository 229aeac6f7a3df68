"""Heads in the code: the family registry, head layouts, pruning units, masking and physical pruning.

Names resolve on first use (`gnorm_kernels._lazy`): importing one module never imports its siblings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gnorm_kernels._lazy import lazy_exports

if TYPE_CHECKING:
    from gnorm_kernels.heads.families import Family, family_of, head_layout, is_causal_lm, register_family, stack_module, supported_families
    from gnorm_kernels.heads.grouped_attention import GROUPED_IMPLEMENTATIONS, KV_INDEX, set_kv_index, use_grouped_attention
    from gnorm_kernels.heads.layout import KEPT_HEADS_ATTR, KEPT_KV_HEADS_ATTR, AttentionBlock, Head, HeadLayout
    from gnorm_kernels.heads.masking import check_mask, mask_heads
    from gnorm_kernels.heads.pruning import normalize_head_map, prune_heads, prune_kv_groups, record_pruning
    from gnorm_kernels.heads.surgery import owner_of, replace_module, select_conv1d, select_linear, subclass_with_forward
    from gnorm_kernels.heads.units import HEAD, KV_GROUP, UNITS, PruningUnit, UnitName, kv_positions, unit_of

__getattr__, __dir__, __all__, _EXPORTS = lazy_exports(__name__, __file__)
