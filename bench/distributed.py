"""Greedy-Gnorm under torch.distributed on the CPU: what each step sends, and what it buys.

For 1 and 2 processes (torchrun, gloo, one thread each) and two BERT widths of the same head grid,
per aggregation:

* score_s: seconds to score a fixed calibration set once (`gnorm_scores` on this rank's shard,
  the median of --repeats after one warm-up; rank 0's clock, so it includes waiting for the other),
  and the CPU seconds of the busiest rank (what the wall clock would be with a core per process);
* per greedy step (`greedy_prune`, calibration and evaluation split across the processes; the
  difference between a run of --steps steps and one of none, divided by --steps): the wall clock,
  the seconds spent inside collectives (waiting for the other rank included), the number of
  collectives and the bytes they carry on each rank (the tensor payload of an all-reduce, the
  pickled objects of an all-gather or broadcast; a ring all-reduce sends about 2(W-1)/W of it).

    .venv/bin/python bench/distributed.py                 # 1 and 2 processes, widths 256 and 512
    .venv/bin/python bench/distributed.py --procs 1 2 --widths 256 --repeats 5

Goals: per_batch and per_example send O(L·H) numbers a step, whatever the width; 2 processes score
the calibration set >= 1.6x faster than 1 where each has a core of its own.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
AGGREGATIONS = ("per_batch", "per_example", "accumulated")


class Collectives:
    """Wraps the torch.distributed calls the package makes, counting calls, bytes and seconds."""

    OPS = ("all_reduce", "all_gather_object", "broadcast_object_list", "barrier")

    def __init__(self):
        import torch.distributed as dist

        self.dist, self.real = dist, {op: getattr(dist, op) for op in self.OPS}
        self.events: list[tuple[str, int, float]] = []  # (op, bytes, seconds) in call order

    def _payload(self, op: str, args: tuple) -> int:
        if op == "all_reduce":
            return args[0].numel() * args[0].element_size()
        if op == "all_gather_object":
            return len(pickle.dumps(args[1]))
        if op == "broadcast_object_list":
            return len(pickle.dumps(args[0]))
        return 0

    def __enter__(self) -> "Collectives":
        for op, real in self.real.items():
            def wrapped(*args, _op=op, _real=real, **kwargs):
                start = time.perf_counter()
                try:
                    return _real(*args, **kwargs)
                finally:
                    self.events.append((_op, self._payload(_op, args), time.perf_counter() - start))
            setattr(self.dist, op, wrapped)
        return self

    def __exit__(self, *exc) -> None:
        for op, real in self.real.items():
            setattr(self.dist, op, real)

    def totals(self, skip: int = 0, per: int = 1) -> dict:
        """Calls, bytes and seconds of the events after the first `skip`, divided by `per`."""
        events = self.events[skip:]
        by_op: dict[str, list[float]] = {}
        for op, size, _ in events:
            entry = by_op.setdefault(op, [0, 0])
            entry[0] += 1 / per
            entry[1] += size / per
        return {"calls": len(events) / per, "bytes": sum(e[1] for e in events) / per,
                "seconds": sum(e[2] for e in events) / per, "by_op": by_op}


def _model(width: int, layers: int, heads: int):
    from gnorm_kernels.testing import tiny_random_model

    return tiny_random_model("bert", num_layers=layers, num_heads=heads, head_size=width // heads,
                             intermediate_size=4 * width, vocab_size=1000, seed=0, attn_implementation="sdpa")


def _greedy_step_cost(model, calibration, evaluation, aggregation: str, steps: int) -> dict:
    """Per greedy step on this rank: wall clock (the trajectory's scoring + evaluation seconds of
    steps 1..`steps`) and the collectives after those of the set-up and step 0, found by a run of
    no steps (their number does not depend on the data)."""
    from gnorm_kernels.engine.driver import greedy_prune
    from gnorm_kernels.parallel import distributed

    def run(n: int):
        distributed.check_same(n, "steps")  # start together
        with Collectives() as seen:
            trajectory = greedy_prune(model, calibration, evaluation, steps=n, heads_per_step=1, progress=False,
                                      scorer_options={"aggregation": aggregation})
        return trajectory, seen

    _, setup = run(0)
    trajectory, seen = run(steps)
    wall = sum(s.seconds + s.eval_seconds for s in trajectory.steps[1:]) / steps
    return {"wall": wall, **seen.totals(skip=len(setup.events), per=steps)}


def worker(args: argparse.Namespace) -> None:
    from gnorm_kernels.parallel import distributed
    from gnorm_kernels.scoring.gnorm import gnorm_scores
    from gnorm_kernels.testing import random_batches

    torch.set_num_threads(1)
    distributed.init_from_env("cpu", timeout_s=1800)
    results = []
    for width in args.widths:
        model = _model(width, args.layers, args.heads)
        calibration = random_batches(model, num_batches=args.batches, batch_size=args.batch_size,
                                     seq_len=args.seq_len, seed=1, pad=False)
        evaluation = random_batches(model, num_batches=2, batch_size=4 * args.batch_size, seq_len=args.seq_len, seed=2)
        mine, mine_eval = distributed.shard(calibration), distributed.shard(evaluation, allow_empty=True)
        for aggregation in args.aggregations:
            times, cpu = [], []
            for repeat in range(args.repeats + 1):  # the first is a warm-up
                distributed.check_same(repeat, "repeat")
                start, start_cpu = time.perf_counter(), time.process_time()
                gnorm_scores(model, mine, aggregation=aggregation)
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
            with Collectives() as one_score:
                gnorm_scores(model, mine, aggregation=aggregation)
            per_step = _greedy_step_cost(model, mine, mine_eval, aggregation, args.steps)
            results.append({
                "rank": distributed.rank(), "procs": distributed.world_size(), "width": width, "aggregation": aggregation,
                "score_s": statistics.median(times[1:]), "score_cpu_s": statistics.median(cpu[1:]),
                "score_collectives": one_score.totals(),
                "step_s": per_step["wall"], "step_collective_s": per_step["seconds"],
                "step_calls": per_step["calls"], "step_bytes": per_step["bytes"], "step_by_op": per_step["by_op"],
            })
            if distributed.is_main():
                print(f"procs {distributed.world_size()} width {width} {aggregation}: score {results[-1]['score_s']:.3f} s, "
                      f"step {per_step['wall']:.3f} s, {per_step['bytes']:.0f} B", file=sys.stderr, flush=True)
    gathered = distributed.gather_shards([results]) if distributed.is_distributed() else [results]
    if distributed.is_main():
        Path(args.json).write_text(json.dumps([r for part in gathered for r in part], indent=1))
    distributed.shutdown()


def _launch(procs: int, args: argparse.Namespace, json_path: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
               str(Path(__file__).resolve()), "--worker", "--json", json_path,
               "--widths", *map(str, args.widths), "--aggregations", *args.aggregations,
               "--layers", str(args.layers), "--heads", str(args.heads), "--batches", str(args.batches),
               "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
               "--repeats", str(args.repeats), "--steps", str(args.steps)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    subprocess.run(command, check=True, env=env)


def _table(rows: list[dict]) -> str:
    main = {(r["procs"], r["width"], r["aggregation"]): r for r in rows if r["rank"] == 0}
    lines = ["| procs | width | aggregation | score s | speed-up vs 1 | CPU s (busiest rank) | CPU speed-up | step s | "
             "in collectives | collectives / step | bytes / step / rank (max rank) | bytes of one score |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (procs, width, aggregation), r in sorted(main.items()):
        one = main.get((1, width, aggregation))
        speed = f"{one['score_s'] / r['score_s']:.2f}x" if one else "-"
        group = [x for x in rows if (x["procs"], x["width"], x["aggregation"]) == (procs, width, aggregation)]
        most, busiest = max(x["step_bytes"] for x in group), max(x["score_cpu_s"] for x in group)
        cpu_speed = f"{one['score_cpu_s'] / busiest:.2f}x" if one else "-"
        share = r["step_collective_s"] / r["step_s"] if r["step_s"] > 0 else 0.0
        lines.append(f"| {procs} | {width} | {aggregation} | {r['score_s']:.3f} | {speed} | {busiest:.3f} | {cpu_speed} | "
                     f"{r['step_s']:.3f} | "
                     f"{r['step_collective_s'] * 1e3:.1f} ms ({share:.1%}) | {r['step_calls']:.1f} | "
                     f"{r['step_bytes']:,.0f} ({most:,.0f}) | {r['score_collectives']['bytes']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--aggregations", nargs="+", default=list(AGGREGATIONS), choices=AGGREGATIONS)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batches", type=int, default=8, help="calibration batches (split across processes)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="greedy steps measured (one head each)")
    parser.add_argument("--json", default=None, help="write every rank's figures here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"1 thread per process; before: {uptime}", flush=True)
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for procs in args.procs:
            path = os.path.join(tmp, f"procs{procs}.json")
            _launch(procs, args, path)
            rows += json.loads(Path(path).read_text())
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"after ({time.perf_counter() - start:.0f} s): {uptime}\n")
    print(_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
