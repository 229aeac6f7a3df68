"""Uniform against free key/value-group pruning, healing, and the uniform model in plain
transformers (a benchmark, not a test), on tiny-lm or SmolLM2-135M.

The model loses the same number of KV groups several ways, all Greedy-Gnorm on the same
calibration batches:

* uniform: ``uniform=True``, one round: every layer loses its lowest-scored group;
* free: as many greedy steps of one group each as the uniform round removed, anywhere (a layer
  may lose every group), re-scored after each;
* free-one-step (``--model smollm2-135m`` only): the same number of groups in one step, from the
  first scores (the information the uniform round had).

For each: perplexity (with a 95% bootstrap interval over the held-out windows or reviews; tiny-lm
also verdict accuracy) before and after `heal` (N distillation steps from the unpruned model on
calibration text). Then the uniform model is saved (`save_pruned` writes a standard config) and
loaded with plain ``AutoModelForCausalLM.from_pretrained``: its logits against the package's model,
its KV-cache bytes after a prefill, and greedy decode speed against the dense model (also loaded by
plain transformers), timed round-robin by `gnorm_kernels.evidence.timing.compare_timings` (ratio
of medians with a bootstrap interval over rounds; "not resolved" when it holds 1).

    PYTHONPATH=. .venv/bin/python bench/uniform_heal.py --json bench/uniform_heal.json
    PYTHONPATH=. .venv/bin/python bench/uniform_heal.py --model smollm2-135m --json bench/uniform_heal_smollm2.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import tempfile
import time

import torch

from gnorm_kernels.checkpoints.pruned import save_pruned
from gnorm_kernels.data.lm_tasks import synthetic_lm_task
from gnorm_kernels.data.loading import load_task
from gnorm_kernels.engine.driver import greedy_prune
from gnorm_kernels.evaluation import evaluate
from gnorm_kernels.evidence.statistics import perplexity_evidence
from gnorm_kernels.evidence.timing import DecodeLoop, compare_timings
from gnorm_kernels.heads.pruning import prune_kv_groups
from gnorm_kernels.healing import heal
from gnorm_kernels.models.loading import load_model

DEFAULTS = {  # per model: heal steps, learning rate, decode context and tokens decoded per timed call
    "tiny-lm": {"heal_steps": 200, "lr": 2e-3, "context": 32, "new_tokens": 24},
    "smollm2-135m": {"heal_steps": 20, "lr": 1e-4, "context": 512, "new_tokens": 8},
}


def data(name: str, tokenizer, args) -> tuple[list, list, list, torch.Tensor]:
    """(scoring batches, healing batches, test batches, decode prompt [8, context])."""
    if name == "tiny-lm":
        task = synthetic_lm_task(train_size=1, calibration_size=512)
        calibration = task.batches("calibration", tokenizer, batch_size=16, limit=512)
        test = task.batches("test", tokenizer, batch_size=250, limit=500)
        return calibration[: args.score_batches], calibration, test, test[0]["input_ids"][:8, : args.context]
    task = load_task("python-docs")
    scoring = task.batches("calibration", tokenizer, batch_size=8, max_length=64, limit=8)
    healing = task.batches("calibration", tokenizer, batch_size=args.heal_batch, max_length=64, limit=args.heal_windows)
    test = task.batches("test", tokenizer, batch_size=16, max_length=64, limit=args.test_windows)
    prompt = task.batches("test", tokenizer, batch_size=8, max_length=args.context, limit=8)[0]["input_ids"]
    return scoring, healing, test, prompt


def measure(model, batches, windows: dict, name: str) -> dict[str, float]:
    result = evaluate(model, batches, metric="perplexity", per_example=True)
    windows[name] = (result["example_nll"], result["example_tokens"])
    out = {"perplexity": result["perplexity"]}
    if "accuracy" in result:
        out["accuracy"] = result["accuracy"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-lm", choices=sorted(DEFAULTS))
    parser.add_argument("--heal-steps", type=int, default=None, help="default: 200 (tiny-lm), 20 (smollm2-135m)")
    parser.add_argument("--lr", type=float, default=None, help="default: 2e-3 (tiny-lm), 1e-4 (smollm2-135m)")
    parser.add_argument("--score-batches", type=int, default=8, help="tiny-lm: calibration batches of 16 for scoring")
    parser.add_argument("--heal-batch", type=int, default=4, help="smollm2-135m: windows per healing step")
    parser.add_argument("--heal-windows", type=int, default=64, help="smollm2-135m: calibration windows healing cycles")
    parser.add_argument("--test-windows", type=int, default=64, help="smollm2-135m: held-out windows of 64 tokens")
    parser.add_argument("--context", type=int, default=None, help="decode prompt length (32 / 512)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per timed call (24 / 8)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    for key, value in DEFAULTS[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    began = datetime.datetime.now(datetime.timezone.utc)

    teacher, tokenizer = load_model(args.model, progress=False)
    scoring, healing, test, prompt = data(args.model, tokenizer, args)
    windows: dict = {}
    dense = measure(teacher, test, windows, "dense")
    print(f"dense: {dense}", flush=True)

    uniform = greedy_prune(teacher, scoring, unit="kv_group", uniform=True, steps=1, progress=False)
    removed = sum(len(g) for g in uniform.pruned_units_at(steps=1).values())
    runs = {"uniform": uniform,
            "free": greedy_prune(teacher, scoring, unit="kv_group", steps=removed, progress=False)}
    if args.model != "tiny-lm":
        runs["free-one-step"] = greedy_prune(teacher, scoring, unit="kv_group", steps=1, heads_per_step=removed,
                                             progress=False)
    results: dict[str, dict] = {}
    pruned_models = {}
    for name, trajectory in runs.items():
        groups = trajectory.pruned_units_at(steps=len(trajectory.steps) - 1)
        model = prune_kv_groups(copy.deepcopy(teacher), groups)
        pruned_models[name] = copy.deepcopy(model)
        before = measure(model, test, windows, f"{name} before")
        start = time.perf_counter()
        heal(model, teacher, healing, steps=args.heal_steps, lr=args.lr, progress=False)
        seconds = time.perf_counter() - start
        after = measure(model, test, windows, f"{name} after")
        results[name] = {"groups_removed": {str(k): v for k, v in groups.items()}, "before": before,
                         "after": after, "heal_seconds": seconds}
        print(f"{name}: removed {groups}; before {before}; after {args.heal_steps} heal steps {after} ({seconds:.0f} s)",
              flush=True)
    pairs = [(f"{n} {w}", "dense") for n in runs for w in ("before", "after")]
    pairs += [(f"{n} before", f"{n} after") for n in runs] + [("free before", "uniform before"),
                                                               ("free after", "uniform after")]
    estimates, verdicts = perplexity_evidence(windows, pairs)
    intervals = {n: [e.value, e.low, e.high] for n, e in estimates.items()}
    decided = {f"{a} - {b}": {"value": v.value, "low": v.low, "high": v.high, "resolved": v.resolved}
               for (a, b), v in verdicts.items()}
    for line in (f"{n}: {e.value:.3f} [{e.low:.3f}, {e.high:.3f}]" for n, e in estimates.items()):
        print(line)
    for (a, b), v in verdicts.items():
        print(f"{a} minus {b}: {v.text()}")

    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as folder:
        save_pruned(pruned_models["uniform"], folder, tokenizer=tokenizer)
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    with tempfile.TemporaryDirectory() as folder:
        teacher.save_pretrained(folder)
        plain_dense = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = test[0]["input_ids"][:8, :32]
    with torch.no_grad():
        logit_gap = (plain(ids).logits - pruned_models["uniform"](ids).logits).abs().max().item()
    decode, kv = {}, {}
    for batch in (1, 8):
        loops = {"dense": DecodeLoop(plain_dense, prompt[:batch], args.new_tokens),
                 "uniform": DecodeLoop(plain, prompt[:batch], args.new_tokens)}
        kv[str(batch)] = {n: loop.cache_bytes for n, loop in loops.items()}
        timings = compare_timings(loops, rounds=args.rounds, reference="dense")
        ratio = timings.ratios["uniform"]  # seconds per call, uniform / dense: below 1 is faster
        per_call = loops["dense"].tokens_per_call
        decode[str(batch)] = {"dense_tokens_per_s": per_call / timings.median("dense"),
                              "uniform_tokens_per_s": per_call / timings.median("uniform"),
                              "speedup": 1 / ratio.value, "speedup_low": 1 / ratio.high, "speedup_high": 1 / ratio.low,
                              "resolved": ratio.resolved}
        print(f"decode batch {batch}, context {prompt.shape[1]}:\n{timings.markdown()}", flush=True)
    print(f"KV bytes after a prefill of {prompt.shape[1]} tokens: {kv}")
    print(f"plain transformers load of the uniform model: config heads {config['num_attention_heads']}/"
          f"{config['num_key_value_heads']}, head_dim {config['head_dim']}, max logit gap {logit_gap:.2e}")
    record = {
        "model": args.model,
        "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{args.threads} thread(s)",
        "began": began.isoformat(timespec="seconds"), "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "settings": vars(args), "dense": dense, "runs": results,
        "perplexity_intervals": intervals, "differences": decided,
        "kv_bytes": kv, "decode": decode, "plain_load_max_logit_gap": logit_gap,
        "standard_config": {k: config[k] for k in ("num_attention_heads", "num_key_value_heads", "head_dim")},
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
