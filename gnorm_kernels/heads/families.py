"""Where the attention heads of a model live.

`head_layout(model)` is the only place in the package that knows module paths, attribute names
and head-count config keys. Each supported model family is one `Family` entry in a registry;
`register_family` adds another. Everything else (pruning, scores, GRAIN, evaluation) reads the
modules it needs from the `HeadLayout` it returns, or from `stack_module`.

The records it returns, and the conventions every other module follows (how heads are
named, grouped-query attention, ALBERT's shared blocks), are in `gnorm_kernels.heads.layout`.
Families: BERT, RoBERTa, XLM-R, ELECTRA, ALBERT, DistilBERT (encoders); GPT-2, Llama, Qwen2,
Mistral (decoders).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from gnorm_kernels.heads.layout import AttentionBlock, HeadLayout

__all__ = [
    "is_causal_lm",
    "Family",
    "family_of",
    "head_layout",
    "register_family",
    "stack_module",
    "supported_families",
]


@dataclass(frozen=True)
class Family:
    """How to find the attention heads (and feed-forward layers) of one model family.

    `layers(base_model)` returns, for every distinct attention block, the module that holds it
    (the layer) and the depths at which it runs. `stack` is the dotted path, inside the base model,
    of the module that holds every layer (what "encoder-only" parameter counts measure). The other
    paths are dotted paths inside that layer module; `ffn` names the feed-forward pair (W1, W2) or
    is None. `num_heads(config)` reads the head count from the config; `head_count_attrs` and
    `width_attrs` are the attention-module attributes that the forward reads for the number of heads
    and for heads x head size (pruning updates them). `empty_forward` replaces the attention
    module's forward once all its heads are pruned (transformers' head split cannot reshape a
    zero-width tensor); it must return what the original forward returns, with the attention
    contributing only its output bias.
    """

    name: str
    model_types: tuple[str, ...]
    layers: Callable[[nn.Module], list[tuple[nn.Module, tuple[int, ...]]]]
    attention: str
    query: str
    key: str
    value: str
    output: str
    num_heads: Callable[[object], int]
    empty_forward: Callable[..., tuple]
    stack: str = "encoder"
    ffn: tuple[str, str] | None = None
    head_size_attr: str = "attention_head_size"
    head_count_attrs: tuple[str, ...] = ("num_attention_heads",)
    width_attrs: tuple[str, ...] = ("all_head_size",)
    num_kv_heads: Callable[[object], int] | None = None  # grouped-query attention: KV heads per layer
    group_attr: str | None = None  # attention attribute: query heads per KV head (repeat_kv's factor)
    fused_qkv: bool = False  # Q, K, V are column blocks of one input-major Conv1D (GPT-2)
    causal: bool = False  # a decoder
    padded_positions: bool = False  # positions start after the padding id (RoBERTa): pad_token_id + 1 rows unused


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add (or replace) a model family; returns it so it can be used as a decorator-free one-liner."""
    _FAMILIES[family.name] = family
    return family


def supported_families() -> list[str]:
    """Names of the registered model families, sorted."""
    return sorted(_FAMILIES)


def family_of(model: nn.Module) -> Family:
    """The registry entry that describes `model` (raises for unsupported models)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for family in _FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise ValueError(
        f"unsupported model {type(model).__name__} (config.model_type={model_type!r}); "
        f"supported families: {', '.join(supported_families())}. "
        "Add one with gnorm_kernels.heads.families.register_family()."
    )


def _get(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


def head_layout(model: nn.Module) -> HeadLayout:
    """Describe the attention heads of a model of a registered family (bare or inside a task head class)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module (a transformers model), got {type(model).__name__}")
    family = family_of(model)
    base = getattr(model, "base_model", model)
    config = model.config
    num_heads = int(family.num_heads(config))
    num_kv_heads = int(family.num_kv_heads(config)) if family.num_kv_heads is not None else 0
    if num_kv_heads and num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads cannot be grouped over {num_kv_heads} key/value heads")
    blocks = []
    for index, (layer, depths) in enumerate(family.layers(base)):
        attention = _get(layer, family.attention)
        refusal = getattr(attention, "head_tools_refusal", None)
        if refusal:  # a module that replaced whole-head attention says why head tools do not apply
            raise ValueError(refusal)
        if not hasattr(attention, family.head_size_attr):
            raise ValueError(
                f"layer {index}: the attention module {type(attention).__name__} has no {family.head_size_attr}; "
                f"the {family.name} family expects the transformers module at {family.attention!r}"
            )
        blocks.append(
            AttentionBlock(
                index=index,
                layer=layer,
                attention=attention,
                query=_get(layer, family.query),
                key=_get(layer, family.key),
                value=_get(layer, family.value),
                output=_get(layer, family.output),
                depths=tuple(depths),
                num_heads=num_heads,
                head_size=int(getattr(attention, family.head_size_attr)),
                ffn=None if family.ffn is None else (_get(layer, family.ffn[0]), _get(layer, family.ffn[1])),
                head_count_attrs=family.head_count_attrs,
                width_attrs=family.width_attrs,
                num_kv_heads=num_kv_heads if num_kv_heads != num_heads else 0,
                fused_qkv=family.fused_qkv,
                group_attr=family.group_attr,
            )
        )
    if not blocks:
        raise ValueError(f"no attention blocks found in {type(model).__name__}")
    return HeadLayout(
        family=family.name,
        num_layers=len(blocks),
        num_heads=num_heads,
        head_size=blocks[0].head_size,
        hidden_size=int(blocks[0].qkv_weights()[0].shape[1]),
        shared_across_depth=any(len(b.depths) > 1 for b in blocks),
        blocks=tuple(blocks),
        num_kv_heads=num_kv_heads if num_kv_heads != num_heads else 0,
        causal=family.causal,
    )


def stack_module(model: nn.Module) -> nn.Module:
    """The module holding every transformer layer of `model` (BERT's ``encoder``, DistilBERT's
    ``transformer``): what encoder-only parameter counts and timings measure."""
    family = family_of(model)
    return _get(getattr(model, "base_model", model), family.stack)



# --------------------------------------------------------------------------- families


def _zero_context(hidden_states: torch.Tensor) -> torch.Tensor:
    return hidden_states.new_zeros(*hidden_states.shape[:-1], 0)


def _empty_context_forward(self, hidden_states, *args, **kwargs):
    # BERT-style self-attention returns the concatenated head contexts; with no heads that is
    # a zero-width tensor, and the output projection (now [D, 0]) turns it into its bias.
    return _zero_context(hidden_states), None


def _empty_albert_forward(self, hidden_states, *args, **kwargs):
    out = self.output_dropout(self.dense(_zero_context(hidden_states)))
    return self.LayerNorm(hidden_states + out), None


def _empty_distilbert_forward(self, hidden_states, *args, **kwargs):
    return self.out_lin(_zero_context(hidden_states)), None


@functools.cache
def _zero_width_cache_layer() -> type:
    """The KV-cache layer class of an attention with no heads. Its cached keys are zero heads
    wide, which transformers' `DynamicLayer` reads as an empty cache (it tests `numel()`), so a
    cache whose layer 0 was emptied reported length 0 and generation put new tokens at the wrong
    positions; this subclass reads the length from the position axis instead."""
    from transformers.cache_utils import DynamicLayer

    class ZeroWidthLayer(DynamicLayer):
        def get_seq_length(self) -> int:
            return int(self.keys.shape[-2]) if self.is_initialized and self.keys.dim() == 4 else 0

    return ZeroWidthLayer


def _record_positions(cache, layer_idx: int, hidden_states: torch.Tensor, head_dim: int) -> None:
    """Tell the KV cache about new positions of a layer with no heads (zero heads wide)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if layers is not None:
        replicate = getattr(cache, "layer_class_to_replicate", None)
        while replicate is not None and len(layers) <= layer_idx:  # a lazily filled DynamicCache
            layers.append(replicate())
        if layer_idx < len(layers) and type(layers[layer_idx]) is DynamicLayer and not layers[layer_idx].is_initialized:
            layers[layer_idx] = _zero_width_cache_layer()()
    b, s = hidden_states.shape[:2]
    empty = hidden_states.new_zeros(b, 0, s, head_dim)
    cache.update(empty, empty, layer_idx)


def _empty_decoder_forward(self, hidden_states, *args, **kwargs):
    # A decoder attention with no heads adds only its output bias. It still tells the KV cache
    # about the new positions, so the cache's sequence length (read from layer 0) stays right.
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is not None and getattr(self, "layer_idx", None) is not None:
        _record_positions(cache, self.layer_idx, hidden_states, int(self.head_dim))
    if hasattr(self, "o_proj"):  # nn.Linear [D, 0]: its output is its bias (or zeros)
        return self.o_proj(_zero_context(hidden_states)), None
    # GPT-2's c_proj is an input-major Conv1D [0, D], whose forward cannot reshape zero width
    return self.c_proj.bias.expand(*hidden_states.shape[:-1], -1).clone(), None


def _encoder_layers(base: nn.Module) -> list[tuple[nn.Module, tuple[int, ...]]]:
    return [(layer, (i,)) for i, layer in enumerate(base.encoder.layer)]


def _albert_layers(base: nn.Module) -> list[tuple[nn.Module, tuple[int, ...]]]:
    config = base.config
    groups = base.encoder.albert_layer_groups
    depths_of_group: dict[int, list[int]] = {g: [] for g in range(len(groups))}
    for depth in range(config.num_hidden_layers):
        group = int(depth / (config.num_hidden_layers / config.num_hidden_groups))
        depths_of_group[group].append(depth)
    out = []
    for g, group in enumerate(groups):
        for inner in group.albert_layers:
            out.append((inner, tuple(depths_of_group[g])))
    return out


def _bert_like(name: str, *model_types: str, padded_positions: bool = False) -> Family:
    return Family(
        padded_positions=padded_positions,
        name=name,
        model_types=model_types,
        layers=_encoder_layers,
        stack="encoder",
        attention="attention.self",
        query="attention.self.query",
        key="attention.self.key",
        value="attention.self.value",
        output="attention.output.dense",
        ffn=("intermediate.dense", "output.dense"),
        num_heads=lambda config: int(config.num_attention_heads),
        empty_forward=_empty_context_forward,
    )


register_family(_bert_like("bert", "bert"))
register_family(_bert_like("roberta", "roberta", "camembert", padded_positions=True))
register_family(_bert_like("xlm-roberta", "xlm-roberta", padded_positions=True))
register_family(_bert_like("electra", "electra"))
register_family(
    Family(
        name="albert",
        model_types=("albert",),
        layers=_albert_layers,
        stack="encoder",
        attention="attention",
        query="attention.query",
        key="attention.key",
        value="attention.value",
        output="attention.dense",
        ffn=("ffn", "ffn_output"),
        num_heads=lambda config: int(config.num_attention_heads),
        empty_forward=_empty_albert_forward,
    )
)
register_family(
    Family(
        name="distilbert",
        model_types=("distilbert",),
        layers=lambda base: [(layer, (i,)) for i, layer in enumerate(base.transformer.layer)],
        stack="transformer",
        attention="attention",
        query="attention.q_lin",
        key="attention.k_lin",
        value="attention.v_lin",
        output="attention.out_lin",
        ffn=("ffn.lin1", "ffn.lin2"),
        num_heads=lambda config: int(config.n_heads),
        empty_forward=_empty_distilbert_forward,
        head_count_attrs=("n_heads",),
        width_attrs=(),
    )
)


def _llama_like(name: str, *model_types: str) -> Family:
    # Llama, Qwen2 (biases on q/k/v) and Mistral share module names; the forward reshapes with
    # view(..., -1, head_dim), so only repeat_kv's factor needs updating when heads go.
    return Family(
        name=name,
        model_types=model_types,
        layers=lambda base: [(layer, (i,)) for i, layer in enumerate(base.layers)],
        stack="layers",
        attention="self_attn",
        query="self_attn.q_proj",
        key="self_attn.k_proj",
        value="self_attn.v_proj",
        output="self_attn.o_proj",
        num_heads=lambda config: int(config.num_attention_heads),
        num_kv_heads=lambda config: int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads),
        empty_forward=_empty_decoder_forward,
        head_size_attr="head_dim",
        head_count_attrs=(),
        width_attrs=(),
        group_attr="num_key_value_groups",
        causal=True,
    )


register_family(_llama_like("llama", "llama"))
register_family(_llama_like("qwen2", "qwen2"))
register_family(_llama_like("mistral", "mistral"))
register_family(
    Family(
        name="gpt2",
        model_types=("gpt2",),
        layers=lambda base: [(layer, (i,)) for i, layer in enumerate(base.h)],
        stack="h",
        attention="attn",
        query="attn.c_attn",  # one fused input-major Conv1D: [D, 3 * H * d]
        key="attn.c_attn",
        value="attn.c_attn",
        output="attn.c_proj",
        num_heads=lambda config: int(config.n_head),
        empty_forward=_empty_decoder_forward,
        head_size_attr="head_dim",
        head_count_attrs=("num_heads",),
        width_attrs=("split_size",),
        fused_qkv=True,
        causal=True,
    )
)


def is_causal_lm(model: nn.Module) -> bool:
    """True for a decoder with a language-model head (its logits are [B, T, vocab])."""

    try:
        causal = family_of(model).causal
    except ValueError:
        return False
    return causal and not type(model).__name__.endswith("ForSequenceClassification")
