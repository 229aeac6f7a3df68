"""Triton's two modes and a missing Triton, each in a fresh process (the mode is fixed when a
kernel file is imported, and whether Triton is installed when gnorm_kernels.kernels is)."""
from __future__ import annotations

import os

import pytest
from kernel_checks import run_python


def cpu_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(extra)
    return env


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
        from gnorm_kernels.kernels import triton_mode
        assert triton_mode() == "interpreter"
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
        from gnorm_kernels.kernels.torch_backend import per_example_head_norms as ref
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
                           {"USE_TABLE": table, "ALIGNED": True, "FINAL": True, "SQUARED": False, "BLOCK": bn.BLOCK})
                assert "ld.global.v4.b32" in code, (dt, table)
            for squared in (False, True):
                ptx(bn._block_sumsq_kernel,
                    {"src_ptr": "*" + dt, "table_ptr": "*i64", "out_index_ptr": "*i64", "out_ptr": "*fp32",
                     **ints("K chunk n_chunks")},
                    {"USE_TABLE": False, "ALIGNED": False, "FINAL": squared, "SQUARED": squared, "BLOCK": bn.BLOCK})
                for columns, tile in ((True, (64, 64)), (False, (16, 256))):
                    # unit column stride (Triton specialises a stride of 1): rows of a tile are contiguous
                    code = ptx(bn._strided_block_sumsq_kernel,
                               {"src_ptr": "*" + dt, "out_ptr": "*fp32", **ints("R C d row_offset stride_m stride_r")},
                               {"stride_c": 1, "COLUMNS": columns, "SQUARED": squared,
                                "BLOCK_R": tile[0], "BLOCK_C": tile[1]})
                    assert "ld.global.v4.b32" in code or dt != "fp32", (dt, columns, squared)
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


def test_enable_interpreter_is_explicit_and_once():
    done = run_python(
        """
        import os, torch
        from gnorm_kernels.kernels import enable_interpreter, head_block_norms, triton_mode
        assert triton_mode() is None and "TRITON_INTERPRET" not in os.environ  # importing decides nothing
        enable_interpreter()
        assert triton_mode() == "interpreter" and os.environ["TRITON_INTERPRET"] == "1"
        g = torch.randn(6, 4)
        assert torch.allclose(head_block_norms(g, 3, backend="triton"), g.reshape(3, 8).norm(dim=1))
        enable_interpreter()  # again: nothing changes
        assert triton_mode() == "interpreter"
        """,
        cpu_env(),
    )
    assert done.returncode == 0, done.stderr


def test_enable_interpreter_refuses_after_gpu_kernels_loaded():
    done = run_python(
        """
        import torch
        from gnorm_kernels.kernels import enable_interpreter, head_block_norms, triton_mode
        from gnorm_kernels.kernels._triton import kernel_module
        kernel_module("block_norms")  # TRITON_INTERPRET=0: decorated for the GPU
        assert triton_mode() == "gpu"
        try:
            enable_interpreter()
        except RuntimeError as err:
            assert "already loaded for the GPU" in str(err), err
        else:
            raise AssertionError("enable_interpreter() after a GPU load must refuse")
        try:
            head_block_norms(torch.randn(6, 4), 3, backend="triton")
        except ValueError as err:
            assert "compiled for the GPU" in str(err), err
        else:
            raise AssertionError("CPU tensors on GPU kernels must be refused")
        """,
        cpu_env(TRITON_INTERPRET="0"),
    )
    assert done.returncode == 0, done.stderr


# A meta-path finder that makes `import triton` (and its submodules) fail as if it were not installed.
BLOCK_TRITON = """
import sys
class NoTriton:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoTriton())
"""


def test_without_triton_everything_runs_on_pytorch():
    done = run_python(
        BLOCK_TRITON
        + """
import torch
import gnorm_kernels.kernels as kernels
from gnorm_kernels.kernels import (QKVGradientBuffer, TritonUnavailableError, head_block_norms,
                                   per_example_head_norms, qkv_head_scores)
assert "triton" not in sys.modules
g = torch.randn(6, 4)
assert torch.allclose(head_block_norms(g, 3), g.reshape(3, 8).norm(dim=1))
assert torch.allclose(head_block_norms(g, 3, backend="torch"), g.reshape(3, 8).norm(dim=1))
assert qkv_head_scores([(g, g, g)], 3).shape == (1, 3)
per_example_head_norms(torch.randn(2, 3, 4), torch.randn(2, 3, 6), 2)
from gnorm_kernels.kernels._triton import use_triton
assert not use_triton("auto", torch.device("cuda"))  # auto on CUDA tensors falls back to PyTorch
calls = [
    lambda: head_block_norms(g, 3, backend="triton"),
    lambda: qkv_head_scores([(g, g, g)], 3, backend="triton"),
    lambda: per_example_head_norms(torch.randn(2, 3, 4), torch.randn(2, 3, 6), 2, backend="triton"),
    lambda: kernels.enable_interpreter(),
]
for call in calls:
    try:
        call()
    except TritonUnavailableError as err:
        assert "pip install 'gnorm-kernels[triton]'" in str(err), err
    else:
        raise AssertionError("backend='triton' without triton must raise")
w = torch.nn.Parameter(torch.randn(6, 4))
with QKVGradientBuffer([(w, torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(6, 4)))], 2,
                       backend="triton") as buf:
    try:
        buf.norms()
    except TritonUnavailableError:
        pass
    else:
        raise AssertionError("QKVGradientBuffer(backend='triton') without triton must raise")
print("ok")
""",
        cpu_env(),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    # exactly one notice, on one line, and no traceback
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "triton is not installed" in lines[0] and "gnorm-kernels[triton]" in lines[0]
