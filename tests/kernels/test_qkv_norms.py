"""qkv_head_norms / qkv_head_scores: whole models in one pass, pruned layers and grouped-query attention."""
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
    LaunchCounter,
    assert_close,
    poisoned,
    ragged_layers,
    randn,
    ref64_block_norms,
    ref64_qkv,
)

from gnorm_kernels.kernels import combine_qkv_norms, qkv_head_norms, qkv_head_scores

pytestmark = FILTER_NUMPY_WARNINGS


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
# grouped-query attention: K and V with H_kv heads, query head h reads KV head h // (H / H_kv)


@SETTINGS
@given(
    layers=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 3)), min_size=1, max_size=4),
    d=st.integers(1, 4),
    cols=st.integers(1, 7),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31),
)
def test_grouped_query_norms_kernel_fallback_float64_agree(layers, d, cols, dtype, seed):
    """layers: (KV heads, group size) per layer; 0 KV heads is a fully pruned layer."""
    gen = torch.Generator().manual_seed(seed)
    kv_heads = [kv for kv, _ in layers]
    heads = [kv * group for kv, group in layers]
    grads = ragged_layers(heads, d, cols, dtype, gen, kv_heads=kv_heads)
    ref = ref64_qkv(grads, heads, kv_heads)
    results = {}
    for backend in BACKENDS:
        out = poisoned(len(heads), 3, max(heads))
        assert qkv_head_norms(grads, heads, num_kv_heads=kv_heads, backend=backend, out=out) is out
        assert_close(out, ref, TOL[dtype])
        results[backend] = out
    assert_close(results["triton"], results["torch"].double(), TOL[dtype])


@pytest.mark.parametrize("combine", ["product", "sum", "max"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_query_scores_read_each_heads_kv_group(gen, backend, combine):
    heads, kv_heads, d, cols = [8, 4, 0, 6], [2, 4, 0, 1], 3, 5
    grads = ragged_layers(heads, d, cols, torch.float32, gen, kv_heads=kv_heads)
    ref = ref64_qkv(grads, heads, kv_heads)
    expected = torch.full((4, 8), float("nan"), dtype=torch.float64)
    for l, (h, kv) in enumerate(zip(heads, kv_heads)):
        for q in range(h):
            g = q // (h // kv)
            parts = torch.stack([ref[l, 0, q], ref[l, 1, g], ref[l, 2, g]])
            expected[l, q] = {"product": parts.prod(), "sum": parts.sum(), "max": parts.max()}[combine]
    scores = qkv_head_scores(grads, heads, num_kv_heads=kv_heads, combine=combine, backend=backend)
    assert_close(scores, expected, 1e-5)
    norms = qkv_head_norms(grads, heads, num_kv_heads=kv_heads, backend=backend)
    assert_close(combine_qkv_norms(norms, combine, num_heads=heads, num_kv_heads=kv_heads), expected, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_num_kv_heads_equal_to_num_heads_changes_nothing(gen, backend):
    heads = [3, 0, 2]
    grads = ragged_layers(heads, 2, 4, torch.float32, gen)
    plain = qkv_head_norms(grads, heads, backend=backend)
    same = qkv_head_norms(grads, heads, num_kv_heads=heads, backend=backend, out=poisoned(3, 3, 3))
    assert torch.equal(plain.isnan(), same.isnan()) and torch.equal(plain.nan_to_num(), same.nan_to_num())
    assert torch.allclose(qkv_head_scores(grads, heads, backend=backend),
                          qkv_head_scores(grads, heads, num_kv_heads=heads, backend=backend), equal_nan=True)
    dense = randn(2, 3, 4 * 2, 5, gen=gen)
    assert torch.equal(qkv_head_norms(dense, 4, num_kv_heads=4, backend=backend), qkv_head_norms(dense, 4, backend=backend))


def test_grouped_query_whole_model_is_one_launch(monkeypatch, gen):
    from gnorm_kernels.kernels._triton import kernel_module

    module = kernel_module("block_norms")
    counter = LaunchCounter(module._block_sumsq_kernel)
    monkeypatch.setattr(module, "_block_sumsq_kernel", counter)
    heads, kv_heads = [4, 2, 4], [2, 1, 1]
    grads = ragged_layers(heads, 2, 6, torch.float32, gen, kv_heads=kv_heads)
    out = qkv_head_norms(grads, heads, num_kv_heads=kv_heads, backend="triton", out=poisoned(3, 3, 4))
    assert counter.launches == 1
    assert_close(out, ref64_qkv(grads, heads, kv_heads), 1e-5)


def test_grouped_query_bad_inputs():
    q, kv = torch.randn(4 * 2, 5), torch.randn(2 * 2, 5)
    with pytest.raises(ValueError, match="num_heads=4 is not a multiple of num_kv_heads=3"):
        qkv_head_norms([(q, kv, kv)], 4, num_kv_heads=3)
    with pytest.raises(ValueError, match="num_heads=4 is not a multiple of num_kv_heads=0"):
        qkv_head_norms([(q, kv, kv)], 4, num_kv_heads=0)
    with pytest.raises(ValueError, match="layer 0 K gradient: 4 rows for 1 heads gives head size 4, expected 2"):
        qkv_head_norms([(q, kv, kv)], 4, num_kv_heads=1)
    with pytest.raises(ValueError, match="layer 0 V gradient has 5 rows, which num_kv_heads=2 does not divide"):
        qkv_head_norms([(q, kv, torch.randn(5, 5))], 4, num_kv_heads=2)
    with pytest.raises(ValueError, match="num_kv_heads has 1 entries but there are 2 layers"):
        qkv_head_norms([(q, kv, kv)] * 2, 4, num_kv_heads=[2])
    with pytest.raises(ValueError, match="as many K/V heads as Q heads"):
        qkv_head_norms(torch.randn(2, 3, 8, 5), 4, num_kv_heads=2)
    with pytest.raises(ValueError, match="num_kv_heads needs num_heads"):
        combine_qkv_norms(torch.rand(2, 3, 4), num_kv_heads=2)
    with pytest.raises(ValueError, match="only 4 head slots"):
        combine_qkv_norms(torch.rand(2, 3, 4), num_heads=8, num_kv_heads=2)
