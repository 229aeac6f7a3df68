"""Decoder pruning speed: Greedy-Gnorm steps, KV-cache size and decode speed after pruning KV
groups, and the attention of uneven groups (a benchmark, not a test).

A Llama-shaped model with random weights, sdpa attention, float32: by default 4 layers, hidden
512, 16 query heads of 32, 4 key/value heads (groups of 4), FFN 1376, vocabulary 8192 — the
issue's 16 layers x hidden 2048 x 32/8 heads, scaled down to run in minutes on a shared 2-core CPU
(`--layers/--hidden/--heads/--kv-heads` give other shapes). Three measurements, medians of
interleaved rounds in one run:

(a) one `greedy_prune` step (score every unit, choose, prune physically), unit="head" and
    unit="kv_group", against one plain forward + backward (logits' norm, every parameter
    requiring grad) over the same calibration batches. Goal: step / plain <= 1.3.
(b) 50% of the KV groups of every layer pruned (`prune_kv_groups`): KV-cache bytes at each context
    (must be exactly half) and decode tokens/s at batch 1 and 8, context 512 and 2048, against the
    dense model. The cache is filled with random keys/values to the context length, so no prefill
    is timed; each figure is the median over single-token decode steps.
(c) uneven groups: one query head pruned from each of half the groups (16 -> 14 heads, groups of
    3, 3, 4, 4: the "gnorm_grouped_sdpa" attention gathers K/V per query head) against dense
    models with the same 14 query heads (7 KV heads, groups of 2; and 2 KV heads, groups of 7):
    forward latency and decode tokens/s. Goal: within 10%.

    .venv/bin/python bench/decoder_speed.py --threads 1 --json bench/decoder_speed.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from gnorm_kernels.engine.driver import greedy_prune
from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.pruning import prune_heads, prune_kv_groups
from gnorm_kernels.testing import random_batches, tiny_random_model


def llama(args, heads: int | None = None, kv_heads: int | None = None) -> torch.nn.Module:
    """The benchmark's Llama; with `heads`/`kv_heads`, the same shape with other head counts (the
    config's check that heads divide the hidden size is side-stepped: head_dim stays hidden / --heads)."""
    model = tiny_random_model(
        "llama", num_layers=args.layers, num_heads=args.heads, head_size=args.hidden // args.heads,
        num_kv_heads=args.kv_heads, intermediate_size=args.ffn, vocab_size=args.vocab,
        attn_implementation="sdpa", max_position_embeddings=4096,
    )
    if heads is None:
        return model
    from transformers import LlamaForCausalLM

    config = model.config
    config.num_attention_heads, config.num_key_value_heads = heads, kv_heads
    torch.manual_seed(1)
    return LlamaForCausalLM(config).eval()


def plain_pass(model, batches) -> float:
    """Seconds of one forward + backward through every batch, every parameter requiring grad."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits.float().norm().backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


def engine_step(model, batches, unit: str) -> float:
    """Seconds of the first greedy step (scoring + choosing + physical pruning) on the full model."""
    return greedy_prune(model, batches, None, steps=1, unit=unit, progress=False).steps[1].seconds


def filled_cache(model, batch: int, context: int):
    """A DynamicCache holding `context` random positions for every layer's key/value heads."""
    from transformers import DynamicCache

    layout = head_layout(model)
    cache = DynamicCache(config=model.config)
    gen = torch.Generator().manual_seed(0)
    for block in layout.blocks:
        shape = (batch, len(block.kept_kv_heads), context, layout.head_size)
        cache.update(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen), block.index)
    return cache


def cache_bytes(cache) -> int:
    return sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
               for layer in cache.layers)


@torch.no_grad()
def decode_step_seconds(model, batch: int, context: int, steps: int) -> list[float]:
    """Seconds of each of `steps` single-token decode steps after a cache of `context` positions."""
    cache = filled_cache(model, batch, context)
    ids = torch.randint(3, model.config.vocab_size, (batch, 1), generator=torch.Generator().manual_seed(1))
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        out = model(input_ids=ids, cache=cache, use_cache=True)
        ids = out.logits[:, -1:].argmax(-1)
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def forward_seconds(model, inputs) -> float:
    start = time.perf_counter()
    model(input_ids=inputs)
    return time.perf_counter() - start


def _median(values) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=1376)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batches", type=int, default=2, help="calibration batches for (a)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--contexts", default="512,2048")
    parser.add_argument("--decode-batches", default="1,8")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    contexts = [int(c) for c in args.contexts.split(",")]
    decode_batches = [int(b) for b in args.decode_batches.split(",")]
    load_before = os.getloadavg()
    setup = (f"Llama shape {args.layers} layers, hidden {args.hidden}, {args.heads} query heads, {args.kv_heads} KV heads, "
             f"FFN {args.ffn}, vocab {args.vocab}, random weights, sdpa, fp32; {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}; load average {load_before[0]:.1f}")
    print(setup, flush=True)
    results: dict = {"setup": setup, "date": datetime.date.today().isoformat(),
                     "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}

    # ---- (a) one greedy step against a plain forward + backward
    dense = llama(args)
    batches = random_batches(dense, num_batches=args.batches, batch_size=args.batch_size, seq_len=args.seq_len,
                             seed=0, pad=False)
    plain_pass(dense, batches)
    engine_step(dense, batches, "head")
    plain, head, group = [], [], []
    for r in range(args.rounds):
        plain.append(plain_pass(dense, batches))
        head.append(engine_step(dense, batches, "head"))
        group.append(engine_step(dense, batches, "kv_group"))
        print(f"(a) round {r + 1}: plain {plain[-1]:.2f} s, head step {head[-1]:.2f} s, "
              f"kv_group step {group[-1]:.2f} s", flush=True)
    a = {"plain_s": plain, "head_step_s": head, "kv_group_step_s": group,
         "head_over_plain": _median(head) / _median(plain), "kv_group_over_plain": _median(group) / _median(plain),
         "head_over_plain_per_round": _median([h / p for h, p in zip(head, plain)]),
         "kv_group_over_plain_per_round": _median([g / p for g, p in zip(group, plain)])}
    print(f"(a) head step / plain = {a['head_over_plain']:.2f} (per round {a['head_over_plain_per_round']:.2f}); "
          f"kv_group step / plain = {a['kv_group_over_plain']:.2f} (per round {a['kv_group_over_plain_per_round']:.2f}); "
          "goal <= 1.3", flush=True)
    results["a"] = a

    # ---- (b) half the KV groups of every layer pruned: cache bytes and decode speed
    half = prune_kv_groups(copy.deepcopy(dense), {l: list(range(1, args.kv_heads, 2)) for l in range(args.layers)})
    b_rows = []
    for context in contexts:
        ratio = cache_bytes(filled_cache(half, 1, context)) / cache_bytes(filled_cache(dense, 1, context))
        for batch in decode_batches:
            times = {"dense": [], "pruned": []}
            for _ in range(max(1, args.rounds - 1)):
                times["dense"] += decode_step_seconds(dense, batch, context, args.decode_steps)
                times["pruned"] += decode_step_seconds(half, batch, context, args.decode_steps)
            dense_tps, pruned_tps = batch / _median(times["dense"]), batch / _median(times["pruned"])
            row = {"context": context, "batch": batch, "cache_bytes_dense": cache_bytes(filled_cache(dense, batch, context)),
                   "cache_ratio": ratio, "dense_tokens_per_s": dense_tps, "pruned_tokens_per_s": pruned_tps,
                   "speedup": pruned_tps / dense_tps}
            b_rows.append(row)
            print(f"(b) context {context}, batch {batch}: KV cache {row['cache_bytes_dense'] / 2**20:.1f} MiB dense, "
                  f"pruned/dense {ratio:.3f}; decode {dense_tps:.1f} -> {pruned_tps:.1f} tokens/s "
                  f"({row['speedup']:.2f}x)", flush=True)
    results["b"] = b_rows

    # ---- (c) uneven groups against dense models with the same number of query heads
    size = args.heads // args.kv_heads
    uneven = prune_heads(copy.deepcopy(dense), {l: [g * size for g in range(args.kv_heads // 2)]
                                                for l in range(args.layers)})
    heads = args.heads - args.kv_heads // 2
    models = {"uneven": uneven}
    for kv in sorted({k for k in range(1, heads + 1) if heads % k == 0 and 1 < heads // k < heads}, reverse=True):
        models[f"dense {heads}q/{kv}kv"] = llama(args, heads=heads, kv_heads=kv)
    print(f"(c) {uneven.config._attn_implementation}: {heads} query heads per layer, groups "
          f"{sorted(int((head_layout(uneven).blocks[0].attention.kv_index == g).sum()) for g in range(args.kv_heads))}",
          flush=True)
    inputs = torch.randint(3, args.vocab, (args.batch_size, 2 * args.seq_len), generator=torch.Generator().manual_seed(2))
    fwd = {name: [] for name in models}
    dec = {name: [] for name in models}
    for name, model in models.items():
        forward_seconds(model, inputs)
    for _ in range(args.rounds):
        for name, model in models.items():
            fwd[name].append(forward_seconds(model, inputs))
            dec[name] += decode_step_seconds(model, max(decode_batches), contexts[0], args.decode_steps)
    c = {}
    for name in models:
        c[name] = {"forward_s": _median(fwd[name]),
                   "decode_tokens_per_s": max(decode_batches) / _median(dec[name])}
    for name in models:
        if name != "uneven":
            c[name]["uneven_forward_ratio"] = c["uneven"]["forward_s"] / c[name]["forward_s"]
            c[name]["uneven_decode_ratio"] = c["uneven"]["decode_tokens_per_s"] / c[name]["decode_tokens_per_s"]
        extra = "" if name == "uneven" else (f"; uneven / this: forward time {c[name]['uneven_forward_ratio']:.2f}, "
                                             f"decode speed {c[name]['uneven_decode_ratio']:.2f}")
        print(f"(c) {name}: forward {args.batch_size}x{2 * args.seq_len} {c[name]['forward_s']:.3f} s, decode batch "
              f"{max(decode_batches)} context {contexts[0]} {c[name]['decode_tokens_per_s']:.1f} tokens/s{extra}", flush=True)
    results["c"] = c
    results["load_average"] = {"before": load_before, "after": os.getloadavg()}
    print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
