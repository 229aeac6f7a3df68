"""Self-attention whose heads have different query/key and value sizes (what GRAIN leaves behind).

Weights are stored packed, head after head: ``query``/``key`` are Linear(D, Σ q_h), ``value`` is
Linear(D, Σ v_h), and the returned context has Σ v_h columns in the same order, ready for the
(shrunk) output projection. Three ways to run it:

* ``"loop"``: one small attention per head in a Python loop, as GRAIN's released code does. The
  reference, and the slow baseline of the benchmark.
* ``"padded"``: every head of the layer padded with zero weights to the layer's largest
  query and value sizes, then one fused Q/K/V projection and one batched attention call. Exact:
  a zero query dimension adds nothing to a score, a zero value dimension is dropped afterwards.
* ``"grouped"`` (the default): heads sorted by size and split into groups, each padded to its
  own largest head, with the split chosen by a small cost model (multiply-adds of the padded
  projections and attention plus a fixed cost per group). A layer of similar heads becomes one
  group; one big head among many small ones gets its own group instead of inflating the rest.

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

# Fixed cost of one more group, in multiply-adds (dispatch, a kernel launch, small copies).
# About 40 µs on a 2-core CPU; on a GPU launches are cheaper but so is arithmetic.
GROUP_OVERHEAD_MACS = 2.0e6


@dataclass(frozen=True)
class HeadGroup:
    """Heads (positions in the packed order) run together, padded to (query_size, value_size)."""

    heads: tuple[int, ...]
    query_size: int
    value_size: int


def _group_cost(n: int, dq: int, dv: int, tokens: int, seq: int, hidden: int) -> float:
    return GROUP_OVERHEAD_MACS + n * tokens * ((2 * dq + dv) * hidden + seq * (dq + dv))


def plan_groups(
    query_sizes: Sequence[int],
    value_sizes: Sequence[int],
    *,
    tokens: int,
    seq_len: int,
    hidden_size: int,
    impl: str = "grouped",
) -> tuple[HeadGroup, ...]:
    """Split heads into padded groups: one group ("padded") or the cheapest contiguous split of
    the heads sorted by size ("grouped"), by dynamic programming over the sorted order."""
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
            cost = best[start] + _group_cost(end - start, max(1, dq), dv, tokens, seq_len, hidden_size)
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
        self._plans: dict[tuple[int, int, str], tuple] = {}
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
        """Groups, and for them the fused padded weight layout (rows gathered from Q/K/V)."""
        key = (batch * seq, seq, self.impl)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        groups = plan_groups(
            self.query_sizes, self.value_sizes, tokens=batch * seq, seq_len=seq,
            hidden_size=self.hidden_size, impl=self.impl,
        )
        q_off = [0]
        for q in self.query_sizes:
            q_off.append(q_off[-1] + q)
        v_off = [0]
        for v in self.value_sizes:
            v_off.append(v_off[-1] + v)
        nq, nv = q_off[-1], v_off[-1]
        zero_row = 2 * nq + nv  # index of the zero row appended to [Wq; Wk; Wv]
        rows: list[int] = []
        context_cols: list[int] = []  # for each packed value column, its column in the padded context
        col_of = [0] * nv
        padded_col = 0
        for g in groups:
            for base, offsets, sizes, width in (
                (0, q_off, self.query_sizes, g.query_size),
                (nq, q_off, self.query_sizes, g.query_size),
                (2 * nq, v_off, self.value_sizes, g.value_size),
            ):
                for h in g.heads:
                    rows += [base + offsets[h] + j for j in range(sizes[h])] + [zero_row] * (width - sizes[h])
            for h in g.heads:
                for j in range(self.value_sizes[h]):
                    col_of[v_off[h] + j] = padded_col + j
                padded_col += g.value_size
        context_cols = col_of
        needs_select = padded_col != nv or context_cols != list(range(nv))
        plan = (
            groups,
            torch.tensor(rows, dtype=torch.long),
            torch.tensor(context_cols, dtype=torch.long) if needs_select else None,
        )
        if len(self._plans) > 16:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _fused_weights(self, groups: tuple, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[Wq; Wk; Wv] rows rearranged into the padded group layout (cached when not training)."""
        params = [self.query.weight, self.key.weight, self.value.weight]
        biases = [self.query.bias, self.key.bias, self.value.bias]
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in params + biases if p is not None)
        stamp = None
        if not grad:
            stamp = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in params + biases if t is not None)
            if self._weights_cache.get("stamp") != stamp:
                self._weights_cache = {"stamp": stamp}
            if groups in self._weights_cache:
                return self._weights_cache[groups]
        w = torch.cat([*params, params[0].new_zeros(1, params[0].shape[1])])
        weight = w.index_select(0, rows.to(w.device))
        bias = None
        if biases[0] is not None:
            b = torch.cat([*biases, biases[0].new_zeros(1)])
            bias = b.index_select(0, rows.to(b.device))
        if not grad:
            self._weights_cache[groups] = (weight.detach(), None if bias is None else bias.detach())
        return weight, bias

    def _forward_grouped(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T = x.shape[0], x.shape[1]
        groups, rows, context_cols = self._plan(B, T)
        weight, bias = self._fused_weights(groups, rows)
        qkv = F.linear(x, weight, bias)
        outputs = []
        offset = 0
        for g in groups:
            n, dq, dv = len(g.heads), g.query_size, g.value_size
            q = qkv[..., offset : offset + n * dq].view(B, T, n, dq).transpose(1, 2)
            offset += n * dq
            k = qkv[..., offset : offset + n * dq].view(B, T, n, dq).transpose(1, 2)
            offset += n * dq
            v = qkv[..., offset : offset + n * dv].view(B, T, n, dv).transpose(1, 2)
            offset += n * dv
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self._dropout(), scale=self.scaling
            )
            outputs.append(out.transpose(1, 2).reshape(B, T, n * dv))
        context = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        if context_cols is not None:
            context = context.index_select(-1, context_cols.to(context.device))
        return context

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
