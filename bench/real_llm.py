"""Cost on a real model: SmolLM2-135M (30 layers, 9 query and 3 KV heads) on python-docs windows.

* a greedy step (one for each unit: query head, KV group) against one plain forward + backward of
  the logits' norm through the same calibration batches, every parameter requiring grad (goal: a
  step <= 1.3x plain);
* peak RSS of the process after scoring, against the model's own float32 size;
* with a third of the KV groups pruned (30 of 90, by Greedy-Gnorm's static order): KV-cache bytes
  and decode tokens/s against the dense model at batch 1 and 8, contexts 512 and 2048 (a cache of
  random keys and values of that length, then single-token decode steps; `bench/decoder_speed.py`).

    .venv/bin/python bench/real_llm.py                  # calibration 8 windows x 64 tokens
    .venv/bin/python bench/real_llm.py --calib 16 --max-length 128 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decoder_speed import cache_bytes, decode_step_seconds, filled_cache, plain_pass  # noqa: E402

from gnorm_kernels.data.loading import load_task  # noqa: E402
from gnorm_kernels.engine.driver import greedy_prune, static_prune  # noqa: E402
from gnorm_kernels.evaluation import model_size_mb  # noqa: E402
from gnorm_kernels.models.loading import load_model  # noqa: E402


def step_seconds(model, batches, unit: str) -> float:
    """Seconds of the first greedy step (score every unit, choose, prune) on a copy of the model."""
    return greedy_prune(copy.deepcopy(model), batches, None, steps=1, unit=unit, progress=False).steps[1].seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calib", type=int, default=8, help="calibration windows (default 8)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per calibration batch (default 8)")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per window (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of plain and the two steps (default 3)")
    parser.add_argument("--decode-steps", type=int, default=8, help="timed decode steps per setting (default 8)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m", progress=False)
    load_seconds = time.perf_counter() - start
    task = load_task("python-docs")
    batches = task.batches("calibration", tokenizer, batch_size=args.batch_size, limit=args.calib,
                           max_length=args.max_length)
    result: dict = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs", "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "date": datetime.date.today().isoformat(),
                    "load_average_start": round(os.getloadavg()[0], 2), "load_seconds": round(load_seconds, 1),
                    "calibration": f"{len(batches)} batches, {args.calib} windows x {args.max_length} tokens",
                    "model_mb": round(model_size_mb(model), 1)}
    plain, head, group = [], [], []
    for _ in range(args.rounds):  # interleaved, so load bursts hit all three alike
        plain.append(plain_pass(model, batches))
        head.append(step_seconds(model, batches, "head"))
        group.append(step_seconds(model, batches, "kv_group"))
    result.update(plain_s=statistics.median(plain), head_step_s=statistics.median(head),
                  kv_group_step_s=statistics.median(group))
    result.update(head_over_plain=result["head_step_s"] / result["plain_s"],
                  kv_group_over_plain=result["kv_group_step_s"] / result["plain_s"],
                  peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    pruned = copy.deepcopy(model)
    static_prune(pruned, batches, None, steps=30, unit="kv_group", inplace=True, progress=False)
    decode = []
    for batch in (1, 8):
        for context in (512, 2048):
            row = {"batch": batch, "context": context}
            for name, m in (("dense", model), ("pruned", pruned)):
                row[f"{name}_cache_mb"] = round(cache_bytes(filled_cache(m, batch, context)) / 2**20, 2)
                seconds = statistics.median(decode_step_seconds(m, batch, context, args.decode_steps))
                row[f"{name}_tokens_per_s"] = round(batch / seconds, 1)
            decode.append(row)
    result["decode"] = decode
    result["load_average_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
