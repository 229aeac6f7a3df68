"""per_example_head_norms / per_example_qkv_head_norms: both forms, both backends, against float64."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from kernel_checks import (
    BACKENDS,
    DTYPES,
    FILTER_NUMPY_WARNINGS,
    SETTINGS,
    TOL,
    assert_close,
    poisoned,
    randn,
    ref64_per_example,
)

from gnorm_kernels.kernels import per_example_head_norms, per_example_qkv_head_norms

pytestmark = FILTER_NUMPY_WARNINGS


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

