"""How the grouped uneven-head attention batches its heads: the grouping and the fused projection.

Heads sorted by size are split into contiguous groups, each run as one batched attention call
with every head padded to the group's largest size (a run of identical heads may run unpadded).
`plan_groups` picks the split that a small cost model says is cheapest: a fixed cost per group
(one more attention call) against the multiply-adds and copies that padding adds. Similar heads
then share a call; one big head among many small ones gets its own instead of inflating them.

`build_plan` turns a grouping into what the forward needs: the rows of ``[Wq; Wk; Wv; 0]`` that
make up one fused projection, per group the selectors of its (padded) Q, K and V in that
projection's output, and where each group's output goes in the packed context.

The cost model's constants (`CPU_COSTS`) were measured on this project's 2-core CPU
(bench/grain_speed.py, bench/RESULTS.md). No GPU constants exist yet: measure them with the
benchmark before adding any.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["CostModel", "CPU_COSTS", "HeadGroup", "plan_groups", "Plan", "build_plan"]


@dataclass(frozen=True)
class CostModel:
    """What `plan_groups` weighs, in multiply-add equivalents.

    A group costs `group_overhead` (one more attention call: dispatch, small copies), the
    attention arithmetic of its heads at the padded size, and producing its padded Q/K/V: either
    by projecting with zero-padded weights (each pad costs a full row of multiply-adds) or by
    projecting the packed rows and gathering them into the padded layout (`gather_per_element`
    for every element). Each group takes the cheaper of the two. Below `fused_min_seq_len` tokens
    plain batched matmul + softmax replaces PyTorch's fused attention kernel, whose blocking costs
    more than it saves on short rows.
    """

    group_overhead: float
    gather_per_element: float
    fused_min_seq_len: int


# measured on the project's 2-core CPU (single-thread micro-benchmarks; bench/RESULTS.md "## GRAIN")
CPU_COSTS = CostModel(group_overhead=3.0e6, gather_per_element=64.0, fused_min_seq_len=64)


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
    costs: CostModel = CPU_COSTS,
) -> tuple[HeadGroup, ...]:
    """The cheapest split of the heads, sorted by size, into contiguous groups (dynamic
    programming over the sorted order); a run of identical heads may also run unpadded.

    `tokens` is batch × sequence length: the more tokens, the more padding costs against the
    fixed cost of another group.
    """
    n = len(query_sizes)
    if n == 0:
        return ()
    if len(value_sizes) != n:
        raise ValueError(f"got {n} query sizes but {len(value_sizes)} value sizes")
    sizes = list(zip(query_sizes, value_sizes))
    need = [max(1, q, v) for q, v in sizes]
    packed = [2 * q + v for q, v in sizes]
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


# --------------------------------------------------------------------------- the fused projection


def _as_slice(index: list[int]) -> slice | None:
    """`index` as a slice when it is a contiguous increasing run (then no copy is needed)."""
    if index and index == list(range(index[0], index[0] + len(index))):
        return slice(index[0], index[0] + len(index))
    return None


class Selector:
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


@dataclass(frozen=True)
class Plan:
    """Everything the grouped forward needs for one grouping.

    `rows`: rows of ``[Wq; Wk; Wv; 0]`` (the last one a zero row) forming the fused projection,
    `query_rows` marks those that come from Wq (they get the score scaling). Per group, `steps`
    holds it with the selectors of its Q, K and V, and `writes` the slices of the packed context
    (`width` columns) that its heads' outputs fill.
    """

    groups: tuple[HeadGroup, ...]
    steps: tuple[tuple[HeadGroup, Selector, Selector, Selector], ...]
    rows: torch.Tensor
    query_rows: torch.Tensor
    writes: tuple[tuple[slice, ...], ...]
    width: int


def build_plan(query_sizes: Sequence[int], value_sizes: Sequence[int], groups: Sequence[HeadGroup]) -> Plan:
    """The fused projection and the per-group selectors and writes of `groups`."""
    q_off, v_off = [0], [0]
    for q, v in zip(query_sizes, value_sizes):
        q_off.append(q_off[-1] + q)
        v_off.append(v_off[-1] + v)
    nq, nv = q_off[-1], v_off[-1]
    zero_row = 2 * nq + nv  # the zero row appended to [Wq; Wk; Wv]
    parts = ((0, q_off, query_sizes), (nq, q_off, query_sizes), (2 * nq, v_off, value_sizes))
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
    steps = tuple(
        (g, *(Selector([zero_col if c < 0 else c for c in cols]) for cols in cols_g))
        for g, cols_g in zip(groups, columns)
    )
    # where each group's output goes in the packed context: one slice when its heads are
    # stored side by side with no padding, else one slice per head (dropping the padding)
    writes = []
    for g in groups:
        exact = all(value_sizes[h] == g.value_size for h in g.heads)
        side_by_side = list(g.heads) == list(range(g.heads[0], g.heads[0] + len(g.heads)))
        if exact and side_by_side:
            writes.append((slice(v_off[g.heads[0]], v_off[g.heads[-1] + 1]),))
        else:
            writes.append(tuple(slice(v_off[h], v_off[h + 1]) for h in g.heads))
    rows_t = torch.tensor(rows, dtype=torch.long)
    return Plan(tuple(groups), steps, rows_t, rows_t < nq, tuple(writes), nv)
