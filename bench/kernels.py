"""Benchmark of the gradient-norm kernels against their fallbacks.

    python bench/kernels.py            # what the device allows: GPU figures on CUDA, fallback figures on CPU
    python bench/kernels.py --sweep    # on CUDA, also try block sizes / warps and the float32 dot precision
    python bench/kernels.py --only table --baseline /tmp/old   # the one-launch table path, against
                                       # the gnorm_kernels of another checkout (e.g. an earlier commit)

Block norms (head_block_norms / one-launch table over a QKVGradientBuffer), for the Q/K/V weight
gradients [L, 3, H*d, D] of BERT-base (12 x 768), BERT-large (24 x 1024) and a 4096-wide model:
on CUDA the kernel's median time (triton.testing.do_bench), its effective bandwidth (bytes read /
time) against the device's copy bandwidth measured in the same run (2 x bytes / time of a 1 GiB
copy), and the PyTorch fallback's time, eager and under torch.compile. On CPU only the fallback
(eager, torch.compile) is timed, and the GPU figures are reported as owed.

Per-example head norms for one Linear of each model: time and peak memory of the kernel (or, on
CPU, the PyTorch backend in its Gram and direct forms) against materialising per-example gradients with
torch.func (vmap of grad), and the fused Q/K/V call against three separate calls. Peak memory is
torch.cuda.max_memory_allocated on CUDA; on CPU, where PyTorch keeps no allocator statistics, it is
the peak of the live tensor bytes recorded by torch.profiler (profile_memory=True), i.e. the
tensors the call allocates, not the process's RSS.

The one-launch table path (qkv_head_norms on a list of per-layer gradients, which builds the
table of block addresses on every call; QKVGradientBuffer.norms(), which builds it once): time
per call. On CUDA that is the real launch (do_bench); on CPU the kernel launch itself is stubbed
out, so the figure is the host-side cost of the path (checks, table, padding, launch set-up), the
part that does not shrink with a faster GPU. `--baseline PATH` times the same in the checkout at
PATH too, alternating between the two in fresh processes, and prints the ratio.

Prints markdown tables (for bench/RESULTS.md). Sizes on CPU are cut down (fewer layers, smaller
batches) to stay modest on a shared 2-core machine; the tables say which sizes ran.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# --package-root: benchmark the gnorm_kernels of another checkout (read before the import below)
PACKAGE_ROOT = sys.argv[sys.argv.index("--package-root") + 1] if "--package-root" in sys.argv else REPO
sys.path.insert(0, PACKAGE_ROOT)

from gnorm_kernels.kernels import (  # noqa: E402  (only names that earlier versions have too)
    QKVGradientBuffer,
    head_block_norms,
    per_example_head_norms,
    per_example_qkv_head_norms,
    qkv_head_norms,
)


@dataclass(frozen=True)
class Model:
    name: str
    layers: int
    width: int
    heads: int

    @property
    def head_size(self) -> int:
        return self.width // self.heads


MODELS = [Model("BERT-base", 12, 768, 12), Model("BERT-large", 24, 1024, 16), Model("4096-wide", 32, 4096, 32)]
CPU_LAYERS = {"4096-wide": 2}  # 32 x 3 x 4096^2 floats (6.4 GB) is too much for a shared CPU box
# (model, batch, seq) for the per-example benchmark; CPU sizes are smaller.
PER_EXAMPLE_GPU = [("BERT-base", 32, 128), ("BERT-base", 8, 512), ("BERT-large", 32, 128), ("4096-wide", 8, 256)]
PER_EXAMPLE_CPU = [("BERT-base", 32, 128), ("BERT-base", 8, 512), ("4096-wide", 2, 128)]


# --------------------------------------------------------------------------------------------
# timing and memory


def time_cpu(fn, repeats: int = 5) -> float:
    """Median wall time in ms of fn() after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_gpu(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def peak_bytes_cpu(fn) -> int:
    """Peak live tensor bytes allocated during fn(), from torch.profiler's allocator events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def peak_bytes_gpu(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def copy_bandwidth(device: torch.device, timer) -> float:
    """GB/s of a plain device copy (read + write) of 1 GiB (256 MiB on CPU)."""
    n = (1 << 28) if device.type == "cuda" else (1 << 26)
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / ms / 1e6


# --------------------------------------------------------------------------------------------
# block norms


def qkv_grads(model: Model, layers: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.randn(layers, 3, model.width, model.width, dtype=dtype, device=device)


def bench_block_norms(device: torch.device, dtypes: list[torch.dtype], compiled: bool = True) -> list[dict]:
    from gnorm_kernels.kernels import torch_backend

    on_gpu = device.type == "cuda"
    timer = time_gpu if on_gpu else time_cpu
    rows = []
    for model in MODELS:
        layers = model.layers if on_gpu else CPU_LAYERS.get(model.name, model.layers)
        for dtype in dtypes:
            try:
                grads = qkv_grads(model, layers, dtype, device)
            except torch.OutOfMemoryError:
                rows.append({"model": model.name, "dtype": dtype, "skipped": "out of memory"})
                continue
            nbytes = grads.numel() * grads.element_size()
            row = {"model": model.name, "layers": layers, "dtype": dtype, "MB": nbytes / 1e6}
            eager = lambda: torch_backend.head_block_norms(grads, model.heads)  # noqa: E731, F821 (bound in the loop above; ruff misreads the later del)
            row["eager_ms"] = timer(eager)
            if compiled:
                compiled_fn = torch.compile(torch_backend.head_block_norms, dynamic=False)
                row["compiled_ms"] = timer(lambda: compiled_fn(grads, model.heads))  # noqa: F821 (bound in the loop above; ruff misreads the later del)
            if on_gpu:
                row["kernel_ms"] = timer(lambda: head_block_norms(grads, model.heads, backend="triton"))  # noqa: F821 (bound in the loop above; ruff misreads the later del)
                try:
                    row["table_ms"] = _time_buffer_norms(model, layers, dtype, device, timer)
                except torch.OutOfMemoryError:
                    row["table_ms"] = float("nan")
            for key in ("eager_ms", "compiled_ms", "kernel_ms", "table_ms"):
                if key in row:
                    row[key.replace("_ms", "_GBps")] = nbytes / row[key] / 1e6
            rows.append(row)
            del grads
            if on_gpu:
                torch.cuda.empty_cache()
    return rows


def _time_buffer_norms(model: Model, layers: int, dtype: torch.dtype, device: torch.device, timer) -> float:
    """The one-launch path: QKVGradientBuffer.norms() over the same gradient volume."""
    params = [
        tuple(torch.nn.Parameter(torch.empty(model.width, model.width, dtype=dtype, device=device)) for _ in range(3))
        for _ in range(layers)
    ]
    with QKVGradientBuffer(params, model.head_size, backend="triton") as buf:
        buf.buffer.normal_()
        ms = timer(buf.norms)
    del buf, params
    return ms


# --------------------------------------------------------------------------------------------
# per-example norms


def materialised_norms(x: torch.Tensor, grad_out: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Per-example gradients of the Linear's weight via torch.func, then their head-block norms."""
    weight = torch.zeros(grad_out.shape[-1], x.shape[-1], dtype=x.dtype, device=x.device)

    def contribution(w, xb, gb):  # d/dw of <x w^T, g> is g^T x: the example's weight gradient
        return (torch.nn.functional.linear(xb, w) * gb).sum()

    per_example = torch.func.vmap(torch.func.grad(contribution), in_dims=(None, 0, 0))(weight, x, grad_out)
    return head_block_norms(per_example, num_heads, backend="torch")


def bench_per_example(device: torch.device, dtype: torch.dtype) -> list[dict]:
    on_gpu = device.type == "cuda"
    timer = time_gpu if on_gpu else (lambda fn: time_cpu(fn, repeats=3))
    peak = peak_bytes_gpu if on_gpu else peak_bytes_cpu
    models = {m.name: m for m in MODELS}
    rows = []
    for name, batch, seq in PER_EXAMPLE_GPU if on_gpu else PER_EXAMPLE_CPU:
        model = models[name]
        x = torch.randn(batch, seq, model.width, dtype=dtype, device=device)
        gs = [torch.randn(batch, seq, model.width, dtype=dtype, device=device) for _ in range(3)]
        H = model.heads
        row = {"model": name, "B": batch, "T": seq, "dtype": dtype}
        candidates = {"materialise": lambda: materialised_norms(x, gs[0], H)}
        backend = "triton" if on_gpu else "torch"
        for form in ("gram", "direct"):
            candidates[form] = lambda form=form: per_example_head_norms(x, gs[0], H, form=form, backend=backend)
        candidates["qkv_fused"] = lambda: per_example_qkv_head_norms(x, gs, H, form="gram", backend=backend)
        candidates["qkv_separate"] = lambda: [per_example_head_norms(x, g, H, form="gram", backend=backend) for g in gs]
        for key, fn in candidates.items():
            try:
                row[f"{key}_ms"] = timer(fn)
                row[f"{key}_MB"] = peak(fn) / 1e6
            except torch.OutOfMemoryError:
                row[f"{key}_ms"] = row[f"{key}_MB"] = float("nan")
        ref = materialised_norms(x, gs[0], H).double()
        row["max_rel_err"] = float(
            (per_example_head_norms(x, gs[0], H, backend=backend).double() - ref).norm() / ref.norm()
        )
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# the one-launch table path


class _NoLaunch:
    """Stands in for the Triton kernel on CPU: `kernel[grid](...)` does nothing, so what is timed
    is everything around the launch."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


TABLE_MODELS = ["BERT-base", "BERT-large"]


def bench_table_path(device: torch.device) -> list[dict]:
    """Per-call time of the table path: qkv_head_norms over 3L gradients and QKVGradientBuffer.norms()."""
    from gnorm_kernels.kernels._triton import kernel_module

    on_gpu = device.type == "cuda"
    timer = time_gpu if on_gpu else (lambda fn: time_cpu(fn, repeats=50))
    module = kernel_module("block_norms")
    real_kernel = module._block_sumsq_kernel
    if not on_gpu:
        module._block_sumsq_kernel = _NoLaunch()
    models = {m.name: m for m in MODELS}
    rows = []
    try:
        for name in TABLE_MODELS:
            model = models[name]
            shape = (model.width, model.width)
            grads = [tuple(torch.empty(shape, device=device) for _ in range(3)) for _ in range(model.layers)]
            row = {"model": name, "layers": model.layers, "blocks": 3 * model.layers * model.heads}
            row["list_ms"] = timer(lambda: qkv_head_norms(grads, model.heads, backend="triton"))  # noqa: F821 (bound in the loop above; ruff misreads the later del)
            params = [tuple(torch.nn.Parameter(g) for g in layer) for layer in grads]
            with QKVGradientBuffer(params, model.head_size, backend="triton") as buf:
                row["buffer_ms"] = timer(buf.norms)
            rows.append(row)
            del grads, params, buf
    finally:
        module._block_sumsq_kernel = real_kernel
    return rows


def compare_table_path(baseline: str, rounds: int = 3) -> list[dict]:
    """bench_table_path here and in the checkout at `baseline`, alternating, each in a fresh process;
    per model and path the median over rounds, and the ratio this / baseline."""
    runs: dict[str, list[list[dict]]] = {"this": [], "baseline": []}
    for _ in range(rounds):
        for who, root in (("baseline", baseline), ("this", REPO)):
            done = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--only", "table", "--json", "--package-root", root],
                capture_output=True, text=True, check=True,
            )
            runs[who].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = []
    for i, name in enumerate(TABLE_MODELS):
        row = {"model": name}
        for key in ("list_ms", "buffer_ms"):
            for who in ("baseline", "this"):
                row[f"{who}_{key}"] = statistics.median(run[i][key] for run in runs[who])
            row[f"ratio_{key}"] = row[f"this_{key}"] / row[f"baseline_{key}"]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# GPU-only tuning sweep


def sweep(device: torch.device) -> None:
    from gnorm_kernels.kernels import _common, block_norms

    model = MODELS[0]
    grads = qkv_grads(model, model.layers, torch.float32, device)
    nbytes = grads.numel() * 4
    print("\n| BLOCK | warps | ms | GB/s |\n|---|---|---|---|")
    default = (block_norms.BLOCK, block_norms.NUM_WARPS)
    for blk in (1024, 2048, 4096, 8192):
        for warps in (4, 8, 16):
            block_norms.BLOCK, block_norms.NUM_WARPS = blk, warps
            ms = time_gpu(lambda: head_block_norms(grads, model.heads, backend="triton"))
            print(f"| {blk} | {warps} | {ms:.4f} | {nbytes / ms / 1e6:.0f} |")
    block_norms.BLOCK, block_norms.NUM_WARPS = default

    x = torch.randn(32, 128, 768, device=device)
    g = torch.randn(32, 128, 768, device=device)
    ref = materialised_norms(x.double(), g.double(), 12)
    print("\n| float32 dot precision | form | ms | rel. error |\n|---|---|---|---|")
    for precision in ("ieee", "tf32x3", "tf32"):
        _common.FP32_DOT_PRECISION = precision  # read by both per-example launchers at every call
        for form in ("gram", "direct"):
            fn = lambda: per_example_head_norms(x, g, 12, form=form, backend="triton")  # noqa: E731
            err = float((fn().double() - ref).norm() / ref.norm())
            print(f"| {precision} | {form} | {time_gpu(fn):.4f} | {err:.1e} |")
    _common.FP32_DOT_PRECISION = "ieee"


# --------------------------------------------------------------------------------------------
# report


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    if isinstance(v, torch.dtype):
        return str(v).replace("torch.", "")
    return str(v)


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sweep", action="store_true", help="on CUDA: tuning sweep of block size, warps and dot precision"
    )
    parser.add_argument("--skip-compile", action="store_true", help="leave out torch.compile (its first call is slow)")
    parser.add_argument(
        "--only", choices=["block", "per_example", "table"], action="append",
        help="run only these sections (repeatable; default: all)",
    )
    parser.add_argument("--baseline", metavar="PATH", help="table section: also time the checkout at PATH")
    parser.add_argument("--package-root", metavar="PATH", help="benchmark the gnorm_kernels found under PATH")
    parser.add_argument("--json", action="store_true", help="table section only: print its rows as JSON")
    args = parser.parse_args()
    sections = set(args.only or ["block", "per_example", "table"])
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    if args.json:
        print(json.dumps(bench_table_path(device)))
        return
    name = torch.cuda.get_device_name(device) if on_gpu else f"{platform.processor() or platform.machine()} CPU"
    print(f"# gnorm-kernels benchmark, {datetime.date.today()}")
    print(f"device: {name}, {torch.get_num_threads()} CPU threads; torch {torch.__version__}")
    if on_gpu:
        import triton

        print(f"triton {triton.__version__}")
    if os.path.exists("/proc/loadavg"):
        print(f"load average at start: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    timer = time_gpu if on_gpu else time_cpu
    if sections & {"block", "per_example"}:
        copy = copy_bandwidth(device, timer)
        print(f"measured copy bandwidth: {copy:.0f} GB/s (read + write of {'1 GiB' if on_gpu else '256 MiB'})\n")

    if "block" in sections:
        rows = bench_block_norms(device, [torch.float32, torch.bfloat16], compiled=not args.skip_compile)
        for row in rows:
            for key in ("kernel", "table", "eager", "compiled"):
                if f"{key}_GBps" in row:
                    row[f"{key}_%copy"] = 100 * row[f"{key}_GBps"] / copy
        print("## Block norms: [L, 3, D, D] Q/K/V gradients\n")
        cols = ["model", "layers", "dtype", "MB", "eager_ms", "eager_GBps", "compiled_ms", "compiled_GBps"]
        if on_gpu:
            cols += ["kernel_ms", "kernel_GBps", "kernel_%copy", "table_ms", "table_%copy"]
        else:
            cols += ["eager_%copy", "compiled_%copy"]
        print(table(rows, cols))
        if not on_gpu:
            print("\nGPU figures (kernel time, % of copy bandwidth) need a CUDA device: run this script there.")

    if "per_example" in sections:
        dtype = torch.float32
        print(f"\n## Per-example head norms, one Linear (D -> D), {_fmt(dtype)}\n")
        rows = bench_per_example(device, dtype)
        first = "kernel, " if on_gpu else "PyTorch backend, "
        print(f"(gram/direct: {first}each form; qkv_fused vs qkv_separate: three outputs sharing x, Gram form)\n")
        cols = ["model", "B", "T"]
        for key in ("materialise", "gram", "direct", "qkv_fused", "qkv_separate"):
            cols += [f"{key}_ms", f"{key}_MB"]
        print(table(rows, cols + ["max_rel_err"]))
        if not on_gpu:
            print("\nGPU figures (kernel vs torch.func materialising) need a CUDA device: run this script there.")

    if "table" in sections:
        what = "real launches" if on_gpu else "host side only: the kernel launch is stubbed out"
        print(f"\n## One-launch table path, float32, all heads kept ({what})\n")
        if args.baseline:
            rows = compare_table_path(args.baseline)
            print(f"(this checkout against {args.baseline}; medians of 3 alternating fresh-process runs, "
                  f"each a median of 50 calls)\n")
            cols = ["model"] + [f"{who}_{key}" for key in ("list_ms", "buffer_ms") for who in ("baseline", "this")]
            print(table(rows, cols + ["ratio_list_ms", "ratio_buffer_ms"]))
        else:
            print(table(bench_table_path(device), ["model", "layers", "blocks", "list_ms", "buffer_ms"]))

    if args.sweep and on_gpu:
        sweep(device)


if __name__ == "__main__":
    main()
