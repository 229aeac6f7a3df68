"""QKVGradientBuffer: the Q/K/V weight gradients of a whole model in one flat buffer.

Inside the `with` block every Q/K/V weight's `.grad` is a view into one preallocated tensor, so
autograd accumulates straight into it, and `norms()` reduces the whole model's gradient blocks with
one kernel launch over a precomputed table of block addresses (on CUDA; the PyTorch backend on
CPU unless backend="triton"). Pruned layers (fewer heads, or none) are laid out like any other, and
so are grouped-query layers, whose K and V weights have fewer heads than Q (num_kv_heads).
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import torch_backend
from ._checks import check_backend, check_count, check_tensor, kv_heads_per_layer, prepare_out
from ._combine import combine_qkv_norms
from ._triton import check_device, kernel_module, use_triton

_ALIGN = 32  # each parameter's segment starts at a multiple of 32 elements (>= 64 bytes)


class QKVGradientBuffer:
    """One flat gradient buffer for the Q, K, V weights of every layer.

    weights: per layer, the (W_Q, W_K, W_V) parameters, each [H_l*head_size, D] (H_l may be 0);
    with num_kv_heads (grouped-query attention: an int, or one per layer) W_K and W_V are
    [H_kv_l*head_size, D] and their norms come per KV head (see qkv_head_norms).
    All must be leaf tensors (Parameters, requiring grad by the time backward runs) of one dtype
    (float32, float16 or bfloat16: the buffer has that dtype, since a parameter's .grad must) and
    one device; a parameter may appear only once (for ALBERT's shared layer, pass it once).
    Float32 parameters give a float32 buffer; half parameters are kept in their own dtype rather
    than refused, and the norms are still accumulated in float32.

    Usage::

        with QKVGradientBuffer(weights, head_size) as buf:
            for batch in batches:
                buf.zero_()
                objective(model, batch).backward()
                norms = buf.norms()  # [L, 3, H_max], NaN past a layer's (or its K/V's) heads

    On exit each parameter's previous .grad (often None) is restored; the buffer keeps its values.
    Anything that replaces a .grad inside the block (optimizer.zero_grad(set_to_none=True),
    backward(create_graph=True)) detaches it from the buffer: norms() then refuses to run.
    """

    def __init__(
        self,
        weights: Sequence[Sequence[torch.Tensor]],
        head_size: int,
        *,
        num_kv_heads: int | Sequence[int] | None = None,
        backend: str = "auto",
    ):
        self.backend = check_backend(backend)
        self.head_size = check_count(head_size, "head_size")
        if self.head_size == 0:
            raise ValueError("head_size must be positive, got 0")
        self.grouped = num_kv_heads is not None
        self.params = self._check_weights(weights, self.grouped)
        self.num_heads = [_count_heads(layer[0], self.head_size, l) for l, layer in enumerate(self.params)]
        self.num_kv_heads = kv_heads_per_layer(self.num_heads, num_kv_heads)
        for l, (layer, kv) in enumerate(zip(self.params, self.num_kv_heads)):
            for name, p in zip("KV", layer[1:]):
                if p.shape[0] != kv * self.head_size:
                    raise ValueError(
                        f"layer {l}: W_{name} has {p.shape[0]} rows, expected num_kv_heads * head_size = "
                        f"{kv} * {self.head_size} = {kv * self.head_size}"
                    )
        first = self.params[0][0] if self.params else None
        self.dtype = first.dtype if first is not None else torch.float32
        self.device = first.device if first is not None else torch.device("cpu")
        self.width = first.shape[1] if first is not None else 0

        offsets, total = [], 0
        for layer in self.params:
            offsets.append([])
            for p in layer:
                offsets[-1].append(total)
                total += -(-p.numel() // _ALIGN) * _ALIGN
        self.buffer = torch.zeros(total, dtype=self.dtype, device=self.device)
        self.views = [
            tuple(self.buffer[o : o + p.numel()].view(p.shape) for o, p in zip(offs, layer))
            for offs, layer in zip(offsets, self.params)
        ]
        self._saved: list[torch.Tensor | None] | None = None
        self._entered = False
        self._table = None  # block_norms.QKVTable, built by the first norms() on the Triton backend

    @staticmethod
    def _check_weights(weights: Sequence[Sequence[torch.Tensor]], grouped: bool) -> list[tuple[torch.Tensor, ...]]:
        if isinstance(weights, torch.Tensor) or not isinstance(weights, Sequence):
            raise TypeError(f"weights must be a sequence of (W_Q, W_K, W_V) per layer, got {type(weights).__name__}")
        layers, seen, first = [], set(), None
        for l, layer in enumerate(weights):
            if isinstance(layer, torch.Tensor) or not isinstance(layer, Sequence) or len(layer) != 3:
                raise ValueError(f"layer {l}: expected (W_Q, W_K, W_V), got {type(layer).__name__}")
            for name, p in zip("QKV", layer):
                what = f"layer {l} W_{name}"
                check_tensor(p, what)
                if p.dim() != 2:
                    raise ValueError(f"{what} must be 2-D [H*d, D], got shape {list(p.shape)}")
                if not p.is_leaf:
                    raise ValueError(
                        f"{what} must be a leaf tensor (a Parameter): autograd fills .grad only for leaves"
                    )
                if id(p) in seen:
                    raise ValueError(f"{what} appears twice; pass each (shared) parameter once")
                seen.add(id(p))
                if first is None:
                    first = (what, p)
                elif p.dtype != first[1].dtype:
                    raise TypeError(
                        f"all weights must share one dtype (the buffer has it): {first[0]} is {first[1].dtype}, "
                        f"{what} is {p.dtype}"
                    )
                elif p.device != first[1].device:
                    raise ValueError(
                        f"all weights must be on one device: {first[0]} on {first[1].device}, {what} on {p.device}"
                    )
                elif p.shape[1] != first[1].shape[1]:
                    raise ValueError(f"{what} has {p.shape[1]} columns, expected {first[1].shape[1]} like {first[0]}")
            if not grouped and not layer[0].shape == layer[1].shape == layer[2].shape:
                shapes = [list(p.shape) for p in layer]
                raise ValueError(
                    f"layer {l}: W_Q, W_K, W_V must have one shape, got {shapes} "
                    f"(pass num_kv_heads for grouped-query attention)"
                )
            if grouped and layer[1].shape != layer[2].shape:
                raise ValueError(f"layer {l}: W_K and W_V must have one shape, got {list(layer[1].shape)}, {list(layer[2].shape)}")
            layers.append(tuple(layer))
        return layers

    # -- the context: install and restore the .grad views ---------------------------------------
    def __enter__(self) -> "QKVGradientBuffer":
        if self._saved is not None:
            raise RuntimeError("QKVGradientBuffer is already active; it cannot be entered twice")
        flat = [p for layer in self.params for p in layer]
        saved = [p.grad for p in flat]
        try:
            for p, v in zip(flat, (v for layer in self.views for v in layer)):
                p.grad = v
        except Exception:
            for p, g in zip(flat, saved):
                p.grad = g
            raise
        self._saved = saved
        self._entered = True
        return self

    def __exit__(self, *exc) -> None:
        flat = [p for layer in self.params for p in layer]
        for p, g in zip(flat, self._saved or []):
            p.grad = g
        self._saved = None

    # -- use ------------------------------------------------------------------------------------
    def zero_(self) -> "QKVGradientBuffer":
        """Zero every gradient (do this before each batch)."""
        self.buffer.zero_()
        return self

    @property
    def counts(self) -> list[tuple[int, int, int]]:
        """Per layer the heads of W_Q, W_K and W_V."""
        return [(h, kv, kv) for h, kv in zip(self.num_heads, self.num_kv_heads)]

    @torch.no_grad()
    def norms(self, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """G_Q, G_K, G_V block norms of every layer -> [L, 3, H_max] float32, NaN past each part's heads."""
        self._check_attached()
        L, h_max = len(self.params), max(self.num_heads, default=0)
        out = prepare_out(out, (L, 3, h_max), self.device)
        if not use_triton(self.backend, self.device):
            return torch_backend.qkv_head_norms(self.views, self.counts, out)
        module = kernel_module("block_norms")
        check_device(self.device)
        if self._table is None:  # the addresses never change: the buffer is allocated once
            self._table = module.qkv_table(self.views, self.counts, self.head_size * self.width, self.device)
        return module.launch_qkv_table(self._table, out)

    def scores(self, combine: str = "product") -> torch.Tensor:
        """combine(G_Q, G_K, G_V) per (query) head -> [L, H_max] (see qkv_head_scores)."""
        if not self.grouped:
            return combine_qkv_norms(self.norms(), combine)
        return combine_qkv_norms(self.norms(), combine, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads)

    def _check_attached(self) -> None:
        if not self._entered:
            raise RuntimeError("use QKVGradientBuffer as a context manager (`with ... as buf:`) before norms()")
        if self._saved is None:
            return  # after the block the buffer keeps the last gradients
        for l, (layer, views) in enumerate(zip(self.params, self.views)):
            for name, p, v in zip("QKV", layer, views):
                if p.grad is None or p.grad.data_ptr() != v.data_ptr() or p.grad.shape != v.shape:
                    raise RuntimeError(
                        f"layer {l} W_{name}.grad no longer points into the buffer (set to None or replaced, "
                        f"e.g. by zero_grad() or backward(create_graph=True)); use buf.zero_() between batches"
                    )


def _count_heads(weight: torch.Tensor, d: int, layer: int) -> int:
    """Heads of a [H*d, D] weight, with a clear error when d does not divide its rows."""
    if weight.shape[0] % d:
        raise ValueError(f"layer {layer}: W_Q has {weight.shape[0]} rows, which head_size={d} does not divide")
    return weight.shape[0] // d

