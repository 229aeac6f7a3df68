"""Uniform against free key/value-group pruning of tiny-lm, healing, and the uniform model in plain
transformers (a benchmark, not a test).

tiny-lm (a 4-layer Llama, 8 query heads in 2 key/value groups, hidden 64) loses half its KV
groups, 4 of 8, two ways, both Greedy-Gnorm on the same calibration batches:

* uniform: ``uniform=True``, one round: every layer loses its lowest-scored group;
* free: four greedy steps of one group each, anywhere (a layer may lose both groups).

For each: perplexity and verdict accuracy on held-out test reviews, before and after `heal`
(N distillation steps from the unpruned model). Then the uniform model is saved (`save_pruned`
writes a standard config) and loaded with plain ``AutoModelForCausalLM.from_pretrained``: its
logits against the package's model, its KV-cache bytes after a prefill, and single-token decode
speed (medians of interleaved rounds) against the dense model, also loaded by plain transformers.

    PYTHONPATH=. .venv/bin/python bench/uniform_heal.py --json bench/uniform_heal.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import tempfile
import time

import torch

from gnorm_kernels.checkpoints.pruned import save_pruned
from gnorm_kernels.data.lm_tasks import synthetic_lm_task
from gnorm_kernels.engine.driver import greedy_prune
from gnorm_kernels.evaluation import evaluate
from gnorm_kernels.heads.pruning import prune_kv_groups
from gnorm_kernels.healing import heal
from gnorm_kernels.models.loading import load_model


def metrics(model, batches) -> dict[str, float]:
    result = evaluate(model, batches, metric="accuracy")
    return {"perplexity": result["perplexity"], "accuracy": result["accuracy"]}


def kv_bytes(model, ids: torch.Tensor) -> int:
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    return sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
               for layer in cache.layers)


def decode_seconds(model, ids: torch.Tensor, new_tokens: int) -> float:
    """Seconds per token of greedy single-token decoding after a prefill of `ids` (prefill not timed)."""
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        return (time.perf_counter() - start) / new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heal-steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--score-batches", type=int, default=8, help="calibration batches of 16 for scoring")
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    began = datetime.datetime.now(datetime.timezone.utc)

    teacher, tokenizer = load_model("tiny-lm", progress=False)
    task = synthetic_lm_task(train_size=1, calibration_size=512)
    calibration = task.batches("calibration", tokenizer, batch_size=16, limit=512)
    test = task.batches("test", tokenizer, batch_size=250, limit=500)
    scoring = calibration[: args.score_batches]
    dense = metrics(teacher, test)
    print(f"dense: {dense}")

    runs = {
        "uniform": greedy_prune(teacher, scoring, unit="kv_group", uniform=True, steps=1, progress=False),
        "free": greedy_prune(teacher, scoring, unit="kv_group", steps=4, progress=False),
    }
    results: dict[str, dict] = {}
    pruned_models = {}
    for name, trajectory in runs.items():
        groups = trajectory.pruned_units_at(steps=len(trajectory.steps) - 1)
        model = prune_kv_groups(copy.deepcopy(teacher), groups)
        pruned_models[name] = copy.deepcopy(model)
        before = metrics(model, test)
        start = time.perf_counter()
        heal(model, teacher, calibration, steps=args.heal_steps, lr=args.lr, progress=False)
        seconds = time.perf_counter() - start
        after = metrics(model, test)
        results[name] = {"groups_removed": {str(k): v for k, v in groups.items()}, "before": before,
                         "after": after, "heal_seconds": seconds}
        print(f"{name}: removed {groups}; before {before}; after {args.heal_steps} heal steps {after} ({seconds:.0f} s)")

    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as folder:
        save_pruned(pruned_models["uniform"], folder, tokenizer=tokenizer)
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    with tempfile.TemporaryDirectory() as folder:
        teacher.save_pretrained(folder)
        plain_dense = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = test[0]["input_ids"][:8, : args.context]
    with torch.no_grad():
        logit_gap = (plain(ids).logits - pruned_models["uniform"](ids).logits).abs().max().item()
    decode = {}
    for batch in (1, 8):
        x = ids[:batch]
        times = {"dense": [], "uniform": []}
        for _ in range(args.rounds):  # interleaved rounds
            times["dense"].append(decode_seconds(plain_dense, x, args.new_tokens))
            times["uniform"].append(decode_seconds(plain, x, args.new_tokens))
        med = {k: statistics.median(v) for k, v in times.items()}
        decode[str(batch)] = {"dense_tokens_per_s": batch / med["dense"], "uniform_tokens_per_s": batch / med["uniform"],
                              "speedup": med["dense"] / med["uniform"]}
        print(f"decode batch {batch}: dense {batch / med['dense']:.0f} tok/s, uniform {batch / med['uniform']:.0f} "
              f"tok/s ({med['dense'] / med['uniform']:.2f}x)")
    kv = {"dense": kv_bytes(plain_dense, ids), "uniform": kv_bytes(plain, ids),
          "free": kv_bytes(pruned_models["free"], ids)}
    print(f"KV bytes at batch 8 x {args.context} tokens: {kv}; uniform/dense {kv['uniform'] / kv['dense']:.3f}")
    print(f"plain transformers load of the uniform model: config heads {config['num_attention_heads']}/"
          f"{config['num_key_value_heads']}, head_dim {config['head_dim']}, max logit gap {logit_gap:.2e}")
    record = {
        "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{args.threads} thread(s)",
        "began": began.isoformat(timespec="seconds"), "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "settings": vars(args), "dense": dense, "runs": results,
        "kv_bytes": kv, "decode": decode, "plain_load_max_logit_gap": logit_gap,
        "standard_config": {k: config[k] for k in ("num_attention_heads", "num_key_value_heads", "head_dim")},
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
