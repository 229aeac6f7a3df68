"""Module surgery shared by head pruning and GRAIN's shrinker.

Row/column selection of ``nn.Linear`` layers, replacing a module inside a model, and swapping a
module's class for a subclass with another forward. Nothing here knows a model family.
"""

from __future__ import annotations

import sys
import warnings
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import skip_init

__all__ = ["select_linear", "select_conv1d", "owner_of", "replace_module", "subclass_with_forward"]

_SUBCLASSES: dict[tuple[type, object, str], type] = {}


def select_linear(linear: nn.Linear, index: torch.Tensor | list[int], dim: int) -> nn.Linear:
    """A new Linear keeping `index` along dim 0 (output rows, with their bias entries) or dim 1
    (input columns; the bias is kept whole). Dtype, device, requires_grad and mode carry over."""
    if dim not in (0, 1):
        raise ValueError(f"dim must be 0 (output rows) or 1 (input columns), got {dim!r}")
    index = torch.as_tensor(index, dtype=torch.long)
    weight = linear.weight.detach().index_select(dim, index.to(linear.weight.device)).clone()
    bias = linear.bias
    if bias is not None and dim == 0:
        bias = bias.detach().index_select(0, index.to(bias.device)).clone()
    elif bias is not None:
        bias = bias.detach().clone()
    out_f, in_f = weight.shape
    with warnings.catch_warnings():  # a zero-width Linear (an emptied layer) is expected here
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        new = skip_init(nn.Linear, in_f, out_f, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    new.train(linear.training)
    return new


def owner_of(root: nn.Module, target: nn.Module) -> tuple[nn.Module, str]:
    """(parent module, attribute name) under which `target` sits inside `root`."""
    for module in root.modules():
        for name, child in module.named_children():
            if child is target:
                return module, name
    raise ValueError(f"{type(target).__name__} is not a submodule of {type(root).__name__}")


def replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put `new` where `old` sits inside `root`."""
    parent, name = owner_of(root, old)
    setattr(parent, name, new)


def subclass_with_forward(cls: type, forward: Callable, prefix: str, module: str) -> type:
    """A subclass of `cls` whose forward is `forward`, named ``prefix + cls.__name__`` and
    registered in `module` so it stays importable by name (cached: one class per pair)."""
    key = (cls, forward, prefix)
    if key not in _SUBCLASSES:
        name = f"{prefix}{cls.__name__}"
        new = type(name, (cls,), {"forward": forward, "__module__": module, "__qualname__": name})
        setattr(sys.modules[module], name, new)
        _SUBCLASSES[key] = new
    return _SUBCLASSES[key]


def select_conv1d(conv: nn.Module, index: torch.Tensor | list[int], dim: int) -> nn.Module:
    """A new transformers ``Conv1D`` (input-major: weight [in, out]) keeping `index` along dim 1
    (outputs, with their bias entries) or dim 0 (inputs; the bias is kept whole)."""
    from transformers.pytorch_utils import Conv1D

    if dim not in (0, 1):
        raise ValueError(f"dim must be 0 (inputs) or 1 (outputs) of a Conv1D weight, got {dim!r}")
    index = torch.as_tensor(index, dtype=torch.long).to(conv.weight.device)
    weight = conv.weight.detach().index_select(dim, index).clone()
    bias = conv.bias.detach()
    bias = (bias.index_select(0, index) if dim == 1 else bias).clone()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        new = Conv1D(weight.shape[1], weight.shape[0]).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
        new.bias = nn.Parameter(bias, requires_grad=conv.bias.requires_grad)
    new.train(conv.training)
    return new
