"""Timing comparisons that say how sure they are: candidates timed round-robin, ratios with intervals.

Timing one model and then the other confounds the comparison with whatever the machine did in
between (another process, a frequency change, a warm cache). `compare_timings` interleaves the
candidates instead: every round times each candidate once, in an order that rotates from round
to round, so drifts in the machine's load fall on all of them alike. Each candidate's time is
the median over rounds, with the interquartile range beside it; the ratio of two candidates'
medians gets a bootstrap interval over rounds (a resample draws whole rounds, paired across
candidates, because a round's times share the machine's state). A ratio whose interval holds 1
is *not resolved*: the data do not say which is faster. Several candidates against one reference
are one family of tests under Holm's correction (`gnorm_kernels.evidence.statistics`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from gnorm_kernels.evidence.statistics import Verdict, format_interval, holm_verdicts

__all__ = ["Timings", "compare_timings", "compare_latency", "forward_pass", "DecodeLoop"]


@dataclass
class Timings:
    """What `compare_timings` measured: `seconds[r, i]` is candidate `names[i]`'s time per call in
    round r; `ratios[name]` is that candidate's median over the reference's median, decided
    against 1 (a ratio below 1 with an interval below 1: resolved faster)."""

    names: list[str]
    reference: str
    seconds: np.ndarray
    ratios: dict[str, Verdict]
    calls: int
    order: list[list[str]]

    def median(self, name: str) -> float:
        """Median seconds per call of `name` over the rounds."""
        return float(np.median(self.seconds[:, self.names.index(name)]))

    def spread(self, name: str) -> tuple[float, float]:
        """The 25th and 75th percentiles of `name`'s seconds per call over the rounds."""
        low, high = np.percentile(self.seconds[:, self.names.index(name)], [25, 75])
        return float(low), float(high)

    def rows(self) -> list[dict[str, Any]]:
        """One row per candidate: median and quartiles (ms per call), the ratio to the reference
        with its interval, level and verdict (None for the reference itself)."""
        out = []
        for name in self.names:
            q1, q3 = self.spread(name)
            row: dict[str, Any] = {"candidate": name, "median_ms": 1e3 * self.median(name), "q1_ms": 1e3 * q1,
                                   "q3_ms": 1e3 * q3, "rounds": len(self.seconds)}
            ratio = self.ratios.get(name)
            if ratio is not None:
                row.update(ratio=ratio.value, ratio_lo=ratio.low, ratio_hi=ratio.high, level=ratio.level,
                           resolved=ratio.resolved, comparisons=ratio.comparisons)
            out.append(row)
        return out

    def markdown(self) -> str:
        """The rows as a markdown table with a caption that says how they were measured."""
        lines = [f"{len(self.seconds)} rounds, each timing every candidate {self.calls} call(s) in a rotating order; "
                 f"median ms per call [interquartile range]; ratio = median / {self.reference}'s median with its "
                 f"bootstrap interval over rounds (Holm over {max(len(self.ratios), 1)} ratios); "
                 "not resolved: the interval holds 1.", "",
                 "| candidate | ms per call | ratio to " + self.reference + " | verdict |", "|---|---:|---:|---|"]
        for name in self.names:
            q1, q3 = self.spread(name)
            cell = f"{1e3 * self.median(name):.3g} [{1e3 * q1:.3g}, {1e3 * q3:.3g}]"
            ratio = self.ratios.get(name)
            if ratio is None:
                lines.append(f"| {name} | {cell} | reference | |")
                continue
            shown = format_interval(ratio.value, ratio.low, ratio.high, reference=1.0, digits=2)
            verdict = "resolved" if ratio.resolved else "not resolved"
            lines.append(f"| {name} | {cell} | {shown} | {verdict} |")
        return "\n".join(lines) + "\n"


    def findings(self, what: str = "time per call") -> str:
        """Markdown bullets, one per candidate: faster or slower than the reference only where the
        ratio's interval excludes 1, otherwise "not resolved", each with the ratio and its interval."""
        lines = []
        for name, ratio in self.ratios.items():
            shown = format_interval(ratio.value, ratio.low, ratio.high, reference=1.0, digits=2)
            family = f"Holm over {ratio.comparisons}, {len(self.seconds)} rounds"
            if ratio.resolved:
                word = "faster" if ratio.value < 1 else "slower"
                lines.append(f"- {name} is **{word}** than {self.reference}: {what} ratio {shown} ({family}).")
            else:
                lines.append(f"- {name} against {self.reference}: **not resolved**, {what} ratio {shown} ({family}).")
        return "\n".join(lines)


def compare_timings(
    fns: Mapping[str, Callable[[], Any]],
    *,
    rounds: int = 15,
    calls: int = 1,
    warmup: int = 1,
    reference: str | None = None,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] | None = None,
) -> Timings:
    """Time each callable of `fns` ({name: fn()}) round-robin: `warmup` untimed calls each, then
    `rounds` rounds that time `calls` calls of every candidate, the order rotating each round.
    Ratios are against `reference` (default: the first name). `sync` (e.g.
    torch.cuda.synchronize) runs before every clock reading."""
    names = list(fns)
    if len(names) < 1 or rounds < 2 or calls < 1 or warmup < 0:
        raise ValueError(f"need at least one candidate, rounds >= 2, calls >= 1, warmup >= 0; got {len(names)} "
                         f"candidates, rounds={rounds}, calls={calls}, warmup={warmup}")
    reference = names[0] if reference is None else reference
    if reference not in fns:
        raise ValueError(f"reference {reference!r} is not among the candidates {names}")
    wait = sync or (lambda: None)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    seconds = np.zeros((rounds, len(names)))
    order = []
    for r in range(rounds):
        turn = names[r % len(names):] + names[: r % len(names)]
        order.append(turn)
        for name in turn:
            wait()
            start = clock()
            for _ in range(calls):
                fns[name]()
            wait()
            seconds[r, names.index(name)] = (clock() - start) / calls
    return Timings(names, reference, seconds, _ratios(seconds, names, reference, level, resamples, seed), calls, order)


def _ratios(seconds: np.ndarray, names: Sequence[str], reference: str, level: float, resamples: int, seed: int
            ) -> dict[str, Verdict]:
    """Each candidate's median over the reference's, with a bootstrap over whole rounds."""
    rows = np.random.default_rng(seed).integers(0, len(seconds), size=(resamples, len(seconds)))  # whole rounds
    medians = np.median(seconds[rows], axis=1)  # [B, candidates]
    j = names.index(reference)
    others = [i for i, n in enumerate(names) if n != reference]
    point = np.median(seconds, 0)
    verdicts = holm_verdicts([point[i] / point[j] for i in others], [medians[:, i] / medians[:, j] for i in others],
                             alpha=1 - level, reference=1.0)
    return {names[i]: v for i, v in zip(others, verdicts)}


def forward_pass(model: Any, batches: Sequence[Mapping[str, Any]]) -> Callable[[], None]:
    """A callable that runs `model` forward over `batches` in eval mode without gradients, the
    inputs moved to the model's device once: what `gnorm_kernels.evaluation.measure_latency` times."""
    import torch

    from gnorm_kernels.data.batches import model_device, model_inputs

    device = model_device(model)
    inputs = [model_inputs(b, device) for b in batches]
    if not inputs:
        raise ValueError("no batches to time")

    def run() -> None:
        saved = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                for x in inputs:
                    model(**x)
        finally:
            for m, was in saved:
                m.training = was

    return run


def compare_latency(models: Mapping[str, Any], batches: Sequence[Mapping[str, Any]], **options: Any) -> Timings:
    """`compare_timings` of a forward pass over `batches` for each model of `models` ({name: model});
    `options` go to `compare_timings` (rounds, calls, reference, ...). On a GPU, pass
    ``sync=torch.cuda.synchronize``."""
    return compare_timings({name: forward_pass(m, batches) for name, m in models.items()}, **options)


class DecodeLoop:
    """Greedy decoding of a causal LM after a prefill, as a callable for `compare_timings`.

    The prompt `input_ids` ([batch, context]) is prefilled once, not timed; each call then decodes
    `new_tokens` tokens one at a time with the KV cache and crops the cache back to the prompt, so
    every call does the same work and gives the same tokens. `cache_bytes` is the keys' and values'
    size after the prefill: what the model keeps per layer for that batch and context.
    `tokens_per_call` (batch x new tokens) turns seconds per call into tokens per second."""

    def __init__(self, model: Any, input_ids: Any, new_tokens: int = 8) -> None:
        import torch

        from gnorm_kernels.data.batches import model_device

        if new_tokens < 1 or input_ids.dim() != 2 or input_ids.shape[1] < 1:
            raise ValueError(f"expected input_ids [batch, context >= 1] and new_tokens >= 1, got shape "
                             f"{tuple(input_ids.shape)} and new_tokens={new_tokens}")
        self.model, self.new_tokens = model, new_tokens
        self.tokens_per_call = int(input_ids.shape[0]) * new_tokens
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(input_ids=input_ids.to(model_device(model)), use_cache=True)
        finally:
            model.train(was)
        self.cache, self.first = out.cache, out.logits[:, -1:].argmax(-1)  # transformers 5: `cache`
        self.context = self.cache.get_seq_length()
        self.cache_bytes = sum(t.numel() * t.element_size() for layer in self.cache.layers
                               for t in (layer.keys, layer.values))
        self.last_tokens: Any = None

    def __call__(self) -> Any:
        """Decode `new_tokens` tokens ([batch, new_tokens]) and restore the prefilled cache."""
        import torch

        token, made = self.first, []
        with torch.no_grad():
            try:
                for _ in range(self.new_tokens):
                    out = self.model(input_ids=token, cache=self.cache, use_cache=True)
                    token = out.logits[:, -1:].argmax(-1)
                    made.append(token)
            finally:
                self.cache.crop(self.context - self.cache.get_seq_length())
        self.last_tokens = torch.cat(made, 1)
        return self.last_tokens
