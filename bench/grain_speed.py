"""Latency of GRAIN-shrunk models against the dense model and against a per-head loop.

A BERT-base-sized classifier (12 layers x 12 heads of 64, hidden 768, FFN 3072; random weights:
latency does not depend on what the weights are) is shrunk to 20%, 10% and 5% of its encoder
units with structures of three kinds:

* "grain": the structure a real `gnorm grain` run left on the tiny model (4 x 8 heads of 8,
  FFN 256), scaled up to the BERT-base grid with `GrainStructure.scaled` (read from
  bench/grain_structures_tiny.json, written by the runs recorded in RESULTS.md);
* "regularised": structured-random with the regulariser's typical shape, fewer and fuller heads;
* "scattered": the same number of units spread over all heads, as pruning without the regulariser
  tends to leave (many small heads).

The random kinds spend --attention-share of their units on attention (0.8: the real tiny-model
runs at 20%, 10% and 5% spent 76%, 80% and 86%). Each shrunk model is timed with the uneven-head
implementations: "grouped" (the default: one fused Q/K/V projection, heads batched by size in
cost-model groups), "loop" (one attention per head in Python with matmul + softmax, as GRAIN's
released code does: the reference) and "loop-sdpa" (the same loop calling PyTorch's fused
attention per head: it separates what batching buys from what the fused kernel buys). Beside each,
its "uniform" twin (`GrainStructure.uniform_twin`: the same layers with every kept head of a layer one size, about
the same parameter count, timed with "grouped") shows what the unevenness itself costs: GRAIN's
paper finds its loop slower than uniform models of the same size.

    .venv/bin/python bench/grain_speed.py                       # CPU, batch 32, sequence 128
    .venv/bin/python bench/grain_speed.py --densities 0.2 0.05 --repeats 5   # a shorter run
    .venv/bin/python bench/grain_speed.py --device cuda --batch 128 --seq 512
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

# bench/ (this script's folder, first on sys.path) holds kernels.py, which would shadow the
# `kernels` package that transformers probes for at import time
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402


def random_structure(num_layers, num_heads, head_size, ffn_size, density, *, attention_share, style, seed):
    """A GrainStructure with `density` of all units kept; `attention_share` of them in attention."""
    from gnorm_kernels.grain.shrink import GrainStructure, LayerStructure

    rng = random.Random(seed)
    total = num_layers * (2 * num_heads * head_size + ffn_size)
    budget = int(density * total)
    att_budget = int(attention_share * budget)
    ffn_budget = budget - att_budget

    def split(amount, parts, cap):
        weights = [rng.random() + 0.5 for _ in range(parts)]
        out = [min(cap, int(amount * w / sum(weights))) for w in weights]
        i = 0
        while sum(out) < amount and any(o < cap for o in out):
            if out[i % parts] < cap:
                out[i % parts] += 1
            i += 1
        return out

    ffn_per_layer = split(ffn_budget, num_layers, ffn_size)
    att_per_layer = split(att_budget, num_layers, 2 * num_heads * head_size)
    layers = []
    for n_att, n_ffn in zip(att_per_layer, ffn_per_layer):
        if style == "regularised":
            # fewer, fuller heads: ~85% of the value dims of each kept head, queries 30-100% of that
            per_head = max(2, int(head_size * 0.85 * (1 + rng.uniform(0.3, 1.0))))
            n_heads = max(1, min(num_heads, round(n_att / per_head))) if n_att else 0
        else:
            n_heads = num_heads if n_att else 0
        heads = sorted(rng.sample(range(num_heads), n_heads))
        q_units = [0] * n_heads
        v_units = [1] * n_heads if n_heads else []
        left = n_att - n_heads
        while left > 0 and n_heads:
            h = rng.randrange(n_heads)
            kind = rng.random() < (0.6 if style == "regularised" else 0.5)
            if kind and v_units[h] < head_size:
                v_units[h] += 1
                left -= 1
            elif q_units[h] < head_size:
                q_units[h] += 1
                left -= 1
            elif v_units[h] < head_size:
                v_units[h] += 1
                left -= 1
        query = [()] * num_heads
        value = [()] * num_heads
        for h, nq, nv in zip(heads, q_units, v_units):
            query[h] = tuple(sorted(rng.sample(range(head_size), nq)))
            value[h] = tuple(sorted(rng.sample(range(head_size), nv)))
        layers.append(LayerStructure(tuple(query), tuple(value), tuple(sorted(rng.sample(range(ffn_size), n_ffn)))))
    return GrainStructure(num_heads, head_size, ffn_size, tuple(layers))


STRUCTURES = Path(__file__).with_name("grain_structures_tiny.json")


def grain_structure(density, num_layers, num_heads, head_size, ffn_size):
    """The recorded tiny-model GRAIN structure at `density`, scaled up (None if not recorded)."""
    from gnorm_kernels.grain.shrink import GrainStructure

    if not STRUCTURES.is_file():
        return None
    recorded = json.loads(STRUCTURES.read_text())
    data = recorded.get(f"{density:g}")
    if data is None:
        return None
    return GrainStructure.from_dict(data).scaled(num_layers, num_heads, head_size, ffn_size)


def bert_base(device, layers, heads, head_size, ffn):
    from transformers import BertConfig, BertForSequenceClassification

    hidden = heads * head_size
    config = BertConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2, attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config).to(device).eval()


IMPLS = ("grouped", "loop", "loop-sdpa")


def use_impl(model, impl):
    """Set the attention implementation; "loop-sdpa" is the per-head loop with the fused kernel."""
    from gnorm_kernels.grain.attention import UnevenSelfAttention
    from gnorm_kernels.grain.shrink import set_attention_impl

    set_attention_impl(model, "loop" if impl == "loop-sdpa" else impl)
    for m in model.modules():
        if isinstance(m, UnevenSelfAttention):
            m.__dict__.pop("_forward_loop", None)
            if impl == "loop-sdpa":
                m._forward_loop = functools.partial(UnevenSelfAttention._forward_loop, m, fused=True)


@torch.no_grad()
def interleaved_latency(variants, inputs, repeats, device):
    """Median seconds per forward of each variant, timed round-robin: every round runs each
    variant once, so load from other processes falls on all of them alike.

    `variants` maps a name to (model, impl or None); the first call of each is an untimed
    warm-up (it builds the grouping plans and the fused projection weights)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for model, impl in variants.values():
        if impl is not None:
            use_impl(model, impl)
        model(**inputs)
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (model, impl) in variants.items():
            if impl is not None:
                use_impl(model, impl)
            sync()
            start = time.perf_counter()
            model(**inputs)
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> None:
    import copy

    from gnorm_kernels.grain.shrink import shrink_model
    from gnorm_kernels.heads.families import stack_module

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--densities", type=float, nargs="+", default=[0.2, 0.1, 0.05])
    p.add_argument("--styles", nargs="+", default=["grain", "regularised", "scattered"])
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS),
                   help="implementations to time (the ratio columns need grouped and loop)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-size", type=int, default=64)
    p.add_argument("--ffn", type=int, default=3072)
    p.add_argument("--attention-share", type=float, default=0.8,
                   help="share of kept units in attention (query+value) rather than FFN")
    p.add_argument("--padding", type=float, default=0.0, help="fraction of each row that is padding (masked)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    device = torch.device(args.device)
    dense = bert_base(device, args.layers, args.heads, args.head_size, args.ffn)
    ids = torch.randint(5, dense.config.vocab_size, (args.batch, args.seq), device=device)
    mask = torch.ones_like(ids)
    if args.padding > 0:
        keep = int(round(args.seq * (1 - args.padding)))
        mask[1:, keep:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"# {datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load}, torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"batch {args.batch}, seq {args.seq}")

    def encoder_params(model):
        return sum(q.numel() for q in stack_module(model).parameters())

    enc_dense = encoder_params(dense)
    rows = []
    variants = {"dense": (dense, None)}
    for density in args.densities:
        for style in args.styles:
            if style == "grain":
                structure = grain_structure(density, args.layers, args.heads, args.head_size, args.ffn)
                if structure is None:
                    print(f"(no recorded GRAIN structure for density {density:g} in {STRUCTURES.name})")
                    continue
            else:
                structure = random_structure(
                    args.layers, args.heads, args.head_size, args.ffn, density,
                    attention_share=args.attention_share, style=style, seed=args.seed,
                )
            model = shrink_model(copy.deepcopy(dense), structure)
            twin = shrink_model(copy.deepcopy(dense), structure.uniform_twin())
            enc, enc_twin = encoder_params(model), encoder_params(twin)
            rows.append((density, style, structure, enc, enc_twin))
            for impl in args.impls:
                variants[(density, style, impl)] = (model, impl)
            variants[(density, style, "uniform")] = (twin, "grouped")
    times = interleaved_latency(variants, inputs, args.repeats, device)
    t_dense = times["dense"]
    print(f"dense: {1000 * t_dense:.1f} ms (median of {args.repeats}, timed round-robin with the rest)")
    print("| density | structure | heads kept | encoder params | " + " | ".join(f"{i} ms" for i in args.impls)
          + " | uniform ms (params) | speed-up vs dense (grouped) | loop / grouped | grouped / uniform |")
    print("|---" * (8 + len(args.impls)) + "|")
    for density, style, structure, enc, enc_twin in rows:
        t = {impl: times[(density, style, impl)] for impl in [*args.impls, "uniform"]}
        ratio = f"{t['loop'] / t['grouped']:.2f}x" if "loop" in t and "grouped" in t else "n/a"
        speed = f"{t_dense / t['grouped']:.2f}x" if "grouped" in t else "n/a"
        uneven = f"{t['grouped'] / t['uniform']:.2f}x" if "grouped" in t else "n/a"
        print(
            f"| {density:g} ({structure.density():.3f}) | {style} | {sum(structure.heads_per_layer())} | "
            f"{enc / enc_dense:.1%} | " + " | ".join(f"{1000 * t[i]:.1f}" for i in args.impls)
            + f" | {1000 * t['uniform']:.1f} ({enc_twin / enc_dense:.1%}) | {speed} | {ratio} | {uneven} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
