"""Small models, masks and attention modules shared by the GRAIN tests."""

from __future__ import annotations

import torch

from gnorm_kernels.grain import UnevenSelfAttention, Units
from gnorm_kernels.grain.plan import CPU_COSTS, CostModel
from gnorm_kernels.testing import tiny_random_model

# a cost model under which every layer runs all its heads as one padded group
ONE_GROUP = CostModel(1e18, CPU_COSTS.gather_per_element, CPU_COSTS.fused_min_seq_len)


def small_model(family="bert", attn="eager", **kw):
    # a larger init scale than the default 0.02 so that masking visibly changes the logits
    kw.setdefault("num_layers", 3)
    return tiny_random_model(family, attn_implementation=attn, initializer_range=0.2, **kw)


def inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


def hard_masks(layout, seed=1):
    """Random masks with the awkward cases: an empty head, a head without query units, a layer
    without attention and a layer without FFN."""
    g = torch.Generator().manual_seed(seed)
    masks = Units.full(layout).map(lambda t: torch.rand(t.shape, generator=g) < 0.5)
    masks.value[0, 1] = False
    masks.query[0, 2] = False
    masks.value[0, 2, 0] = True
    masks.value[1] = False
    masks.ffn[2] = False
    return masks


def two_layer_masks(layout):
    g = torch.Generator().manual_seed(2)
    masks = Units.full(layout).map(lambda t: torch.rand(t.shape, generator=g) < 0.4)
    masks.value[1, 0] = False
    return masks


def attention(q_sizes, v_sizes, seed=0, **kw):
    torch.manual_seed(seed)
    att = UnevenSelfAttention(24, q_sizes, v_sizes, scaling=0.125, **kw)
    with torch.no_grad():
        for p in att.parameters():
            p.normal_()
    return att


def set_costs(shrunk, costs):
    """Give every uneven-head attention of a shrunk model the cost model `costs`."""
    for m in shrunk.modules():
        if isinstance(m, UnevenSelfAttention):
            m.costs = costs
