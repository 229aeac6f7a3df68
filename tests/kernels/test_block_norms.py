"""head_block_norms: both backends against float64 on random inputs, in every layout and mode.

Row blocks of nn.Linear gradients, column blocks of GPT-2 Conv1D gradients (input-major) and their
strided views, sums of squares, and FSDP2-style row shards whose partial sums add up to the norm.
"""
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
    randn,
    ref64_block_norms,
    ref64_column_norms,
    ref64_per_example,
)

from gnorm_kernels.kernels import head_block_norms

pytestmark = FILTER_NUMPY_WARNINGS


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
# layout="columns": GPT-2's Conv1D weights [D, H*d], a head's block is a column block


@SETTINGS
@given(
    lead=st.lists(st.integers(1, 3), max_size=2),
    heads=st.integers(1, 5),
    d=st.integers(1, 6),
    rows=st.integers(1, 9),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31),
)
def test_column_blocks_kernel_fallback_float64_agree(lead, heads, d, rows, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    grad = randn(*lead, rows, heads * d, dtype=dtype, gen=gen)
    ref = ref64_column_norms(grad, heads)
    results = {}
    for backend in BACKENDS:
        out = poisoned(*lead, heads)
        assert head_block_norms(grad, heads, layout="columns", backend=backend, out=out) is out
        assert_close(out, ref, TOL[dtype])
        results[backend] = out
    assert_close(results["triton"], results["torch"].double(), TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_c_attn_gradient_split_into_three_strided_views(gen, backend, dtype):
    """GPT-2's c_attn: one Conv1D gradient [D, 3*H*d]; its Q, K, V column slices are strided views."""
    L, D, H, d = 2, 7, 3, 4
    fused = randn(L, D, 3 * H * d, dtype=dtype, gen=gen)
    for p in range(3):
        view = fused[..., p * H * d : (p + 1) * H * d]  # [L, D, H*d], row stride 3*H*d
        assert not view.is_contiguous()
        out = head_block_norms(view, H, layout="columns", backend=backend, out=poisoned(L, H))
        assert_close(out, ref64_column_norms(view, H), TOL[dtype])
    # the same numbers as the rows of the transposed (nn.Linear-shaped) gradient
    q = fused[0, :, : H * d]
    as_linear = head_block_norms(q.t().contiguous(), H, backend=backend)
    assert torch.allclose(head_block_norms(q, H, layout="columns", backend=backend), as_linear, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_column_and_row_blocks_of_transposed_views(gen, backend):
    """A transposed view in either layout: the strides, not the memory order, define rows and columns."""
    w = randn(4 * 3, 10, gen=gen)  # [H*d, D]
    assert_close(head_block_norms(w.t(), 4, layout="columns", backend=backend, out=poisoned(4)),
                 ref64_block_norms(w, 4), 1e-5)
    conv = randn(10, 4 * 3, gen=gen)  # [D, H*d]
    assert_close(head_block_norms(conv.t(), 4, backend=backend, out=poisoned(4)),
                 ref64_column_norms(conv, 4), 1e-5)


@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_strided_kernel_loops_over_every_tile(gen, layout):
    """Blocks larger than one tile in both directions (rows: 1100 columns > 256-wide tiles and
    40 rows > 16-row tiles; columns: 80 columns > 64 and 70 rows > 32-row tiles), strided."""
    if layout == "rows":
        grad = randn(1100, 2 * 2 * 40, gen=gen).t()[: 2 * 40]  # [80, 1100], column stride 160
        ref = ref64_block_norms(grad, 2)
    else:
        grad = randn(70, 3, 2 * 80, gen=gen)[:, 1]  # [70, 160], row stride 480
        ref = ref64_column_norms(grad, 2)
    assert not grad.is_contiguous()
    out = head_block_norms(grad, 2, layout=layout, backend="triton", out=poisoned(2))
    assert_close(out, ref, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_column_blocks_nan_inf_and_overflow(gen, backend):
    grad = randn(2, 5, 4 * 3, gen=gen)
    grad[0, 4, 3 * 1 + 2] = float("nan")  # layer 0, head 1
    grad[1, 0, 3 * 3] = float("-inf")  # layer 1, head 3
    grad[1, 2, 0] = 3e19  # layer 1, head 0: finite, but its square is not a float32
    out = head_block_norms(grad, 4, layout="columns", backend=backend)
    expected_nan = torch.zeros(2, 4, dtype=torch.bool)
    expected_nan[0, 1] = expected_nan[1, 3] = expected_nan[1, 0] = True
    assert torch.equal(out.isnan(), expected_nan)
    assert_close(out[~expected_nan], ref64_column_norms(grad, 4)[~expected_nan], 1e-5)


def test_column_layout_bad_inputs():
    with pytest.raises(ValueError, match=r"layout='columns'.*does not divide"):
        head_block_norms(torch.randn(4, 10), 3, layout="columns")
    with pytest.raises(ValueError, match="layout must be one of"):
        head_block_norms(torch.randn(4, 12), 3, layout="cols")
    with pytest.raises(ValueError, match=r"\[\.\.\., D, H\*d\] \(at least 2-D\)"):
        head_block_norms(torch.randn(12), 3, layout="columns")


# --------------------------------------------------------------------------------------------
# squared=True, and row shards (FSDP2 splits a gradient's rows across ranks)


@pytest.mark.parametrize("layout", ["rows", "columns"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_squared_is_the_sum_of_squares(gen, backend, dtype, layout):
    grad = randn(2, 4 * 3, 4 * 3, dtype=dtype, gen=gen)
    ref = (ref64_block_norms if layout == "rows" else ref64_column_norms)(grad, 4).square()
    out = head_block_norms(grad, 4, layout=layout, squared=True, backend=backend, out=poisoned(2, 4))
    assert_close(out, ref, TOL[dtype])
    strided = grad.transpose(-1, -2)  # the same through the strided kernel
    ref_t = (ref64_column_norms if layout == "rows" else ref64_block_norms)(grad, 4).square()
    assert_close(head_block_norms(strided, 4, layout=layout, squared=True, backend=backend, out=poisoned(2, 4)),
                 ref_t, TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_squared_non_finite_is_nan(gen, backend):
    grad = randn(3 * 2, 5, gen=gen)
    grad[0, 0] = float("inf")
    grad[5, 1] = 3e19  # overflows float32 once squared
    out = head_block_norms(grad, 3, squared=True, backend=backend)
    assert out[0].isnan() and out[2].isnan() and not out[1].isnan()


def split_rows(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    edges = [0, *sorted(set(cuts)), n]
    return [(a, b) for a, b in zip(edges, edges[1:])]


@SETTINGS
@given(
    heads=st.integers(1, 5),
    d=st.integers(1, 7),
    cols=st.integers(1, 9),
    cut_fractions=st.lists(st.floats(0, 1), max_size=4),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31),
)
def test_row_shards_partial_sums_add_up_to_the_norm(heads, d, cols, cut_fractions, dtype, seed):
    """Cut a [H*d, D] gradient's rows anywhere (inside head blocks, unevenly, empty shards too):
    the shards' partial sums of squares add up, after a square root, to the unsharded norms."""
    gen = torch.Generator().manual_seed(seed)
    n = heads * d
    grad = randn(n, cols, dtype=dtype, gen=gen)
    ref = ref64_block_norms(grad, heads)
    shards = split_rows(n, [round(f * n) for f in cut_fractions])
    for backend in BACKENDS:
        total = torch.zeros(heads, dtype=torch.float64)
        for a, b in shards:
            part = head_block_norms(grad[a:b], heads, squared=True, row_offset=a, total_rows=n,
                                    backend=backend, out=poisoned(heads))
            assert not (part == -1.0).any()
            # a head with no rows in this shard gets exactly 0
            for h in range(heads):
                if min(b, (h + 1) * d) <= max(a, h * d):
                    assert part[h] == 0
            total += part.double()
        assert_close(total.sqrt().float(), ref, TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_shards_named_boundaries(gen, backend):
    """Boundaries inside a head block, on a head boundary, and uneven splits, with leading dims."""
    H, d, D = 4, 6, 5
    grad = randn(2, 3, H * d, D, gen=gen)
    ref = ref64_block_norms(grad, H)
    for cuts in ([3], [6], [1, 13], [5, 6, 7, 20], [11, 12, 23]):
        total = torch.zeros(2, 3, H, dtype=torch.float64)
        for a, b in split_rows(H * d, cuts):
            part = head_block_norms(grad[..., a:b, :], H, squared=True, row_offset=a, total_rows=H * d,
                                    backend=backend, out=poisoned(2, 3, H))
            total += part.double()
        assert_close(total.sqrt().float(), ref, 1e-5)


def test_row_shards_launch_once(monkeypatch, gen):
    from gnorm_kernels.kernels._triton import kernel_module

    module = kernel_module("block_norms")
    counter = LaunchCounter(module._strided_block_sumsq_kernel)
    monkeypatch.setattr(module, "_strided_block_sumsq_kernel", counter)
    grad = randn(3, 10, 4, gen=gen)  # 3 layers, rows 7..17 of 4 heads x 6 rows
    out = head_block_norms(grad, 4, squared=True, row_offset=7, total_rows=24, backend="triton")
    assert counter.launches == 1
    assert torch.allclose(out, head_block_norms(grad, 4, squared=True, row_offset=7, total_rows=24, backend="torch"),
                          rtol=1e-5)


def test_row_shard_bad_inputs():
    g = torch.randn(5, 4)
    with pytest.raises(ValueError, match="pass squared=True"):
        head_block_norms(g, 2, row_offset=3, total_rows=12)
    with pytest.raises(ValueError, match="needs total_rows"):
        head_block_norms(g, 2, squared=True, row_offset=3)
    with pytest.raises(ValueError, match=r"rows \[8, 13\).*total_rows is 12"):
        head_block_norms(g, 2, squared=True, row_offset=8, total_rows=12)
    with pytest.raises(ValueError, match="total_rows=12 of the sharded weight.*does not divide"):
        head_block_norms(g, 5, squared=True, row_offset=0, total_rows=12)
    with pytest.raises(ValueError, match="non-negative int, got -1"):
        head_block_norms(g, 2, squared=True, row_offset=-1, total_rows=12)
    with pytest.raises(TypeError, match="squared must be a bool"):
        head_block_norms(g, 5, squared=1)
