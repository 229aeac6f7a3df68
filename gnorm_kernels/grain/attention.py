"""Self-attention whose heads have different query/key and value sizes (what GRAIN leaves behind).

Weights are stored packed, head after head: ``query``/``key`` are Linear(D, Σ q_h), ``value`` is
Linear(D, Σ v_h), and the returned context has Σ v_h columns in the same order, ready for the
(shrunk) output projection. Ways to run it:

* ``"loop"``: one small attention per head in a Python loop, as GRAIN's released code does. The
  reference, and the slow baseline of the benchmark.
* ``"padded"``: one fused Q/K/V projection for all heads, every head's query, key and value
  padded with zeros to the layer's largest head size, and one batched attention call. Exact: a
  zero query dimension adds nothing to a score, a zero value dimension is dropped afterwards.
* ``"grouped"``: the same, but heads sorted by size are split into groups, each padded only to
  its own largest head, the split chosen by a small cost model (a fixed cost per group plus the
  multiply-adds and copies of the padded sizes). Similar heads share one call; one big head
  among many small ones gets its own instead of inflating them. Per group, the padding is
  either built into the projection weights (zero rows: Q/K/V come out as views) or made by
  gathering the packed projection, whichever the model says is cheaper.
* ``"auto"`` (the default): at the first gradient-free call for each input shape, time the
  candidates (`AUTO_CANDIDATES`: the groupings above with PyTorch's fused attention kernel or
  with plain batched matmul + softmax, and the loop) and keep the fastest. Which one wins
  depends on the machine, the batch and the sequence length more than any fixed rule captures.
  With gradients on (training) it uses "grouped".

The cost model's constants are per device kind (`COST_MODELS`); on CPU, short sequences use
batched matmul and softmax rather than the fused kernel, which is faster there.

A head with value units but no query units attends uniformly to the unmasked tokens, exactly
as the masked model does (all its scores are zero). Scores use the original scaling
1/sqrt(d) of the unpruned model.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UnevenSelfAttention", "IMPLEMENTATIONS", "plan_groups", "HeadGroup", "CostModel", "COST_MODELS"]

IMPLEMENTATIONS = ("auto", "grouped", "padded", "loop")

# What "auto" times at the first gradient-free call for each input shape: (grouping, kernel),
# the kernel being PyTorch's fused attention ("fused", where query and value sizes agree) or
# matmul + softmax written out ("math").
AUTO_CANDIDATES = (
    ("grouped", "fused"),
    ("grouped", "math"),
    ("padded", "fused"),
    ("padded", "math"),
    ("loop", "math"),
    ("loop", "fused"),
)


@dataclass(frozen=True)
class CostModel:
    """What `plan_groups` weighs, in multiply-add equivalents, for one kind of device.

    A group costs `group_overhead` (one more attention call: dispatch, launch, small copies), the
    attention arithmetic of its heads at the padded size, and producing its padded Q/K/V: either
    by projecting with zero-padded weights (each pad costs a full row of multiply-adds) or by
    projecting the packed rows and gathering them into the padded layout (`gather_per_element`
    for every element). Each group takes the cheaper of the two. Below `fused_min_seq_len` tokens
    plain batched matmul + softmax replaces the fused attention kernel, whose blocking costs more
    than it saves on short rows.
    """

    group_overhead: float
    gather_per_element: float
    fused_min_seq_len: int


COST_MODELS: dict[str, CostModel] = {
    # measured on a 2-core CPU (bench/grain_speed.py and the notes in bench/RESULTS.md)
    "cpu": CostModel(group_overhead=3.0e6, gather_per_element=64.0, fused_min_seq_len=64),
    # not measured yet (no GPU was available): launches are ~10 µs against ~100 TFLOP/s of
    # arithmetic, so another group costs far more multiply-adds than on a CPU
    "cuda": CostModel(group_overhead=2.0e8, gather_per_element=512.0, fused_min_seq_len=0),
}


def cost_model(device_type: str) -> CostModel:
    return COST_MODELS.get(device_type, COST_MODELS["cpu"])


@dataclass(frozen=True)
class HeadGroup:
    """Heads (positions in the packed order) run in one attention call.

    Either every head has exactly `query_size` query/key and `value_size` value dimensions (an
    exact group: no padding, and heads stored side by side come out of the projection as views),
    or all are padded to one size (`query_size == value_size`), since the fused attention
    kernels want equal head sizes for Q, K and V. `padded_projection`: the padding is built into
    the projection (zero weight rows, so Q/K/V are views) rather than gathered afterwards.
    """

    heads: tuple[int, ...]
    query_size: int
    value_size: int
    padded_projection: bool = False


def _padded_cost(
    n: int, size: int, packed: int, tokens: int, seq: int, hidden: int, costs: CostModel
) -> tuple[float, bool]:
    attention = n * size * 2 * seq
    padded = 3 * n * size * hidden
    gathered = packed * hidden + costs.gather_per_element * 3 * n * size
    return costs.group_overhead + tokens * (attention + min(padded, gathered)), padded <= gathered


def _exact_cost(n: int, q: int, v: int, tokens: int, seq: int, hidden: int, costs: CostModel) -> float:
    return costs.group_overhead + tokens * n * ((q + v) * seq + (2 * q + v) * hidden)


def plan_groups(
    query_sizes: Sequence[int],
    value_sizes: Sequence[int],
    *,
    tokens: int,
    seq_len: int,
    hidden_size: int,
    impl: str = "grouped",
    device_type: str = "cpu",
) -> tuple[HeadGroup, ...]:
    """Split heads into groups: one padded group ("padded"), or the cheapest contiguous split of
    the heads sorted by size ("grouped"), found by dynamic programming over the sorted order;
    a run of identical heads may also run unpadded.

    `tokens` is batch × sequence length: the more tokens, the more padding costs against the
    fixed cost of another group.
    """
    n = len(query_sizes)
    if n == 0:
        return ()
    costs = cost_model(device_type)
    sizes = list(zip(query_sizes, value_sizes))
    need = [max(1, q, v) for q, v in sizes]
    packed = [2 * q + v for q, v in sizes]
    if impl == "padded":
        size = max(need)
        _, pad = _padded_cost(n, size, sum(packed), tokens, seq_len, hidden_size, costs)
        return (HeadGroup(tuple(range(n)), size, size, pad),)
    if impl != "grouped":
        raise ValueError(f"impl must be 'grouped' or 'padded', got {impl!r}")
    order = sorted(range(n), key=lambda h: (need[h], sum(sizes[h]), sizes[h][1], h))
    best = [0.0] + [math.inf] * n  # best[i]: cheapest plan for the first i sorted heads
    choice: list[tuple[int, HeadGroup | None]] = [(0, None)] * (n + 1)
    for end in range(1, n + 1):
        size = need[order[end - 1]]  # the largest of any run ending here
        last = sizes[order[end - 1]]
        run, identical = 0, True
        for start in range(end - 1, -1, -1):
            run += packed[order[start]]
            identical = identical and sizes[order[start]] == last
            members = tuple(sorted(order[start:end]))
            cost, pad = _padded_cost(end - start, size, run, tokens, seq_len, hidden_size, costs)
            group = HeadGroup(members, size, size, pad)
            if identical:
                exact = _exact_cost(end - start, *last, tokens, seq_len, hidden_size, costs)
                if exact <= cost:
                    cost, group = exact, HeadGroup(members, *last, False)
            if best[start] + cost < best[end]:
                best[end], choice[end] = best[start] + cost, (start, group)
    groups = []
    end = n
    while end > 0:
        start, group = choice[end]
        groups.append(group)
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
        impl: str = "auto",
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
        self._plans: dict[tuple, dict] = {}
        self._tuned: dict[tuple, tuple[str, str | None]] = {}
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
            raise NotImplementedError(
                "uneven-head attention supports encoder self-attention only (no cache, no cross-attention)"
            )
        if self.num_heads == 0:
            return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None
        impl, kernel = self.impl, None
        if impl == "auto":
            impl, kernel = self._tuned_choice(hidden_states, attention_mask)
        return self._run(impl, kernel, hidden_states, attention_mask), None

    def _run(self, impl: str, kernel: str | None, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if impl == "loop":
            return self._forward_loop(x, mask, kernel or "math")
        return self._forward_grouped(x, mask, impl, kernel)

    def _tuned_choice(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[str, str | None]:
        """The fastest of `AUTO_CANDIDATES` for this input shape, timed once per shape.

        Timing happens only in eval mode without gradients (inference); otherwise the cost
        model's grouping is used.
        """
        key = (x.shape[0], x.shape[1], x.device.type, x.dtype, None if mask is None else mask.dtype)
        choice = self._tuned.get(key)
        if choice is not None:
            return choice
        grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        if grad or self.training:
            return ("grouped", None)
        sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
        timings = {}
        for candidate in AUTO_CANDIDATES:
            self._run(*candidate, x, mask)  # warm-up: builds plans and fused weights
            best = math.inf
            for _ in range(2):
                sync()
                start = time.perf_counter()
                self._run(*candidate, x, mask)
                sync()
                best = min(best, time.perf_counter() - start)
            timings[candidate] = best
        choice = min(timings, key=timings.get)
        self._tuned[key] = choice
        return choice

    @property
    def tuned(self) -> dict:
        """What "auto" chose so far: {(batch, seq, device, dtype, mask dtype): (grouping, kernel)}."""
        return dict(self._tuned)

    def _dropout(self) -> float:
        return self.dropout_p if self.training else 0.0

    def _plan(self, batch: int, seq: int, device_type: str = "cpu", grouping: str = "grouped") -> dict:
        """Groups for this input shape; the rows of [Wq; Wk; Wv; 0] that make up the fused
        projection; per group the selectors of its padded Q, K, V and where its output goes in the context.
        Cached per shape (and per grouping, so shapes that group alike share one plan)."""
        shape_key = (batch, seq, device_type, grouping)
        plan = self._plans.get(shape_key)
        if plan is not None:
            return plan
        groups = plan_groups(
            self.query_sizes, self.value_sizes, tokens=batch * seq, seq_len=seq,
            hidden_size=self.hidden_size, impl=grouping, device_type=device_type,
        )
        plan = self._plans.get(groups)
        if plan is not None:
            self._plans[shape_key] = plan
            return plan
        q_off, v_off = [0], [0]
        for q, v in zip(self.query_sizes, self.value_sizes):
            q_off.append(q_off[-1] + q)
            v_off.append(v_off[-1] + v)
        nq, nv = q_off[-1], v_off[-1]
        zero_row = 2 * nq + nv  # the zero row appended to [Wq; Wk; Wv]
        parts = ((0, q_off, self.query_sizes), (nq, q_off, self.query_sizes), (2 * nq, v_off, self.value_sizes))
        rows: list[int] = []
        columns = []  # per group: the projection columns of its q, k, v (-1: a zero)
        for g in groups:
            cols_g = []
            for (base, offsets, sizes), width in zip(parts, (g.query_size, g.query_size, g.value_size)):
                cols: list[int] = []
                for h in g.heads:
                    own = [base + offsets[h] + j for j in range(sizes[h])]
                    pad = width - sizes[h]
                    if g.padded_projection:
                        cols += range(len(rows), len(rows) + width)
                        rows += own + [zero_row] * pad
                    else:
                        cols += list(range(len(rows), len(rows) + len(own))) + [-1] * pad
                        rows += own
                cols_g.append(cols)
            columns.append(cols_g)
        rows.append(zero_row)  # a zero output column for the gathered groups' padding
        zero_col = len(rows) - 1
        rows += [zero_row] * (-len(rows) % 8)  # a multiple of 8 outputs suits the matrix kernels
        steps = [(g, *(_Selector([zero_col if c < 0 else c for c in cols]) for cols in cols_g))
                 for g, cols_g in zip(groups, columns)]
        # where each group's output goes in the packed context: one slice when its heads are
        # stored side by side with no padding, else one slice per head (dropping the padding)
        writes = []
        for g in groups:
            exact = all(self.value_sizes[h] == g.value_size for h in g.heads)
            side_by_side = list(g.heads) == list(range(g.heads[0], g.heads[0] + len(g.heads)))
            if exact and side_by_side:
                writes.append((slice(v_off[g.heads[0]], v_off[g.heads[-1] + 1]),))
            else:
                writes.append(tuple(slice(v_off[h], v_off[h + 1]) for h in g.heads))
        plan = {
            "groups": groups,
            "steps": steps,
            "rows": torch.tensor(rows, dtype=torch.long),
            "writes": writes,
            "query_rows": torch.tensor(rows, dtype=torch.long) < nq,
            "width": nv,
        }
        self._plans[groups] = self._plans[shape_key] = plan
        return plan

    def _fused_weights(self, plan: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The plan's fused projection weight and bias (query rows pre-multiplied by the score
        scaling), cached while the weights are unchanged and no gradient is wanted."""
        params = [self.query.weight, self.key.weight, self.value.weight]
        biases = [self.query.bias, self.key.bias, self.value.bias]
        tensors = params + [b for b in biases if b is not None]
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        stamp = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)
        key = plan["groups"]
        if not grad:
            if self._weights_cache.get("stamp") != stamp:
                self._weights_cache = {"stamp": stamp}
            if key in self._weights_cache:
                return self._weights_cache[key]
        rows = plan["rows"].to(params[0].device)
        # the score scaling is folded into the query rows: q·k then needs no rescaling
        scale = torch.where(plan["query_rows"], self.scaling, 1.0).to(params[0].device, params[0].dtype)
        weight = torch.cat([*params, params[0].new_zeros(1, params[0].shape[1])]).index_select(0, rows)
        weight = weight * scale[:, None]
        bias = None
        if biases[0] is not None:
            bias = torch.cat([*biases, biases[0].new_zeros(1)]).index_select(0, rows) * scale
        if not grad:
            self._weights_cache[key] = (weight, bias)
        return weight, bias

    def _forward_grouped(
        self, x: torch.Tensor, mask: torch.Tensor | None, grouping: str = "grouped", kernel: str | None = None
    ) -> torch.Tensor:
        B, T = x.shape[0], x.shape[1]
        plan = self._plan(B, T, x.device.type, grouping)
        weight, bias = self._fused_weights(plan)
        qkv = F.linear(x, weight, bias)  # queries already scaled
        fused = self._use_fused(T, x.device.type, kernel)
        additive = None
        context = x.new_empty(B, T, plan["width"])
        for (g, take_q, take_k, take_v), writes in zip(plan["steps"], plan["writes"]):
            n, dq, dv = len(g.heads), g.query_size, g.value_size
            q, k, v = take_q(qkv), take_k(qkv), take_v(qkv)
            if n == 1:  # one head: [B, T, d] views, no head axis to move
                if additive is None and mask is not None:
                    additive = _additive(mask, x.dtype)[:, 0]
                out = self._head(q, k, v, mask, additive, fused, scale=1.0)
                context[..., writes[0]] = out[..., : writes[0].stop - writes[0].start]
                continue
            q = q.view(B, T, n, dq).transpose(1, 2)
            k = k.view(B, T, n, dq).transpose(1, 2)
            v = v.view(B, T, n, dv).transpose(1, 2)
            if fused and dq == dv:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self._dropout(), scale=1.0)
            else:
                out = self._attend(q, k, v, _additive(mask, x.dtype), scale=1.0)
            out = out.transpose(1, 2)  # [B, T, n, dv]
            if len(writes) == 1:  # heads side by side, unpadded: one copy
                context[..., writes[0]] = out.flatten(2)
            else:
                for i, where in enumerate(writes):
                    context[..., where] = out[:, :, i, : where.stop - where.start]
        return context

    def _use_fused(self, seq: int, device_type: str, kernel: str | None) -> bool:
        if kernel is None:
            return seq >= cost_model(device_type).fused_min_seq_len
        return kernel == "fused"

    def _head(self, q, k, v, mask, additive, fused: bool, scale: float | None = None) -> torch.Tensor:
        """One head on [B, T, d] tensors; `additive` is the mask as [B, T, T] additive (or None).
        `scale` multiplies the scores (default: the module's scaling)."""
        scale = self.scaling if scale is None else scale
        if fused and q.shape[-1] == v.shape[-1] and q.shape[-1] > 0:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=additive, dropout_p=self._dropout(), scale=scale)
        return self._attend(q, k, v, additive, scale)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float | None = None
    ) -> torch.Tensor:
        """softmax(q kᵀ · scale + mask) v, written out (mask additive, broadcast over heads)."""
        scores = torch.matmul(q, k.transpose(-1, -2))
        if scale is None:
            scores = scores * self.scaling
        elif scale != 1.0:
            scores = scores * scale
        if mask is not None:
            scores = scores + mask
        probs = F.dropout(torch.softmax(scores, dim=-1), p=self._dropout(), training=self.training)
        return torch.matmul(probs, v)

    def _forward_loop(self, x: torch.Tensor, mask: torch.Tensor | None, kernel: str | None = "math") -> torch.Tensor:
        """Head after head (GRAIN's own way); kernel "math" writes attention out as matmul +
        softmax, "fused" calls the fused kernel per head where query and value sizes agree."""
        q_all, k_all, v_all = self.query(x), self.key(x), self.value(x)
        additive = _additive(mask, x.dtype)
        if additive is not None:
            additive = additive[:, 0]  # [B, T_q or 1, T_k]: the same for every head
        fused = kernel == "fused"
        outputs = []
        q_at = v_at = 0
        for dq, dv in zip(self.query_sizes, self.value_sizes):
            q, k = q_all[..., q_at : q_at + dq], k_all[..., q_at : q_at + dq]
            v = v_all[..., v_at : v_at + dv]
            q_at, v_at = q_at + dq, v_at + dv
            outputs.append(self._head(q, k, v, mask, additive, fused))
        return torch.cat(outputs, dim=-1)


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean keep-mask as an additive one (0 keep, most negative drop); others unchanged."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
