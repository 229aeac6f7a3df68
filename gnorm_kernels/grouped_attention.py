"""Attention for grouped-query layers whose groups became uneven after head pruning.

In grouped-query attention (Llama, Qwen2, Mistral) query head h reads key/value head
h // (H / H_kv), and transformers repeats each key/value head `num_key_value_groups` times to
line them up with the query heads. Removing single query heads can leave groups of different
sizes, which no single repeat factor describes. Such a layer keeps a ``kv_index`` buffer: for each
query head still present, the row (among the key/value heads still present) that it reads.

This module registers two attention functions with transformers' `AttentionInterface`
("gnorm_grouped_sdpa", "gnorm_grouped_eager", each with the mask format of its base). They expand
the cached key/value heads to the query heads by ``kv_index`` (a gather, no copy of modeling code)
and then run ordinary attention; layers without ``kv_index`` go straight to the base function.
The KV cache keeps only the key/value heads that are present, which is where the memory goes.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GROUPED_IMPLEMENTATIONS", "KV_INDEX", "set_kv_index", "use_grouped_attention"]

KV_INDEX = "kv_index"
# base implementation -> the registered name of its grouped variant
GROUPED_IMPLEMENTATIONS = {"sdpa": "gnorm_grouped_sdpa", "eager": "gnorm_grouped_eager"}
_REGISTERED = False


def _expand(module: nn.Module, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    index = getattr(module, KV_INDEX, None)
    if index is None:
        return key, value
    return key.index_select(1, index), value.index_select(1, index)


def _eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Plain attention: softmax(q k^T * scaling + mask) v, weights returned (for entropy)."""
    groups = int(getattr(module, "num_key_value_groups", 1) or 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def _grouped_sdpa(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    key, value = _expand(module, key, value)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _grouped_eager(module, query, key, value, attention_mask, **kwargs):
    key, value = _expand(module, key, value)
    return _eager(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    for base, name, function in (("sdpa", GROUPED_IMPLEMENTATIONS["sdpa"], _grouped_sdpa),
                                 ("eager", GROUPED_IMPLEMENTATIONS["eager"], _grouped_eager)):
        AttentionInterface.register(name, function)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    _REGISTERED = True


def use_grouped_attention(model: nn.Module) -> None:
    """Switch `model` to the grouped variant of its attention implementation (idempotent).

    Only "sdpa" and "eager" have grouped variants; anything else is refused with what to use.
    """
    _register()
    config = model.config
    current = getattr(config, "_attn_implementation", None) or "eager"
    if current in GROUPED_IMPLEMENTATIONS.values():
        return
    if current not in GROUPED_IMPLEMENTATIONS:
        raise ValueError(
            f"uneven key/value groups need the 'sdpa' or 'eager' attention implementation; this model uses "
            f"{current!r}: load it with attn_implementation='sdpa' (or 'eager') before pruning single query heads"
        )
    model.set_attn_implementation(GROUPED_IMPLEMENTATIONS[current])


def set_kv_index(attention: nn.Module, index: torch.Tensor | None) -> None:
    """Give a grouped attention module its query-head -> key/value-row map (None removes it)."""
    if index is None:
        attention._buffers.pop(KV_INDEX, None)
        return
    device = next(attention.parameters()).device
    attention.register_buffer(KV_INDEX, index.to(device=device, dtype=torch.long), persistent=False)
