"""Heads in the code: the family registry, head layouts, pruning units, masking and physical pruning."""

from __future__ import annotations

from gnorm_kernels.heads.families import Family, family_of, head_layout, is_causal_lm, register_family, stack_module, supported_families
from gnorm_kernels.heads.grouped_attention import GROUPED_IMPLEMENTATIONS, KV_INDEX, set_kv_index, use_grouped_attention
from gnorm_kernels.heads.layout import KEPT_HEADS_ATTR, KEPT_KV_HEADS_ATTR, AttentionBlock, Head, HeadLayout
from gnorm_kernels.heads.masking import check_mask, mask_heads
from gnorm_kernels.heads.pruning import normalize_head_map, prune_heads, prune_kv_groups, record_pruning
from gnorm_kernels.heads.surgery import owner_of, replace_module, select_conv1d, select_linear, subclass_with_forward
from gnorm_kernels.heads.units import UNITS, Unit, check_unit, group_mean, group_sum, kept_unit_mask, kv_positions, unit_qkv_norms, unit_shape

__all__ = [
    "Head",
    "AttentionBlock",
    "HeadLayout",
    "KEPT_HEADS_ATTR",
    "KEPT_KV_HEADS_ATTR",
    "is_causal_lm",
    "Family",
    "family_of",
    "head_layout",
    "register_family",
    "stack_module",
    "supported_families",
    "UNITS",
    "Unit",
    "check_unit",
    "group_mean",
    "group_sum",
    "kept_unit_mask",
    "kv_positions",
    "unit_qkv_norms",
    "unit_shape",
    "select_linear",
    "select_conv1d",
    "owner_of",
    "replace_module",
    "subclass_with_forward",
    "GROUPED_IMPLEMENTATIONS",
    "KV_INDEX",
    "set_kv_index",
    "use_grouped_attention",
    "mask_heads",
    "check_mask",
    "prune_heads",
    "prune_kv_groups",
    "normalize_head_map",
    "record_pruning",
]
