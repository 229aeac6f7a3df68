"""Kernels against the PyTorch reference against a float64 reference, plus bad inputs.

On a machine without a GPU, backend="triton" runs the kernels under Triton's interpreter, so the
shapes here stay small. Every output is poisoned with a sentinel before the call (out=...), so an
element no program wrote fails the test; inputs are fresh random numbers on every run (the seed is
printed on failure).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gnorm_kernels.kernels import (
    QKVGradientBuffer,
    combine_qkv_norms,
    head_block_norms,
    per_example_head_norms,
    per_example_qkv_head_norms,
    qkv_head_norms,
    qkv_head_scores,
)

BACKENDS = ["torch", "triton"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Inputs are rounded to their dtype before the float64 reference sees them, so what is left is
# float32 accumulation: 1e-5 relative for float32; half types get 1e-4 (tensor-core accumulation
# order on a GPU).
TOL = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-4}
SENTINEL = -1.0  # a norm is never negative
# The interpreter computes with NumPy, which warns on the NaN/inf inputs that some tests feed on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow) encountered:RuntimeWarning")
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def gen() -> torch.Generator:
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}")
    return torch.Generator().manual_seed(seed)


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


# --------------------------------------------------------------------------------------------
# head_block_norms


@SETTINGS
@given(
    lead=st.lists(st.integers(1, 3), max_size=2),
    heads=st.integers(1, 5),
    d=st.integers(1, 6),
    cols=st.integers(1, 9),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31),
)
def test_head_block_norms_kernel_fallback_float64_agree(lead, heads, d, cols, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    grad = randn(*lead, heads * d, cols, dtype=dtype, gen=gen)
    ref = ref64_block_norms(grad, heads)
    results = {}
    for backend in BACKENDS:
        out = poisoned(*lead, heads)
        assert head_block_norms(grad, heads, backend=backend, out=out) is out
        assert_close(out, ref, TOL[dtype])
        results[backend] = out
    assert_close(results["triton"], results["torch"].double(), TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_kernel_split_into_chunks(gen, dtype):
    """Few, long blocks: several programs share a block and an epilogue adds their partial sums."""
    from gnorm_kernels.kernels._triton import kernel_module

    module = kernel_module("block_norms")
    grad = randn(2 * 9, 1031, dtype=dtype, gen=gen)  # K = 9 * 1031 = 9279: three 4096-element steps
    whole = head_block_norms(grad, 2, backend="triton", out=poisoned(2))  # one program loops over a block
    assert_close(whole, ref64_block_norms(grad, 2), TOL[dtype])
    out = poisoned(2)
    module.launch_contiguous(grad, 2, out, split=3)
    assert_close(out, ref64_block_norms(grad, 2), TOL[dtype])
    addresses, index, aligned = module.block_table([grad], [2], [0], 9 * 1031)
    assert not aligned  # 9279 elements per block: the second block starts off a 16-byte boundary
    out2 = poisoned(2)
    module.launch_table(grad, addresses, index, 9 * 1031, out2, aligned=aligned, split=3)
    assert torch.equal(out, out2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_block_norms_non_contiguous(gen, backend):
    base = randn(3, 7, 2, 12, gen=gen)  # [L, D, 2, H*d]
    grad = base[:, :, 1].transpose(-1, -2)  # [3, 12, 7], strided in every dim
    assert not grad.is_contiguous()
    assert_close(head_block_norms(grad, 4, backend=backend, out=poisoned(3, 4)), ref64_block_norms(grad, 4), 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_block_norms_nan_and_inf_poison_only_their_head(gen, backend):
    grad = randn(2, 4 * 3, 5, gen=gen)
    grad[0, 3 * 1 + 2, 4] = float("nan")  # layer 0, head 1
    grad[1, 3 * 3, 0] = float("inf")  # layer 1, head 3
    grad[1, 0, 0] = float("-inf")  # layer 1, head 0
    out = head_block_norms(grad, 4, backend=backend)
    expected_nan = torch.zeros(2, 4, dtype=torch.bool)
    expected_nan[0, 1] = expected_nan[1, 3] = expected_nan[1, 0] = True
    assert torch.equal(out.isnan(), expected_nan)
    assert_close(out, ref64_block_norms(grad, 4), 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_block_norms_overflowing_sum_is_nan(backend):
    grad = torch.ones(2 * 2, 3)
    grad[0, 0] = 3e19  # finite, but its square is not a float32
    out = head_block_norms(grad, 2, backend=backend)
    assert out[0].isnan() and out[1] == pytest.approx(6**0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_block_norms_empty_inputs(backend):
    assert head_block_norms(torch.randn(0, 3, 8, 4), 2, backend=backend).shape == (0, 3, 2)
    assert torch.equal(head_block_norms(torch.randn(4, 0), 2, backend=backend), torch.zeros(2))
    assert torch.equal(head_block_norms(torch.randn(0, 5), 3, backend=backend), torch.zeros(3))
    assert head_block_norms(torch.randn(2, 0, 5), 0, backend=backend).shape == (2, 0)


def test_head_block_norms_bad_inputs():
    with pytest.raises(ValueError, match="does not divide"):
        head_block_norms(torch.randn(10, 4), 3)
    with pytest.raises(ValueError, match="0 heads fit only 0 rows"):
        head_block_norms(torch.randn(10, 4), 0)
    with pytest.raises(ValueError, match="at least 2-D"):
        head_block_norms(torch.randn(12), 3)
    with pytest.raises(TypeError, match="dtype float32, float16, bfloat16; got float64"):
        head_block_norms(torch.randn(12, 4, dtype=torch.float64), 3)
    with pytest.raises(TypeError, match="got int64"):
        head_block_norms(torch.ones(12, 4, dtype=torch.int64), 3)
    with pytest.raises(TypeError, match="non-negative int"):
        head_block_norms(torch.randn(12, 4), True)
    with pytest.raises(TypeError, match="non-negative int"):
        head_block_norms(torch.randn(12, 4), 3.0)
    with pytest.raises(ValueError, match="non-negative int, got -3"):
        head_block_norms(torch.randn(12, 4), -3)
    with pytest.raises(TypeError, match="torch.Tensor"):
        head_block_norms([[1.0]], 1)
    with pytest.raises(ValueError, match="backend must be one of"):
        head_block_norms(torch.randn(12, 4), 3, backend="cuda")
    with pytest.raises(ValueError, match=r"out must be a float32 tensor of shape \[3\]"):
        head_block_norms(torch.randn(12, 4), 3, out=torch.empty(4))
    with pytest.raises(ValueError, match="out must be a float32"):
        head_block_norms(torch.randn(12, 4), 3, out=torch.empty(3, dtype=torch.float64))


def test_interpreter_refuses_non_cpu_tensors():
    grad = torch.empty(12, 4, device="meta")
    with pytest.raises(ValueError, match="CPU tensors only"):
        head_block_norms(grad, 3, backend="triton")


def test_auto_backend_runs_the_reference_on_cpu(monkeypatch, gen):
    import gnorm_kernels.kernels as kernels

    def no_triton(name, device):
        raise AssertionError("backend='auto' must not use Triton for CPU tensors")

    monkeypatch.setattr(kernels, "_triton", no_triton)
    grad = randn(6, 5, gen=gen)
    assert_close(kernels.head_block_norms(grad, 2), ref64_block_norms(grad, 2), 1e-5)
    x, g = randn(2, 3, 4, gen=gen), randn(2, 3, 6, gen=gen)
    assert_close(kernels.per_example_head_norms(x, g, 2), ref64_per_example(x, g, 2), 1e-5)


# --------------------------------------------------------------------------------------------
# qkv_head_norms / qkv_head_scores


def ragged_layers(heads, d, cols, dtype, gen):
    return [tuple(randn(h * d, cols, dtype=dtype, gen=gen) for _ in range(3)) for h in heads]


def ref64_qkv(layers, heads):
    h_max = max(heads, default=0)
    ref = torch.full((len(layers), 3, h_max), float("nan"), dtype=torch.float64)
    for l, (layer, h) in enumerate(zip(layers, heads)):
        for p, g in enumerate(layer):
            if h:
                ref[l, p, :h] = ref64_block_norms(g, h)
    return ref


@SETTINGS
@given(
    heads=st.lists(st.integers(0, 4), min_size=1, max_size=5),
    d=st.integers(1, 4),
    cols=st.integers(1, 7),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31),
)
def test_qkv_head_norms_pruned_layers_kernel_fallback_float64_agree(heads, d, cols, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    layers = ragged_layers(heads, d, cols, dtype, gen)
    ref = ref64_qkv(layers, heads)
    results = {}
    for backend in BACKENDS:
        out = poisoned(len(heads), 3, max(heads))
        qkv_head_norms(layers, heads, backend=backend, out=out)
        assert_close(out, ref, TOL[dtype])
        results[backend] = out
    assert_close(results["triton"], results["torch"].double(), TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_qkv_head_norms_many_layers_one_head_and_empty_layers(gen, backend):
    heads = [1] * 24 + [0, 0]
    layers = ragged_layers(heads, 3, 5, torch.float32, gen)
    layers[-1] = (None, None, None)  # a layer with no heads may give no gradients at all
    out = qkv_head_norms(layers, heads, backend=backend, out=poisoned(26, 3, 1))
    assert_close(out, ref64_qkv(layers, heads), 1e-5)
    all_empty = qkv_head_norms([(torch.empty(0, 5),) * 3] * 2, 0, backend=backend)
    assert all_empty.shape == (2, 3, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_qkv_dense_tensor_equals_list_of_layers(gen, backend):
    grads = randn(3, 3, 4 * 2, 6, gen=gen)
    dense = qkv_head_norms(grads, 4, backend=backend, out=poisoned(3, 3, 4))
    listed = qkv_head_norms([tuple(layer) for layer in grads], [4, 4, 4], backend=backend)
    assert_close(dense, ref64_block_norms(grads, 4), 1e-5)
    assert torch.allclose(dense, listed, rtol=1e-6)
    strided = randn(6, 3, 3, 4 * 2, gen=gen).permute(1, 2, 3, 0)  # non-contiguous [3, 3, 8, 6]
    assert_close(qkv_head_norms(strided, 4, backend=backend), ref64_block_norms(strided, 4), 1e-5)
    transposed = [tuple(randn(6, 8, gen=gen).t() for _ in range(3)) for _ in range(2)]  # strided grads
    assert_close(qkv_head_norms(transposed, 4, backend=backend), ref64_qkv(transposed, [4, 4]), 1e-5)


def test_qkv_whole_model_is_one_launch(monkeypatch, gen):
    from gnorm_kernels.kernels._triton import kernel_module

    module = kernel_module("block_norms")
    counter = LaunchCounter(module._block_sumsq_kernel)
    monkeypatch.setattr(module, "_block_sumsq_kernel", counter)
    heads = [4, 3, 0, 4, 1, 2]
    layers = ragged_layers(heads, 2, 6, torch.float32, gen)
    out = qkv_head_norms(layers, heads, backend="triton")
    assert counter.launches == 1
    assert_close(out, ref64_qkv(layers, heads), 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_qkv_nan_stays_in_its_head(gen, backend):
    heads = [2, 3]
    layers = ragged_layers(heads, 2, 4, torch.float32, gen)
    layers[1][2][2 * 2 + 1, 3] = float("nan")  # layer 1, V, head 2
    out = qkv_head_norms(layers, heads, backend=backend)
    assert out.isnan().sum() == 3 + 1  # three padding slots of layer 0, and the poisoned head
    assert out[1, 2, 2].isnan() and not out[1, :2].isnan().any()


@pytest.mark.parametrize("combine", ["product", "sum", "max"])
def test_qkv_head_scores_combines_the_three_norms(gen, combine):
    heads = [3, 1]
    layers = ragged_layers(heads, 2, 5, torch.float32, gen)
    norms = qkv_head_norms(layers, heads, backend="torch")
    scores = qkv_head_scores(layers, heads, combine=combine, backend="triton")
    manual = {"product": norms.prod(1), "sum": norms.sum(1), "max": norms.amax(1)}[combine]
    assert torch.allclose(scores, manual, rtol=1e-5, equal_nan=True)
    assert scores[1, 1:].isnan().all() and not scores[:, :1].isnan().any()
    assert torch.allclose(combine_qkv_norms(norms, combine), manual, equal_nan=True)


def test_qkv_bad_inputs():
    q = torch.randn(6, 4)
    with pytest.raises(ValueError, match="combine must be one of"):
        qkv_head_scores([(q, q, q)], 2, combine="mean")
    with pytest.raises(ValueError, match=r"expected a \(Q, K, V\) triple"):
        qkv_head_norms([(q, q)], 2)
    with pytest.raises(ValueError, match="3 entries but there are 2 layers"):
        qkv_head_norms([(q, q, q)] * 2, [2, 2, 2])
    with pytest.raises(ValueError, match="does not divide"):
        qkv_head_norms([(q, q, q)], 4)
    with pytest.raises(ValueError, match="5 columns, expected 4"):
        qkv_head_norms([(q, q, torch.randn(6, 5))], 2)
    with pytest.raises(ValueError, match="head size 2, expected 3"):
        qkv_head_norms([(q, q, q), (torch.randn(4, 4),) * 3], [2, 2])
    with pytest.raises(ValueError, match="is None"):
        qkv_head_norms([(q, None, q)], 2)
    with pytest.raises(ValueError, match="one device"):
        qkv_head_norms([(q, q, torch.empty(6, 4, device="meta"))], 2)
    with pytest.raises(TypeError, match="one dtype"):
        qkv_head_norms([(q, q, q.bfloat16())], 2)
    with pytest.raises(ValueError, match="2-D"):
        qkv_head_norms([(q, q, q[None])], 2)
    with pytest.raises(ValueError, match=r"\[L, 3, H\*d, D\]"):
        qkv_head_norms(torch.randn(2, 4, 6, 4), 2)
    with pytest.raises(ValueError, match="one head count for every layer"):
        qkv_head_norms(torch.randn(2, 3, 6, 4), [2, 3])
    with pytest.raises(TypeError, match="dtype"):
        qkv_head_norms(torch.randn(2, 3, 6, 4, dtype=torch.float64), 2)


# --------------------------------------------------------------------------------------------
# QKVGradientBuffer


def qkv_model(heads, d, width, dtype=torch.float32):
    """Per layer three Linears (Q, K, V) with heads[l] heads each."""
    with warnings.catch_warnings():  # a layer with 0 heads has empty weights, which init warns about
        warnings.simplefilter("ignore", UserWarning)
        return [tuple(torch.nn.Linear(width, h * d, dtype=dtype) for _ in range(3)) for h in heads]


def run_model(model, x):
    """A scalar that reaches every Q/K/V weight, layers with 0 heads included."""
    total = 0.0
    for q, k, v in model:
        total = total + (q(x).tanh() * 0.5).sum() + k(x).pow(2).sum() + v(x).sin().sum()
        x = x + 0.1 * x.tanh()
    return total


def weights(model):
    return [(q.weight, k.weight, v.weight) for q, k, v in model]


@pytest.mark.parametrize("backend", BACKENDS)
def test_buffer_accumulates_in_place_and_restores(gen, backend):
    heads, d, width = [3, 0, 2, 3], 2, 5
    model = qkv_model(heads, d, width)
    x = randn(4, width, gen=gen)
    expected = torch.autograd.grad(run_model(model, x), [p for layer in weights(model) for p in layer])
    previous = torch.ones_like(model[0][0].weight)
    model[0][0].weight.grad = previous

    with QKVGradientBuffer(weights(model), d, backend=backend) as buf:
        start = buf.buffer.data_ptr()
        end = start + buf.buffer.numel() * buf.buffer.element_size()
        run_model(model, x).backward()
        flat = [p for layer in weights(model) for p in layer]
        for p, e in zip(flat, expected):
            assert p.grad is not None and start <= p.grad.data_ptr() < end or p.numel() == 0
            assert torch.allclose(p.grad, e, rtol=1e-6, atol=1e-7)
        out = buf.norms(out=poisoned(4, 3, 3))
        assert_close(out, ref64_qkv([tuple(expected[3 * l : 3 * l + 3]) for l in range(4)], heads), 1e-5)

        run_model(model, x).backward()  # a second backward adds in place
        assert_close(buf.norms(), 2 * ref64_qkv([tuple(expected[3 * l : 3 * l + 3]) for l in range(4)], heads), 1e-5)
        buf.zero_()
        assert not buf.buffer.any()
        run_model(model, x).backward()
        assert torch.allclose(buf.scores("sum"), out.sum(1), rtol=1e-5, equal_nan=True)

    assert model[0][0].weight.grad is previous
    assert all(p.grad is None for layer in weights(model)[1:] for p in layer)
    assert torch.allclose(buf.norms(), out, rtol=1e-6, equal_nan=True)  # the buffer keeps its values


def test_buffer_norms_are_one_launch(monkeypatch, gen):
    from gnorm_kernels.kernels._triton import kernel_module

    module = kernel_module("block_norms")
    counter = LaunchCounter(module._block_sumsq_kernel)
    monkeypatch.setattr(module, "_block_sumsq_kernel", counter)
    model = qkv_model([2, 1, 2], 3, 4)
    with QKVGradientBuffer(weights(model), 3, backend="triton") as buf:
        run_model(model, randn(2, 4, gen=gen)).backward()
        buf.norms()
    assert counter.launches == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_buffer_half_parameters(gen, dtype):
    model = qkv_model([2, 2], 2, 8, dtype=dtype)
    with QKVGradientBuffer(weights(model), 2, backend="triton") as buf:
        assert buf.buffer.dtype == dtype
        run_model(model, randn(3, 8, dtype=dtype, gen=gen)).backward()
        grads = [tuple(p.grad.clone() for p in layer) for layer in weights(model)]
        assert_close(buf.norms(), ref64_qkv(grads, [2, 2]), TOL[dtype])


def test_buffer_refusals(gen):
    model = qkv_model([2, 2], 2, 4)
    w = weights(model)
    with pytest.raises(TypeError, match="one dtype"):
        QKVGradientBuffer([w[0], tuple(p.detach().bfloat16().requires_grad_() for p in w[1])], 2)
    with pytest.raises(ValueError, match="one device"):
        QKVGradientBuffer([w[0], tuple(torch.empty(4, 4, device="meta", requires_grad=True) for _ in range(3))], 2)
    with pytest.raises(ValueError, match="appears twice"):
        QKVGradientBuffer([w[0], w[0]], 2)
    with pytest.raises(ValueError, match="must be a leaf tensor"):
        QKVGradientBuffer([tuple(p * 1 for p in w[0])], 2)
    with pytest.raises(ValueError, match="does not divide"):
        QKVGradientBuffer(w, 3)
    with pytest.raises(ValueError, match="one shape"):
        QKVGradientBuffer([(w[0][0], w[0][1], torch.nn.Parameter(torch.randn(2, 4)))], 2)
    with pytest.raises(TypeError, match="dtype"):
        QKVGradientBuffer([tuple(torch.nn.Parameter(torch.randn(4, 4, dtype=torch.float64)) for _ in range(3))], 2)
    buf = QKVGradientBuffer(w, 2)
    with pytest.raises(RuntimeError, match="context manager"):
        buf.norms()
    with buf:
        with pytest.raises(RuntimeError, match="entered twice"):
            buf.__enter__()
        run_model(model, randn(2, 4, gen=gen)).backward()
        model[1][2].zero_grad()  # set_to_none: the view is gone
        with pytest.raises(RuntimeError, match="layer 1 W_V.grad no longer points into the buffer"):
            buf.norms()


# --------------------------------------------------------------------------------------------
# per_example_head_norms


@SETTINGS
@given(
    batch=st.integers(1, 3),
    seq=st.integers(1, 20),
    width=st.integers(1, 24),
    heads=st.integers(1, 4),
    d=st.integers(1, 6),
    dtype=st.sampled_from(DTYPES),
    form=st.sampled_from(["gram", "direct"]),
    seed=st.integers(0, 2**31),
)
def test_per_example_kernel_fallback_float64_agree(batch, seq, width, heads, d, dtype, form, seed):
    gen = torch.Generator().manual_seed(seed)
    x = randn(batch, seq, width, dtype=dtype, gen=gen)
    g = randn(batch, seq, heads * d, dtype=dtype, gen=gen)
    # The Gram form sums signed terms; 4x the float32 tolerance covers its cancellation on random data.
    tol = TOL[dtype] * (4 if form == "gram" else 1)
    ref = ref64_per_example(x, g, heads)
    results = {}
    for backend in BACKENDS:
        out = poisoned(batch, heads)
        per_example_head_norms(x, g, heads, form=form, backend=backend, out=out)
        assert_close(out, ref, tol)
        results[backend] = out
    assert_close(results["triton"], results["torch"].double(), tol)


@pytest.mark.parametrize("form", ["gram", "direct"])
def test_per_example_kernel_loops_over_every_tile(gen, form):
    """Sizes past one tile in every loop: T = 150 (three 64-row Gram tiles, five 32-row steps),
    D = 70, d = 80 (two 64-wide column chunks), so a tile or step the kernel skipped would show."""
    B, T, D, H, d = 2, 150, 70, 2, 80
    x, g = randn(B, T, D, gen=gen), randn(B, T, H * d, gen=gen)
    out = per_example_head_norms(x, g, H, form=form, backend="triton", out=poisoned(B, H))
    assert_close(out, ref64_per_example(x, g, H), 4e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["gram", "direct"])
def test_per_example_padding_rows_do_not_count(gen, backend, form):
    B, T, D, H, d = 3, 11, 9, 2, 3
    x, g = randn(B, T, D, gen=gen), randn(B, T, H * d, gen=gen)
    pad = torch.tensor([1, 4, 5, 10])  # padded positions, x there is whatever the embedding gives
    g[:, pad] = 0.0
    keep = torch.tensor([t for t in range(T) if t not in pad.tolist()])
    padded = per_example_head_norms(x, g, H, form=form, backend=backend, out=poisoned(B, H))
    unpadded = per_example_head_norms(x[:, keep], g[:, keep], H, form=form, backend=backend)
    assert torch.allclose(padded, unpadded, rtol=1e-5)
    assert_close(padded, ref64_per_example(x[:, keep], g[:, keep], H), 4e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["gram", "direct"])
def test_per_example_non_contiguous_inputs(gen, backend, form):
    x = randn(7, 5, 3, gen=gen).permute(2, 1, 0)  # [3, 5, 7]
    g = randn(3, 2, 8, 5, gen=gen)[:, 1].transpose(1, 2)  # [3, 5, 8]
    assert not x.is_contiguous() and not g.is_contiguous()
    out = per_example_head_norms(x, g, 4, form=form, backend=backend, out=poisoned(3, 4))
    assert_close(out, ref64_per_example(x, g, 4), 4e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["gram", "direct"])
def test_per_example_fused_qkv_equals_separate_calls(gen, backend, form):
    x = randn(2, 6, 10, gen=gen)
    gs = [randn(2, 6, 3 * 4, gen=gen) for _ in range(3)]
    fused = per_example_qkv_head_norms(x, gs, 3, form=form, backend=backend, out=poisoned(3, 2, 3))
    for p, g in enumerate(gs):
        assert_close(fused[p], ref64_per_example(x, g, 3), 4e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["gram", "direct"])
def test_per_example_nan_and_inf(gen, backend, form):
    B, T, D, H, d = 3, 4, 5, 3, 2
    x, g = randn(B, T, D, gen=gen), randn(B, T, H * d, gen=gen)
    g[0, 2, 1 * d + 1] = float("nan")  # example 0, head 1
    x[2, 3, 0] = float("inf")  # example 2: every head's block has inf or NaN
    out = per_example_head_norms(x, g, H, form=form, backend=backend)
    expected = torch.zeros(B, H, dtype=torch.bool)
    expected[0, 1] = True
    expected[2] = True
    assert torch.equal(out.isnan(), expected)
    assert_close(out, ref64_per_example(x, g, H), 4e-5)


def test_per_example_equals_torch_func_per_sample_gradients(gen):
    B, T, D, H, d = 3, 5, 6, 2, 4
    layer = torch.nn.Linear(D, H * d)
    x = randn(B, T, D, gen=gen)
    target = randn(B, T, H * d, gen=gen)

    def loss(params, xb, tb):
        y = torch.func.functional_call(layer, params, (xb,))
        return ((y - tb) ** 2).sum()

    params = {k: v.detach() for k, v in layer.named_parameters()}
    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, target)["weight"]
    expected = per_sample.reshape(B, H, d * D).norm(dim=-1)
    grad_out = 2 * (layer(x) - target).detach()  # d loss / d y
    for backend in BACKENDS:
        assert torch.allclose(per_example_head_norms(x, grad_out, H, backend=backend), expected, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_example_empty_inputs(backend):
    assert per_example_head_norms(torch.randn(0, 3, 4), torch.randn(0, 3, 6), 2, backend=backend).shape == (0, 2)
    no_positions = per_example_head_norms(torch.randn(2, 0, 4), torch.randn(2, 0, 6), 2, backend=backend)
    assert torch.equal(no_positions, torch.zeros(2, 2))
    no_width = per_example_head_norms(torch.randn(2, 3, 0), torch.randn(2, 3, 6), 2, backend=backend)
    assert torch.equal(no_width, torch.zeros(2, 2))
    assert per_example_head_norms(torch.randn(2, 3, 4), torch.randn(2, 3, 0), 0, backend=backend).shape == (2, 0)


def test_per_example_bad_inputs():
    x, g = torch.randn(2, 3, 4), torch.randn(2, 3, 6)
    with pytest.raises(ValueError, match=r"x must be \[B, T, D\]"):
        per_example_head_norms(x[0], g, 2)
    with pytest.raises(ValueError, match="B, T of x"):
        per_example_head_norms(x, g[:, :2], 2)
    with pytest.raises(ValueError, match="does not divide"):
        per_example_head_norms(x, g, 4)
    with pytest.raises(TypeError, match="one dtype"):
        per_example_head_norms(x, g.half(), 2)
    with pytest.raises(TypeError, match="dtype"):
        per_example_head_norms(x.double(), g.double(), 2)
    with pytest.raises(ValueError, match="one device"):
        per_example_head_norms(x, torch.empty(2, 3, 6, device="meta"), 2)
    with pytest.raises(ValueError, match="form must be"):
        per_example_head_norms(x, g, 2, form="fast")
    with pytest.raises(ValueError, match="one shape"):
        per_example_qkv_head_norms(x, [g, torch.randn(2, 3, 4)], 2)
    with pytest.raises(TypeError, match="non-empty sequence"):
        per_example_qkv_head_norms(x, [], 2)


def test_form_choice_follows_the_multiply_add_count():
    from gnorm_kernels.kernels import _choose_form

    assert _choose_form(T=128, D=768, P=1, H=12, d=64) == "gram"  # BERT-base, short sentences
    assert _choose_form(T=2048, D=768, P=1, H=12, d=64) == "direct"  # long documents
    # The kernel computes half of the symmetric Gram tiles, the reference all of them.
    assert _choose_form(T=512, D=768, P=1, H=12, d=64, symmetric=True) == "gram"
    assert _choose_form(T=512, D=768, P=1, H=12, d=64, symmetric=False) == "direct"
    assert _choose_form(T=512, D=768, P=3, H=12, d=64, symmetric=False) == "gram"  # x's Gram shared by Q, K, V


# --------------------------------------------------------------------------------------------
# Triton's two modes, each in a fresh process (the mode is fixed when a kernel file is imported)


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )


def test_triton_backend_turns_on_the_interpreter_without_a_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = run_python(
        """
        import os, torch
        from gnorm_kernels.kernels import head_block_norms
        assert "TRITON_INTERPRET" not in os.environ
        g = torch.randn(6, 4)
        out = head_block_norms(g, 3, backend="triton")
        assert os.environ["TRITON_INTERPRET"] == "1"
        assert torch.allclose(out, g.reshape(3, 8).norm(dim=1))
        """,
        env,
    )
    assert done.returncode == 0, done.stderr


def test_interpreter_works_after_transformers_imported_triton():
    """torch/transformers import triton before the interpreter can be switched on; the kernels
    must still run (triton.language's own jit helpers such as tl.zeros are re-wrapped)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = run_python(
        """
        import sys, torch
        from transformers import BertModel
        assert "triton.language" in sys.modules
        from gnorm_kernels.kernels import head_block_norms, per_example_head_norms
        from gnorm_kernels.kernels.reference import per_example_head_norms as ref
        g = torch.randn(2, 3, 16, 8)
        out = head_block_norms(g, 4, backend="triton")
        assert torch.allclose(out, g.reshape(2, 3, 4, 32).norm(dim=-1), rtol=1e-5)
        x, d = torch.randn(2, 5, 8), torch.randn(2, 5, 12)
        for form in ("gram", "direct"):
            got = per_example_head_norms(x, d, 3, backend="triton", form=form)
            assert torch.allclose(got, ref(x, [d], 3, "direct")[0], rtol=1e-4), form
        """,
        env,
    )
    assert done.returncode == 0, done.stderr


def test_kernels_compile_for_the_gpu():
    """Without a GPU, compile every kernel to PTX for sm_90 (Triton's own compiler and ptxas).

    Catches what the interpreter lets through (tl.dot shape and dtype rules, constexpr misuse), and
    checks that the block-norm loads are vectorised (ld.global.v4) for aligned inputs."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = run_python(
        """
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from gnorm_kernels.kernels import block_norms as bn, per_example_direct as pd, per_example_gram as pg
        assert not bn.INTERPRETED

        def ptx(fn, sig, consts):
            aligned = {(i,): [["tt.divisibility", 16]] for i in range(len(sig))}
            signature = {**sig, **{k: "constexpr" for k in consts}}
            src = ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=aligned)
            return triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]

        ints = lambda names: {n: "i32" for n in names.split()}
        for dt, upcast in [("fp32", True), ("bf16", False), ("fp16", False)]:
            for table in (False, True):
                code = ptx(bn._block_sumsq_kernel,
                           {"src_ptr": "*" + dt, "table_ptr": "*i64", "out_index_ptr": "*i64", "out_ptr": "*fp32",
                            **ints("K chunk n_chunks")},
                           {"USE_TABLE": table, "ALIGNED": True, "FINAL": True, "BLOCK": bn.BLOCK})
                assert "ld.global.v4.b32" in code, (dt, table)
            ptx(bn._block_sumsq_kernel,
                {"src_ptr": "*" + dt, "table_ptr": "*i64", "out_index_ptr": "*i64", "out_ptr": "*fp32",
                 **ints("K chunk n_chunks")},
                {"USE_TABLE": False, "ALIGNED": False, "FINAL": False, "BLOCK": bn.BLOCK})
            common = {"UPCAST": upcast, "PRECISION": "ieee"}
            ptx(pd._direct_kernel,
                {"x_ptr": "*" + dt, "g_ptr": "*" + dt, "out_ptr": "*fp32",
                 **ints("T D H d stride_xb stride_xt stride_xd stride_gb stride_gt stride_gc")},
                {"BLOCK_T": pd.BLOCK_T, "BLOCK_C": 64, "BLOCK_D": pd.BLOCK_D, **common})
            ptx(pg._x_gram_kernel,
                {"x_ptr": "*" + dt, "pairs_ptr": "*i32", "kx_ptr": "*fp32",
                 **ints("T D stride_xb stride_xt stride_xd n_pairs")},
                {"BLOCK_T": 64, "BLOCK_C": 32, **common})
            code = ptx(pg._head_gram_kernel,
                       {"g_ptr": "*" + dt, "pairs_ptr": "*i32", "kx_ptr": "*fp32", "part_ptr": "*fp32",
                        **ints("T H d stride_gb stride_gt stride_gc n_pairs")},
                       {"BLOCK_T": 64, "BLOCK_C": 16, **common})
            assert ("mma" in code) == (not upcast), dt  # half inputs use tensor cores
        print("ok")
        """,
        env,
    )
    if done.returncode != 0 and ("ptxas" in done.stderr and "not found" in done.stderr.lower()):
        pytest.skip("Triton's CUDA toolchain (ptxas) is not installed here")
    assert done.returncode == 0, done.stderr[-3000:]
