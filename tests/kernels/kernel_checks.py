"""What the kernel tests share: random inputs, poisoned outputs, float64 references, comparisons.

On a machine without a GPU, backend="triton" runs the kernels under Triton's interpreter, so the
shapes in these tests stay small. Every output is poisoned with a sentinel before the call
(out=...), so an element no program wrote fails the test; inputs are fresh random numbers on every
run (the `gen` fixture prints its seed).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from hypothesis import HealthCheck, settings

BACKENDS = ["torch", "triton"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Inputs are rounded to their dtype before the float64 reference sees them, so what is left is
# float32 accumulation: 1e-5 relative for float32; half types get 1e-4 (tensor-core accumulation
# order on a GPU).
TOL = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-4}
SENTINEL = -1.0  # a norm is never negative
# The interpreter computes with NumPy, which warns on the NaN/inf inputs that some tests feed on purpose.
FILTER_NUMPY_WARNINGS = pytest.mark.filterwarnings("ignore:(invalid value|overflow) encountered:RuntimeWarning")
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def randn(*shape, dtype=torch.float32, gen=None) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(dtype)


def poisoned(*shape) -> torch.Tensor:
    return torch.full(shape, SENTINEL)


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    """Same NaN pattern, no sentinel left, and ||out - ref|| / ||ref|| < tol on the rest."""
    assert out.dtype == torch.float32
    assert out.shape == ref.shape
    assert not (out == SENTINEL).any(), "an output element was never written"
    assert torch.equal(out.isnan(), ref.isnan()), f"NaN pattern differs:\n{out}\n{ref}"
    ok = ~ref.isnan()
    num = (out[ok].double() - ref[ok]).norm()
    den = ref[ok].norm()
    assert num <= tol * den + 1e-30, f"relative error {float(num / den) if den else float(num)} over {tol}"


def ref64_block_norms(grad: torch.Tensor, num_heads: int) -> torch.Tensor:
    *lead, rows, cols = grad.shape
    g = grad.double().reshape(*lead, num_heads, (rows // num_heads) * cols)
    bad = ~torch.isfinite(g).all(dim=-1)
    return g.square().sum(-1).sqrt().masked_fill(bad, float("nan"))


def ref64_per_example(x: torch.Tensor, g: torch.Tensor, num_heads: int) -> torch.Tensor:
    B, T, D = x.shape
    per_example = torch.einsum("btc,btd->bcd", g.double(), x.double())  # [B, H*d, D], materialised
    blocks = per_example.reshape(B, num_heads, -1)
    return blocks.square().sum(-1).sqrt().masked_fill(~torch.isfinite(blocks).all(-1), float("nan"))


class LaunchCounter:
    """Stands in for a Triton kernel object and counts its launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


def ref64_column_norms(grad: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Column blocks of grad [..., D, H*d] (a Conv1D weight): the row blocks of its transpose."""
    return ref64_block_norms(grad.transpose(-1, -2), num_heads)


def ragged_layers(heads, d, cols, dtype, gen, kv_heads=None):
    """Per layer random (Q, K, V) gradients: Q [H_l*d, cols], K and V [H_kv_l*d, cols]."""
    kv_heads = heads if kv_heads is None else kv_heads
    return [
        (randn(h * d, cols, dtype=dtype, gen=gen), randn(kv * d, cols, dtype=dtype, gen=gen),
         randn(kv * d, cols, dtype=dtype, gen=gen))
        for h, kv in zip(heads, kv_heads)
    ]


def ref64_qkv(layers, heads, kv_heads=None):
    """[L, 3, H_max] float64 norms, NaN past each part's head count (K and V: kv_heads)."""
    kv_heads = heads if kv_heads is None else kv_heads
    h_max = max(heads, default=0)
    ref = torch.full((len(layers), 3, h_max), float("nan"), dtype=torch.float64)
    for l, (layer, h, kv) in enumerate(zip(layers, heads, kv_heads)):
        for p, (g, count) in enumerate(zip(layer, (h, kv, kv))):
            if count:
                ref[l, p, :count] = ref64_block_norms(g, count)
    return ref


def qkv_model(heads, d, width, dtype=torch.float32, kv_heads=None):
    """Per layer three Linears (Q, K, V) with heads[l] heads each (K and V: kv_heads[l])."""
    kv_heads = heads if kv_heads is None else kv_heads
    with warnings.catch_warnings():  # a layer with 0 heads has empty weights, which init warns about
        warnings.simplefilter("ignore", UserWarning)
        return [
            (torch.nn.Linear(width, h * d, dtype=dtype), torch.nn.Linear(width, kv * d, dtype=dtype),
             torch.nn.Linear(width, kv * d, dtype=dtype))
            for h, kv in zip(heads, kv_heads)
        ]


def run_model(model, x):
    """A scalar that reaches every Q/K/V weight, layers with 0 heads included."""
    total = 0.0
    for q, k, v in model:
        total = total + (q(x).tanh() * 0.5).sum() + k(x).pow(2).sum() + v(x).sin().sum()
        x = x + 0.1 * x.tanh()
    return total


def weights(model):
    return [(q.weight, k.weight, v.weight) for q, k, v in model]


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )


