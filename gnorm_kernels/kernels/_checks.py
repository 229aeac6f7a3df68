"""Input checks shared by every backend, so that Triton and PyTorch refuse the same inputs with the same words."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BACKENDS = ("auto", "triton", "torch")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_tensor(t: object, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in SUPPORTED_DTYPES)
        raise TypeError(f"{what} must have dtype {names}; got {str(t.dtype).replace('torch.', '')}")
    return t


def check_count(n: object, what: str) -> int:
    """A non-negative Python/NumPy integer (bools are refused: True heads is a bug, not 1)."""
    if isinstance(n, bool):
        raise TypeError(f"{what} must be a non-negative int, got {n!r}")
    try:
        value = operator.index(n)
    except TypeError:
        raise TypeError(f"{what} must be a non-negative int, got {type(n).__name__} {n!r}") from None
    if value < 0:
        raise ValueError(f"{what} must be a non-negative int, got {value}")
    return value


def head_size(rows: int, num_heads: int, what: str) -> int:
    """Rows per head of a [H*d, ...] gradient; 0 heads only fit 0 rows."""
    if num_heads == 0:
        if rows != 0:
            raise ValueError(f"{what} has {rows} rows but num_heads is 0; 0 heads fit only 0 rows")
        return 0
    if rows % num_heads:
        raise ValueError(
            f"{what} has {rows} rows, which num_heads={num_heads} does not divide: "
            f"expected rows = num_heads * head_size"
        )
    return rows // num_heads


def check_same_device(tensors: Iterable[tuple[str, torch.Tensor]]) -> torch.device:
    first: tuple[str, torch.Tensor] | None = None
    for name, t in tensors:
        if first is None:
            first = (name, t)
        elif t.device != first[1].device:
            raise ValueError(
                f"all inputs must be on one device: {first[0]} is on {first[1].device}, {name} on {t.device}"
            )
    if first is None:
        raise ValueError("no tensors given")
    return first[1].device


def check_same_dtype(tensors: Iterable[tuple[str, torch.Tensor]]) -> torch.dtype:
    first: tuple[str, torch.Tensor] | None = None
    for name, t in tensors:
        if first is None:
            first = (name, t)
        elif t.dtype != first[1].dtype:
            raise TypeError(f"all inputs must share one dtype: {first[0]} is {first[1].dtype}, {name} is {t.dtype}")
    if first is None:
        raise ValueError("no tensors given")
    return first[1].dtype


def prepare_out(out: torch.Tensor | None, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """The float32 result tensor: a fresh one, or the caller's `out` once it fits.

    The kernels write every element of `out` themselves, which is what lets a test fill it with a
    sentinel first and check that none survives."""
    shape = tuple(shape)
    if out is None:
        return torch.empty(shape, dtype=torch.float32, device=device)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if out.dtype != torch.float32 or tuple(out.shape) != shape or out.device != device:
        raise ValueError(
            f"out must be a float32 tensor of shape {list(shape)} on {device}; "
            f"got {out.dtype} {list(out.shape)} on {out.device}"
        )
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    return out


@dataclass(frozen=True)
class QKVLayout:
    """A checked list of per-layer (Q, K, V) weight gradients, possibly physically pruned.

    layers[l] is (Q, K, V), each [heads[l] * head_size, width], or None for a layer with no heads."""

    layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]
    heads: list[int]
    head_size: int
    width: int
    dtype: torch.dtype
    device: torch.device

    @property
    def max_heads(self) -> int:
        return max(self.heads, default=0)

    def tensors(self) -> list[torch.Tensor]:
        return [g for layer in self.layers if layer is not None for g in layer]


def per_layer_heads(num_heads: int | Sequence[int], num_layers: int) -> list[int]:
    if isinstance(num_heads, Sequence) and not isinstance(num_heads, (str, bytes)):
        if len(num_heads) != num_layers:
            raise ValueError(f"num_heads has {len(num_heads)} entries but there are {num_layers} layers")
        return [check_count(h, f"num_heads[{i}]") for i, h in enumerate(num_heads)]
    return [check_count(num_heads, "num_heads")] * num_layers


def parse_qkv_layers(grads: Sequence[Sequence[torch.Tensor | None]], num_heads: int | Sequence[int]) -> QKVLayout:
    """Check a sequence of L layers of (Q, K, V) gradients [H_l*d, D] against the head counts H_l.

    A layer with H_l = 0 may give None or [0, D] tensors. All gradients share d, D, dtype and device."""
    if isinstance(grads, torch.Tensor) or not isinstance(grads, Sequence):
        raise TypeError(
            f"grads must be a [L, 3, H*d, D] tensor or a sequence of (Q, K, V) per layer, got {type(grads).__name__}"
        )
    heads = per_layer_heads(num_heads, len(grads))
    layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = []
    named: list[tuple[str, torch.Tensor]] = []
    d: int | None = None
    width: int | None = None
    for l, (layer, h) in enumerate(zip(grads, heads)):
        if isinstance(layer, torch.Tensor) or not isinstance(layer, Sequence) or len(layer) != 3:
            got = type(layer).__name__ if not isinstance(layer, Sequence) else f"{len(layer)} items"
            raise ValueError(f"layer {l}: expected a (Q, K, V) triple of gradients, got {got}")
        if h == 0 and all(g is None for g in layer):
            layers.append(None)
            continue
        checked = []
        for name, g in zip("QKV", layer):
            what = f"layer {l} {name} gradient"
            if g is None:
                raise ValueError(f"{what} is None (did backward reach it?); only a layer with 0 heads may give None")
            g = check_tensor(g, what)
            if g.dim() != 2:
                raise ValueError(f"{what} must be 2-D [H*d, D], got shape {list(g.shape)}")
            if width is None:
                width = g.shape[1]
            elif g.shape[1] != width:
                raise ValueError(f"{what} has {g.shape[1]} columns, expected {width} like the layers before it")
            g_d = head_size(g.shape[0], h, what)
            if h:
                if d is None:
                    d = g_d
                elif g_d != d:
                    raise ValueError(
                        f"{what}: {g.shape[0]} rows for {h} heads gives head size {g_d}, expected {d} "
                        f"like the layers before it"
                    )
            named.append((f"layer {l} {name} gradient", g))
            checked.append(g)
        layers.append(None if h == 0 else (checked[0], checked[1], checked[2]))
    if not named:
        # Nothing but empty layers: a CPU float32 layout of width 0.
        return QKVLayout(layers, heads, 0, 0, torch.float32, torch.device("cpu"))
    device = check_same_device(named)
    dtype = check_same_dtype(named)
    return QKVLayout(layers, heads, d or 0, width or 0, dtype, device)


def check_dense_qkv(grads: torch.Tensor, num_heads: int | Sequence[int]) -> int:
    """Check a [L, 3, H*d, D] tensor; returns H (one head count for all layers)."""
    check_tensor(grads, "grads")
    if grads.dim() != 4 or grads.shape[1] != 3:
        raise ValueError(f"grads as one tensor must have shape [L, 3, H*d, D]; got {list(grads.shape)}")
    if not (isinstance(num_heads, Sequence) and not isinstance(num_heads, (str, bytes))):
        return check_count(num_heads, "num_heads")
    heads = per_layer_heads(num_heads, grads.shape[0])
    if len(set(heads)) > 1:
        raise ValueError(
            f"a [L, 3, H*d, D] tensor has one head count for every layer, got num_heads={list(heads)}; "
            f"pass a sequence of (Q, K, V) per layer for a pruned model"
        )
    return heads[0] if heads else 0


def padding_mask(heads: Sequence[int], h_max: int, device: torch.device) -> torch.Tensor:
    """Flat bool mask of the [L, 3, H_max] entries past each layer's head count."""
    counts = torch.tensor(list(heads), dtype=torch.int64, device=device).repeat_interleave(3)
    return (torch.arange(h_max, device=device)[None, :] >= counts[:, None]).reshape(-1)
