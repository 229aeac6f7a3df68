"""Seconds per Greedy-Gnorm step: this package's engine against the paper-literal reference.

A BERT-base shape (12 layers x 12 heads, hidden 768, FFN 3072) with random weights and a fixed
random calibration set. Three numbers, each the median over a few repeats in one run:

* plain: one forward + backward of the logits' norm through every calibration batch with every
  parameter requiring grad, the floor of any method that needs a gradient;
* engine: one step of `greedy_prune` (score every head, choose, prune physically);
* reference: one step of tests/reference_gnorm.py (one full sweep per layer, masks, full grads).

    .venv/bin/python bench/greedy_speed.py                      # CPU defaults: 2 batches x 4 x 64 tokens
    .venv/bin/python bench/greedy_speed.py --batches 4 --batch-size 8 --seq-len 128

Goals: reference / engine >= 10, engine / plain <= 1.3.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference_gnorm import reference_gnorm_scores  # noqa: E402

from gnorm_kernels.engine.driver import greedy_prune  # noqa: E402
from gnorm_kernels.testing import random_batches  # noqa: E402


def bert_base(device: str, attn: str) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        num_hidden_layers=12, num_attention_heads=12, hidden_size=768, intermediate_size=3072,
        num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation=attn,
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config).to(device).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_pass(model, batches, device: str) -> float:
    """Seconds of one forward + backward through every batch, all parameters requiring grad."""
    model.zero_grad(set_to_none=True)
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        model(**inputs).logits.float().norm().backward()
    _sync(device)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


def engine_step(model, batches, aggregation: str) -> float:
    """Seconds of the first greedy step (scoring + choosing + physical pruning) on the full model."""
    t = greedy_prune(model, batches, None, steps=1, progress=False, scorer_options={"aggregation": aggregation})
    return t.steps[1].seconds


def reference_step(model, batches, device: str) -> float:
    """Seconds of one paper-literal step on the full model: L sweeps over the batches, then the arg-min."""
    _sync(device)
    start = time.perf_counter()
    scores = reference_gnorm_scores(model, batches)
    torch.where(torch.isnan(scores), torch.inf, scores).argmin().item()
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed engine steps and plain passes")
    parser.add_argument("--reference-repeats", type=int, default=3, help="timed reference steps")
    parser.add_argument("--per-example", action="store_true", help="also time the per-example aggregation")
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    model = bert_base(args.device, args.attn)
    batches = [
        {k: v.to(args.device) for k, v in b.items()}
        for b in random_batches(model, num_batches=args.batches, batch_size=args.batch_size,
                                seq_len=args.seq_len, seed=0, pad=False)
    ]
    setup = (f"BERT-base shape (12x12 heads, hidden 768), random weights, {args.attn} attention; "
             f"calibration {args.batches} batches x {args.batch_size} x {args.seq_len} tokens; "
             f"{args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(setup, flush=True)

    # one untimed round to warm up, then the measurements interleaved, so that a change in the
    # machine's load during the run affects all of them alike
    plain_pass(model, batches, args.device)
    engine_step(model, batches, "per_batch")
    plain, engine, per_example, reference = [], [], [], []
    for r in range(max(args.repeats, args.reference_repeats)):
        if r < args.repeats:
            plain.append(plain_pass(model, batches, args.device))
            engine.append(engine_step(model, batches, "per_batch"))
            if args.per_example:
                per_example.append(engine_step(model, batches, "per_example"))
        if r < args.reference_repeats:
            reference.append(reference_step(model, batches, args.device))
        print(f"round {r + 1}: plain {plain[-1]:.3f} s, engine {engine[-1]:.3f} s"
              + (f", per_example {per_example[-1]:.3f} s" if per_example else "")
              + (f", reference {reference[-1]:.3f} s" if r < args.reference_repeats else ""), flush=True)
    for name, values in (("plain forward+backward", plain), ("engine step", engine),
                         ("engine step, per_example", per_example), ("reference step", reference)):
        if values:
            print(f"{name + ':':27s} {statistics.median(values):8.3f} s (median of {len(values)})")
    per_example = per_example or None

    e, p, r = statistics.median(engine), statistics.median(plain), statistics.median(reference)
    # the same ratios round by round (measured minutes apart at most), less exposed to load changes
    paired_speedup = statistics.median(a / b for a, b in zip(reference, engine))
    paired_overhead = statistics.median(a / b for a, b in zip(engine, plain))
    print(f"reference / engine = {r / e:.1f}x  (goal >= 10); median of per-round ratios {paired_speedup:.1f}x")
    print(f"engine / plain     = {e / p:.2f}   (goal <= 1.3); median of per-round ratios {paired_overhead:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "setup": setup, "plain_s": plain, "engine_s": engine,
            "engine_per_example_s": per_example, "reference_s": reference,
            "speedup": r / e, "engine_over_plain": e / p,
            "speedup_per_round": paired_speedup, "engine_over_plain_per_round": paired_overhead,
        }, indent=1))


if __name__ == "__main__":
    main()
