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


def _packed_decode(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """One decoding step (one query position) without copying the cache: each key/value head's
    query heads become the query rows of one attention call against that head's cached keys
    (groups padded to the largest with a zero query, whose output is dropped)."""
    pack, unpack = module.kv_pack, module.kv_unpack
    b, hq, _, d = query.shape
    hkv = key.shape[1]
    rows = torch.cat([query[:, :, 0], query.new_zeros(b, 1, d)], dim=1).index_select(1, pack)
    rows = rows.view(b, hkv, -1, d)  # [B, H_kv, largest group, d]
    mask = attention_mask[..., : key.shape[-2]] if attention_mask is not None else None
    out = nn.functional.scaled_dot_product_attention(rows, key, value, attn_mask=mask, scale=scaling)
    out = out.reshape(b, -1, d).index_select(1, unpack)  # back to one row per query head
    return out.unsqueeze(1), None  # [B, 1, H, d], the layout attention functions return


def _grouped_sdpa(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if getattr(module, KV_INDEX, None) is not None and query.shape[2] == 1 and not module.training:
        return _packed_decode(module, query, key, value, attention_mask, **kwargs)
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
    """Give a grouped attention module its query-head -> key/value-row map (None removes it),
    and the packing of query heads by key/value head that one-token decoding uses."""
    if index is None:
        for name in (KV_INDEX, "kv_pack", "kv_unpack"):
            attention._buffers.pop(name, None)
        return
    index = index.to(dtype=torch.long, device="cpu")
    groups = [(index == g).nonzero().flatten().tolist() for g in range(int(index.max()) + 1)]
    largest = max(len(g) for g in groups)
    dummy = len(index)  # a zero query row appended at the end
    pack = [h for g in groups for h in g + [dummy] * (largest - len(g))]
    unpack = [0] * len(index)
    for slot, h in enumerate(pack):
        if h != dummy:
            unpack[h] = slot
    device = next(attention.parameters()).device
    for name, values in ((KV_INDEX, index), ("kv_pack", torch.tensor(pack)), ("kv_unpack", torch.tensor(unpack))):
        attention.register_buffer(name, values.to(device=device, dtype=torch.long), persistent=False)
