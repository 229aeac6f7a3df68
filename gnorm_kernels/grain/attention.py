"""Self-attention whose heads have different query/key and value sizes (what GRAIN leaves behind).

Weights are stored packed, head after head: ``query``/``key`` are Linear(D, Σ q_h), ``value`` is
Linear(D, Σ v_h), and the returned context has Σ v_h columns in the same order, ready for the
(shrunk) output projection. Two ways to run it (``impl``):

* ``"grouped"`` (the default): one fused Q/K/V projection for all heads, then the heads in groups
  of similar size, each group one batched attention call with its heads padded to the group's
  largest size (exact: a zero query dimension adds nothing to a score, a zero value dimension is
  dropped afterwards). `gnorm_kernels.grain.plan` chooses the groups.
* ``"loop"``: one small attention per head in a Python loop (matmul, softmax, matmul), as GRAIN's
  released code does. The reference that the tests and the benchmark compare against.

Two earlier choices are gone: ``"auto"`` timed several variants at the first call (on the CPU
within about 4% of "grouped" in every run, bench/RESULTS.md) and made a saved model's arithmetic
depend on a timing race; one padded group per layer (``"padded"``) was slower than "grouped" in
every measured case.

A head with value units but no query units attends uniformly to the unmasked tokens, exactly
as the masked model does (all its scores are zero). Scores use the original scaling
1/sqrt(d) of the unpruned model.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gnorm_kernels.grain.plan import CPU_COSTS, CostModel, Plan, build_plan, plan_groups

__all__ = ["UnevenSelfAttention", "IMPLEMENTATIONS", "DEFAULT_IMPL", "check_impl", "HEAD_TOOLS_REFUSAL"]

IMPLEMENTATIONS = ("grouped", "loop")
DEFAULT_IMPL = "grouped"

HEAD_TOOLS_REFUSAL = (
    "this model is GRAIN-shrunk: its heads have uneven query/key and value sizes, so head masking, head "
    "scores and head pruning (all defined on whole heads of one size) do not apply to it; inspect it with "
    "gnorm_kernels.grain.grain_structure_of(model)"
)


def check_impl(impl: str) -> str:
    """The implementation `impl` names, checked: "grouped" or "loop"."""
    if impl not in IMPLEMENTATIONS:
        removed = (
            ' ("padded" was removed: one padded group per layer was slower than "grouped" in every '
            "measured case)"
            if impl == "padded"
            else ' ("auto" was removed: its timing tuner chose between variants within about 4% of each other)'
            if impl == "auto"
            else ""
        )
        raise ValueError(f"impl must be one of {list(IMPLEMENTATIONS)}, got {impl!r}{removed}")
    return impl


class UnevenSelfAttention(nn.Module):
    """Drop-in replacement for a BERT-style self-attention module with heads of uneven sizes.

    ``heads`` names each packed head by its original index. Heads need at least one value
    dimension (a head without value dimensions contributes nothing and is not stored).
    ``forward(hidden_states, attention_mask=None, **ignored)`` returns ``(context, None)``
    like the module it replaces; ``attention_mask`` is the additive float or boolean mask the
    surrounding transformers model builds (or None). `costs` is the cost model the grouping
    uses (an instance may set its own).
    """

    # gnorm_kernels.heads.families.head_layout raises this for a model holding such a module
    head_tools_refusal = HEAD_TOOLS_REFUSAL
    costs: CostModel = CPU_COSTS

    def __init__(
        self,
        hidden_size: int,
        query_sizes: Sequence[int],
        value_sizes: Sequence[int],
        *,
        scaling: float,
        heads: Sequence[int] | None = None,
        impl: str = DEFAULT_IMPL,
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
        self._impl = check_impl(impl)
        kw = dict(bias=bias, device=device, dtype=dtype)
        with warnings.catch_warnings():  # a layer without heads has zero-width projections
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            self.query = nn.Linear(hidden_size, sum(query_sizes), **kw)
            self.key = nn.Linear(hidden_size, sum(query_sizes), **kw)
            self.value = nn.Linear(hidden_size, sum(value_sizes), **kw)
        self._plans: dict[tuple, Plan] = {}
        self._weights_cache: dict = {}

    # ------------------------------------------------------------------ description

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        self._impl = check_impl(value)

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
        if self.impl == "loop":
            return self._forward_loop(hidden_states, attention_mask), None
        return self._forward_grouped(hidden_states, attention_mask), None

    def _dropout(self) -> float:
        return self.dropout_p if self.training else 0.0

    def _plan(self, batch: int, seq: int) -> Plan:
        """The grouping and fused projection for this input shape, cached per shape and cost
        model (and per grouping, so shapes that group alike share one plan)."""
        shape_key = (batch, seq, self.costs)
        plan = self._plans.get(shape_key)
        if plan is not None:
            return plan
        groups = plan_groups(
            self.query_sizes, self.value_sizes, tokens=batch * seq, seq_len=seq,
            hidden_size=self.hidden_size, costs=self.costs,
        )
        plan = self._plans.get(groups)
        if plan is None:
            plan = self._plans[groups] = build_plan(self.query_sizes, self.value_sizes, groups)
        self._plans[shape_key] = plan
        return plan

    def _fused_weights(self, plan: Plan) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The plan's fused projection weight and bias (query rows pre-multiplied by the score
        scaling), cached while the weights are unchanged and no gradient is wanted."""
        params = [self.query.weight, self.key.weight, self.value.weight]
        biases = [self.query.bias, self.key.bias, self.value.bias]
        tensors = params + [b for b in biases if b is not None]
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        stamp = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)
        key = plan.groups
        if not grad:
            if self._weights_cache.get("stamp") != stamp:
                self._weights_cache = {"stamp": stamp}
            if key in self._weights_cache:
                return self._weights_cache[key]
        rows = plan.rows.to(params[0].device)
        # the score scaling is folded into the query rows: q·k then needs no rescaling
        scale = torch.where(plan.query_rows, self.scaling, 1.0).to(params[0].device, params[0].dtype)
        weight = torch.cat([*params, params[0].new_zeros(1, params[0].shape[1])]).index_select(0, rows)
        weight = weight * scale[:, None]
        bias = None
        if biases[0] is not None:
            bias = torch.cat([*biases, biases[0].new_zeros(1)]).index_select(0, rows) * scale
        if not grad:
            self._weights_cache[key] = (weight, bias)
        return weight, bias

    def _forward_grouped(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T = x.shape[0], x.shape[1]
        plan = self._plan(B, T)
        weight, bias = self._fused_weights(plan)
        qkv = F.linear(x, weight, bias)  # queries already scaled
        fused = T >= self.costs.fused_min_seq_len
        additive = None
        context = x.new_empty(B, T, plan.width)
        for (g, take_q, take_k, take_v), writes in zip(plan.steps, plan.writes):
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

    def _forward_loop(self, x: torch.Tensor, mask: torch.Tensor | None, fused: bool = False) -> torch.Tensor:
        """Head after head (GRAIN's own way), attention written out as matmul + softmax; with
        `fused` (the benchmark's "loop-sdpa") PyTorch's fused kernel per head where query and
        value sizes agree."""
        q_all, k_all, v_all = self.query(x), self.key(x), self.value(x)
        additive = _additive(mask, x.dtype)
        if additive is not None:
            additive = additive[:, 0]  # [B, T_q or 1, T_k]: the same for every head
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
