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


def head_size(rows: int, num_heads: int, what: str, count: str = "num_heads") -> int:
    """Rows per head of a [H*d, ...] gradient; 0 heads only fit 0 rows. `count` names the head count."""
    if num_heads == 0:
        if rows != 0:
            raise ValueError(f"{what} has {rows} rows but {count} is 0; 0 heads fit only 0 rows")
        return 0
    if rows % num_heads:
        raise ValueError(
            f"{what} has {rows} rows, which {count}={num_heads} does not divide: "
            f"expected rows = {count} * head_size"
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

    layers[l] is (Q, K, V) or None for a layer with no heads; Q is [heads[l] * head_size, width],
    K and V [kv_heads[l] * head_size, width] (kv_heads = heads unless grouped-query attention)."""

    layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]
    heads: list[int]
    kv_heads: list[int]
    head_size: int
    width: int
    dtype: torch.dtype
    device: torch.device

    @property
    def max_heads(self) -> int:
        return max(self.heads, default=0)

    @property
    def counts(self) -> list[tuple[int, int, int]]:
        """Per layer the heads of Q, K and V."""
        return [(h, kv, kv) for h, kv in zip(self.heads, self.kv_heads)]


def per_layer_heads(num_heads: int | Sequence[int], num_layers: int, what: str = "num_heads") -> list[int]:
    if isinstance(num_heads, Sequence) and not isinstance(num_heads, (str, bytes)):
        if len(num_heads) != num_layers:
            raise ValueError(f"{what} has {len(num_heads)} entries but there are {num_layers} layers")
        return [check_count(h, f"{what}[{i}]") for i, h in enumerate(num_heads)]
    return [check_count(num_heads, what)] * num_layers


def kv_heads_per_layer(
    heads: Sequence[int], num_kv_heads: int | Sequence[int] | None
) -> list[int]:
    """The K/V head count of each layer: num_kv_heads (an int or one per layer), or the query head
    count when None. Each layer's query heads must split evenly into its KV groups (query head h
    reads KV head h // (H / H_kv)), and a layer has KV heads exactly when it has query heads."""
    if num_kv_heads is None:
        return list(heads)
    kv = per_layer_heads(num_kv_heads, len(heads), "num_kv_heads")
    for l, (h, g) in enumerate(zip(heads, kv)):
        if (h == 0) != (g == 0) or (g and h % g):
            raise ValueError(
                f"layer {l}: num_heads={h} is not a multiple of num_kv_heads={g}; each KV head serves "
                f"num_heads / num_kv_heads query heads (and a layer without query heads has no KV heads)"
            )
    return kv


def parse_qkv_layers(
    grads: Sequence[Sequence[torch.Tensor | None]],
    num_heads: int | Sequence[int],
    num_kv_heads: int | Sequence[int] | None = None,
) -> QKVLayout:
    """Check a sequence of L layers of (Q, K, V) gradients against the head counts.

    Q is [H_l*d, D], K and V [H_kv_l*d, D] (H_kv_l = H_l unless num_kv_heads says otherwise). A layer
    with H_l = 0 may give None or [0, D] tensors. All gradients share d, D, dtype and device."""
    if isinstance(grads, torch.Tensor) or not isinstance(grads, Sequence):
        raise TypeError(
            f"grads must be a [L, 3, H*d, D] tensor or a sequence of (Q, K, V) per layer, got {type(grads).__name__}"
        )
    heads = per_layer_heads(num_heads, len(grads))
    kv_heads = kv_heads_per_layer(heads, num_kv_heads)
    layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = []
    named: list[tuple[str, torch.Tensor]] = []
    d: int | None = None
    width: int | None = None
    for l, (layer, h, kv) in enumerate(zip(grads, heads, kv_heads)):
        if isinstance(layer, torch.Tensor) or not isinstance(layer, Sequence) or len(layer) != 3:
            got = type(layer).__name__ if not isinstance(layer, Sequence) else f"{len(layer)} items"
            raise ValueError(f"layer {l}: expected a (Q, K, V) triple of gradients, got {got}")
        if h == 0 and all(g is None for g in layer):
            layers.append(None)
            continue
        checked = []
        count_names = ("num_heads",) + ("num_heads" if num_kv_heads is None else "num_kv_heads",) * 2
        for name, g, count, count_name in zip("QKV", layer, (h, kv, kv), count_names):
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
            g_d = head_size(g.shape[0], count, what, count_name)
            if count:
                if d is None:
                    d = g_d
                elif g_d != d:
                    raise ValueError(
                        f"{what}: {g.shape[0]} rows for {count} heads gives head size {g_d}, expected {d} "
                        f"like the layers before it"
                    )
            named.append((what, g))
            checked.append(g)
        layers.append(None if h == 0 else (checked[0], checked[1], checked[2]))
    if not named:
        # Nothing but empty layers: a CPU float32 layout of width 0.
        return QKVLayout(layers, heads, kv_heads, 0, 0, torch.float32, torch.device("cpu"))
    device = check_same_device(named)
    dtype = check_same_dtype(named)
    return QKVLayout(layers, heads, kv_heads, d or 0, width or 0, dtype, device)


def check_dense_qkv(
    grads: torch.Tensor, num_heads: int | Sequence[int], num_kv_heads: int | Sequence[int] | None = None
) -> int:
    """Check a [L, 3, H*d, D] tensor; returns H (one head count for all layers, K and V included)."""
    check_tensor(grads, "grads")
    if grads.dim() != 4 or grads.shape[1] != 3:
        raise ValueError(f"grads as one tensor must have shape [L, 3, H*d, D]; got {list(grads.shape)}")
    if not (isinstance(num_heads, Sequence) and not isinstance(num_heads, (str, bytes))):
        h = check_count(num_heads, "num_heads")
    else:
        heads = per_layer_heads(num_heads, grads.shape[0])
        if len(set(heads)) > 1:
            raise ValueError(
                f"a [L, 3, H*d, D] tensor has one head count for every layer, got num_heads={list(heads)}; "
                f"pass a sequence of (Q, K, V) per layer for a pruned model"
            )
        h = heads[0] if heads else 0
    if num_kv_heads is not None and set(per_layer_heads(num_kv_heads, grads.shape[0], "num_kv_heads")) - {h}:
        raise ValueError(
            f"a [L, 3, H*d, D] tensor has as many K/V heads as Q heads ({h}), got num_kv_heads={num_kv_heads!r}; "
            f"pass a sequence of (Q, K, V) per layer for grouped-query attention"
        )
    return h


HEAD_LAYOUTS = ("rows", "columns")


@dataclass(frozen=True)
class BlockRequest:
    """The checked options of head_block_norms (see its docstring)."""

    num_heads: int
    columns: bool
    squared: bool
    row_offset: int
    total_rows: int | None  # None: grad holds every row

    @property
    def sharded(self) -> bool:
        return self.total_rows is not None


def check_block_request(
    grad: torch.Tensor, num_heads: object, layout: str, squared: object, row_offset: object, total_rows: object
) -> BlockRequest:
    """Check head_block_norms' arguments against grad [..., R, C]."""
    check_tensor(grad, "grad")
    if layout not in HEAD_LAYOUTS:
        raise ValueError(f"layout must be one of {HEAD_LAYOUTS}, got {layout!r}")
    columns = layout == "columns"
    shape = "[..., D, H*d]" if columns else "[..., H*d, D]"
    if grad.dim() < 2:
        raise ValueError(f"grad must be {shape} (at least 2-D), got shape {list(grad.shape)}")
    if not isinstance(squared, bool):
        raise TypeError(f"squared must be a bool, got {type(squared).__name__}")
    num_heads = check_count(num_heads, "num_heads")
    rows, cols = grad.shape[-2], grad.shape[-1]
    offset = check_count(row_offset, "row_offset")
    total = None if total_rows is None else check_count(total_rows, "total_rows")
    if total is not None and offset + rows > total:
        raise ValueError(
            f"grad holds rows [{offset}, {offset + rows}) (row_offset={offset}, {rows} rows) but "
            f"total_rows is {total}: a shard's rows must lie within the full weight"
        )
    if offset and total is None:
        raise ValueError(f"row_offset={offset} needs total_rows, the full weight's row count")
    if total == rows:
        total = None  # the whole weight after all
    if total is not None and not squared:
        raise ValueError(
            "a shard (row_offset / total_rows) gives partial sums per head: pass squared=True, "
            "all-reduce the partial sums across shards, then take the square root"
        )
    if columns:
        head_size(cols, num_heads, f"grad {list(grad.shape)} (layout='columns': H*d columns)")
    elif total is None:
        head_size(rows, num_heads, f"grad {list(grad.shape)}")
    else:
        head_size(total, num_heads, f"total_rows={total} of the sharded weight")
    return BlockRequest(num_heads, columns, squared, offset, None if columns else total)
