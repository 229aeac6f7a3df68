"""QKVGradientBuffer: one flat buffer for a model's Q/K/V gradients, its norms in one launch."""
from __future__ import annotations

import pytest
import torch
from kernel_checks import (
    BACKENDS,
    FILTER_NUMPY_WARNINGS,
    TOL,
    LaunchCounter,
    assert_close,
    poisoned,
    qkv_model,
    randn,
    ref64_qkv,
    run_model,
    weights,
)

from gnorm_kernels.kernels import QKVGradientBuffer, combine_qkv_norms

pytestmark = FILTER_NUMPY_WARNINGS


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
# grouped-query attention: K and V weights with fewer heads than Q


@pytest.mark.parametrize("backend", BACKENDS)
def test_buffer_grouped_query_layers(gen, backend):
    heads, kv_heads, d, width = [4, 0, 6, 2], [2, 0, 1, 2], 2, 5
    model = qkv_model(heads, d, width, kv_heads=kv_heads)
    x = randn(3, width, gen=gen)
    flat = [p for layer in weights(model) for p in layer]
    expected = torch.autograd.grad(run_model(model, x), flat)
    grads = [tuple(expected[3 * l : 3 * l + 3]) for l in range(len(heads))]
    ref = ref64_qkv(grads, heads, kv_heads)
    with QKVGradientBuffer(weights(model), d, num_kv_heads=kv_heads, backend=backend) as buf:
        assert buf.num_heads == heads and buf.num_kv_heads == kv_heads
        buf.zero_()
        run_model(model, x).backward()
        out = buf.norms(out=poisoned(4, 3, 6))
        assert_close(out, ref, 1e-5)
        scores = buf.scores("product")
    expected_scores = combine_qkv_norms(ref.float(), "product", num_heads=heads, num_kv_heads=kv_heads)
    assert_close(scores, expected_scores.double(), 1e-5)
    assert scores[2, :6].isfinite().all() and scores[0, 4:].isnan().all()
    # query head h of layer 2 (6 heads, 1 KV head) reads KV head 0
    assert torch.allclose(scores[2], out[2, 0] * out[2, 1, 0] * out[2, 2, 0])


def test_buffer_grouped_query_one_launch(monkeypatch, gen):
    from gnorm_kernels.kernels._triton import kernel_module

    module = kernel_module("block_norms")
    counter = LaunchCounter(module._block_sumsq_kernel)
    monkeypatch.setattr(module, "_block_sumsq_kernel", counter)
    model = qkv_model([4, 4], 3, 4, kv_heads=[2, 1])
    with QKVGradientBuffer(weights(model), 3, num_kv_heads=[2, 1], backend="triton") as buf:
        run_model(model, randn(2, 4, gen=gen)).backward()
        buf.norms()
        buf.norms()
    assert counter.launches == 2  # one per call, the table built once


def test_buffer_grouped_query_refusals():
    model = qkv_model([4, 4], 2, 4, kv_heads=[2, 2])
    with pytest.raises(ValueError, match="must have one shape.*pass num_kv_heads"):
        QKVGradientBuffer(weights(model), 2)
    with pytest.raises(ValueError, match=r"layer 1: W_K has 4 rows, expected num_kv_heads \* head_size = 1 \* 2 = 2"):
        QKVGradientBuffer(weights(model), 2, num_kv_heads=[2, 1])
    with pytest.raises(ValueError, match="num_heads=4 is not a multiple of num_kv_heads=3"):
        QKVGradientBuffer(weights(model), 2, num_kv_heads=3)
    w = weights(model)
    with pytest.raises(ValueError, match="W_K and W_V must have one shape"):
        QKVGradientBuffer([(w[0][0], w[0][1], torch.nn.Parameter(torch.randn(6, 4)))], 2, num_kv_heads=2)
