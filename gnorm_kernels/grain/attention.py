"""Self-attention whose heads have different query/key and value sizes (what GRAIN leaves behind).

Weights are stored packed, head after head: ``query``/``key`` are Linear(D, Σ q_h), ``value`` is
Linear(D, Σ v_h), and the returned context has Σ v_h columns in the same order, ready for the
(shrunk) output projection. Three ways to run it:

* ``"loop"``: one small attention per head in a Python loop, as GRAIN's released code does. The
  reference, and the slow baseline of the benchmark.
* ``"padded"``: one fused, unpadded Q/K/V projection for all heads, then every head padded with
  zeros to the layer's largest query and value sizes and one batched attention call (PyTorch's
  fused scaled-dot-product attention). Exact: a zero query dimension adds nothing to a score, a
  zero value dimension is dropped afterwards.
* ``"grouped"`` (the default): the same, but heads sorted by size are split into groups, each
  padded only to its own largest head, the split chosen by a small cost model (attention
  multiply-adds and copies of the padded sizes, plus a fixed cost per group). Similar heads
  share one call; one big head among many small ones gets its own instead of inflating them.

A head with value units but no query units attends uniformly to the unmasked tokens, exactly
as the masked model does (all its scores are zero). Scores use the original scaling
1/sqrt(d) of the unpruned model.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UnevenSelfAttention", "IMPLEMENTATIONS", "plan_groups", "HeadGroup"]

IMPLEMENTATIONS = ("grouped", "padded", "loop")

# The cost model of `plan_groups`, in multiply-add equivalents. A group costs a fixed amount
# (one more attention call, its dispatch and small copies: tens of microseconds on a CPU) plus,
# per head, the attention arithmetic of its padded sizes and the copies that gather its padded
# Q/K/V. Projections are not in it: they run once, fused and unpadded, whatever the grouping.
GROUP_OVERHEAD_MACS = 3.0e6
COPY_MACS_PER_ELEMENT = 4.0


@dataclass(frozen=True)
class HeadGroup:
    """Heads (positions in the packed order) run together, padded to (query_size, value_size)."""

    heads: tuple[int, ...]
    query_size: int
    value_size: int


def _group_cost(n: int, dq: int, dv: int, tokens: int, seq: int) -> float:
    return GROUP_OVERHEAD_MACS + n * tokens * (seq * (dq + dv) + COPY_MACS_PER_ELEMENT * (2 * dq + dv))


def plan_groups(
    query_sizes: Sequence[int],
    value_sizes: Sequence[int],
    *,
    tokens: int,
    seq_len: int,
    impl: str = "grouped",
) -> tuple[HeadGroup, ...]:
    """Split heads into padded groups: one group ("padded") or the cheapest contiguous split of
    the heads sorted by size ("grouped"), found by dynamic programming over the sorted order.

    `tokens` is batch × sequence length: the bigger the batch, the more padding costs against
    the fixed cost of another group.
    """
    n = len(query_sizes)
    if n == 0:
        return ()
    if impl == "padded":
        return (HeadGroup(tuple(range(n)), max(1, max(query_sizes)), max(value_sizes)),)
    if impl != "grouped":
        raise ValueError(f"impl must be 'grouped' or 'padded', got {impl!r}")
    order = sorted(range(n), key=lambda h: (query_sizes[h] + value_sizes[h], value_sizes[h], h))
    best = [0.0] + [math.inf] * n  # best[i]: cheapest plan for the first i sorted heads
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        dq = dv = 0
        for start in range(end - 1, -1, -1):
            h = order[start]
            dq, dv = max(dq, query_sizes[h]), max(dv, value_sizes[h])
            cost = best[start] + _group_cost(end - start, max(1, dq), dv, tokens, seq_len)
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups = []
    end = n
    while end > 0:
        start = cut[end]
        members = tuple(sorted(order[start:end]))
        groups.append(
            HeadGroup(members, max(1, max(query_sizes[h] for h in members)), max(value_sizes[h] for h in members))
        )
        end = start
    return tuple(reversed(groups))


def _as_slice(index: list[int]) -> slice | None:
    """`index` as a slice when it is a contiguous increasing run (then no copy is needed)."""
    if index and index == list(range(index[0], index[0] + len(index))):
        return slice(index[0], index[0] + len(index))
    return None


class _Selector:
    """Columns of the fused projection output: a view when contiguous, else one gather."""

    def __init__(self, index: list[int]) -> None:
        self.slice = _as_slice(index)
        self.index = None if self.slice is not None else torch.tensor(index, dtype=torch.long)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.slice is not None:
            return x[..., self.slice]
        if self.index.device != x.device:
            self.index = self.index.to(x.device)
        return x.index_select(-1, self.index)


class UnevenSelfAttention(nn.Module):
    """Drop-in replacement for a BERT-style self-attention module with heads of uneven sizes.

    ``heads`` names each packed head by its original index. Heads need at least one value
    dimension (a head without value dimensions contributes nothing and is not stored).
    ``forward(hidden_states, attention_mask=None, **ignored)`` returns ``(context, None)``
    like the module it replaces; ``attention_mask`` is the additive float or boolean mask the
    surrounding transformers model builds (or None).
    """

    def __init__(
        self,
        hidden_size: int,
        query_sizes: Sequence[int],
        value_sizes: Sequence[int],
        *,
        scaling: float,
        heads: Sequence[int] | None = None,
        impl: str = "grouped",
        dropout: float = 0.0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        query_sizes, value_sizes = [int(q) for q in query_sizes], [int(v) for v in value_sizes]
        if len(query_sizes) != len(value_sizes):
            raise ValueError(f"got {len(query_sizes)} query sizes but {len(value_sizes)} value sizes")
        if any(q < 0 for q in query_sizes) or any(v < 1 for v in value_sizes):
            raise ValueError(
                f"query sizes must be >= 0 and value sizes >= 1, got {query_sizes} and {value_sizes}"
            )
        heads = list(range(len(query_sizes))) if heads is None else [int(h) for h in heads]
        if len(heads) != len(query_sizes):
            raise ValueError(f"got {len(heads)} head ids for {len(query_sizes)} heads")
        self.query_sizes = tuple(query_sizes)
        self.value_sizes = tuple(value_sizes)
        self.heads = tuple(heads)
        self.scaling = float(scaling)
        self.dropout_p = float(dropout)
        self.impl = impl
        kw = dict(bias=bias, device=device, dtype=dtype)
        with warnings.catch_warnings():  # a layer without heads has zero-width projections
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            self.query = nn.Linear(hidden_size, sum(query_sizes), **kw)
            self.key = nn.Linear(hidden_size, sum(query_sizes), **kw)
            self.value = nn.Linear(hidden_size, sum(value_sizes), **kw)
        self._plans: dict[tuple, tuple] = {}
        self._weights_cache: dict = {}

    # ------------------------------------------------------------------ description

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {list(IMPLEMENTATIONS)}, got {value!r}")
        self._impl = value

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    @property
    def hidden_size(self) -> int:
        return self.query.in_features

    def extra_repr(self) -> str:
        sizes = ", ".join(f"{h}:{q}/{v}" for h, q, v in zip(self.heads, self.query_sizes, self.value_sizes))
        return f"heads(id:q/v)=[{sizes}], impl={self.impl!r}"

    # ------------------------------------------------------------------ forward

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        if kwargs.get("encoder_hidden_states") is not None or kwargs.get("past_key_values") is not None:
            raise NotImplementedError("uneven-head attention supports encoder self-attention only (no cache, no cross-attention)")
        if self.num_heads == 0:
            return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None
        if self.impl == "loop":
            return self._forward_loop(hidden_states, attention_mask), None
        return self._forward_grouped(hidden_states, attention_mask), None

    def _dropout(self) -> float:
        return self.dropout_p if self.training else 0.0

    def _plan(self, batch: int, seq: int) -> tuple:
        """Groups for this input shape, with the column selectors of their padded Q, K and V."""
        groups = plan_groups(self.query_sizes, self.value_sizes, tokens=batch * seq, seq_len=seq, impl=self.impl)
        plan = self._plans.get(groups)
        if plan is not None:
            return plan
        q_off, v_off = [0], [0]
        for q, v in zip(self.query_sizes, self.value_sizes):
            q_off.append(q_off[-1] + q)
            v_off.append(v_off[-1] + v)
        nq, nv = q_off[-1], v_off[-1]
        zero = 2 * nq + nv  # the fused projection's last output: always zero, used for padding
        steps = []
        context_cols = [0] * nv  # where each packed value column lands in the concatenated output
        at = 0
        for g in groups:
            selectors = []
            for base, offsets, sizes, width in (
                (0, q_off, self.query_sizes, g.query_size),
                (nq, q_off, self.query_sizes, g.query_size),
                (2 * nq, v_off, self.value_sizes, g.value_size),
            ):
                cols: list[int] = []
                for h in g.heads:
                    cols += [base + offsets[h] + j for j in range(sizes[h])] + [zero] * (width - sizes[h])
                selectors.append(_Selector(cols))
            for h in g.heads:
                for j in range(self.value_sizes[h]):
                    context_cols[v_off[h] + j] = at + j
                at += g.value_size
            steps.append((g, *selectors))
        unpad = None if context_cols == list(range(at)) else _Selector(context_cols)
        plan = (tuple(steps), unpad)
        self._plans[groups] = plan
        return plan

    def _fused_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[Wq; Wk; Wv; 0]: one projection for every head, plus a zero output for padding.
        Cached while the weights are unchanged and no gradient is wanted."""
        params = [self.query.weight, self.key.weight, self.value.weight]
        biases = [self.query.bias, self.key.bias, self.value.bias]
        tensors = params + [b for b in biases if b is not None]
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        stamp = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)
        if not grad and self._weights_cache.get("stamp") == stamp:
            return self._weights_cache["weight"], self._weights_cache["bias"]
        weight = torch.cat([*params, params[0].new_zeros(1, params[0].shape[1])])
        bias = None if biases[0] is None else torch.cat([*biases, biases[0].new_zeros(1)])
        if not grad:
            self._weights_cache = {"stamp": stamp, "weight": weight, "bias": bias}
        return weight, bias

    def _forward_grouped(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T = x.shape[0], x.shape[1]
        steps, unpad = self._plan(B, T)
        weight, bias = self._fused_weights()
        qkv = F.linear(x, weight, bias)
        outputs = []
        for g, take_q, take_k, take_v in steps:
            n, dq, dv = len(g.heads), g.query_size, g.value_size
            q = take_q(qkv).view(B, T, n, dq).transpose(1, 2)
            k = take_k(qkv).view(B, T, n, dq).transpose(1, 2)
            v = take_v(qkv).view(B, T, n, dv).transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self._dropout(), scale=self.scaling)
            outputs.append(out.transpose(1, 2).reshape(B, T, n * dv))
        context = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        return context if unpad is None else unpad(context)

    def _forward_loop(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q_all, k_all, v_all = self.query(x), self.key(x), self.value(x)
        if mask is not None and mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, torch.finfo(x.dtype).min)
        if mask is not None:
            mask = mask[:, 0]  # [B, T_q or 1, T_k]: the same for every head
        outputs = []
        q_at = v_at = 0
        for dq, dv in zip(self.query_sizes, self.value_sizes):
            q, k = q_all[..., q_at : q_at + dq], k_all[..., q_at : q_at + dq]
            v = v_all[..., v_at : v_at + dv]
            q_at, v_at = q_at + dq, v_at + dv
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.scaling
            if mask is not None:
                scores = scores + mask
            probs = F.dropout(torch.softmax(scores, dim=-1), p=self._dropout(), training=self.training)
            outputs.append(torch.matmul(probs, v))
        return torch.cat(outputs, dim=-1)
