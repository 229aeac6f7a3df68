"""Sentences that state what a measurement showed, generated from its numbers and verdicts.

A notebook's prose never quotes a measured number: the cells that state results build them
with these functions, so a sentence says "higher" only when the interval beside it excludes the
reference, and "not resolved" otherwise. Proportions come with Wilson intervals; differences and
time ratios with the intervals and Holm families of `gnorm_kernels.evidence.statistics`. (The
sentences about a whole comparison table are `gnorm_kernels.evidence.report.findings`.)
"""

from __future__ import annotations

from gnorm_kernels.evidence.statistics import Verdict, format_interval, wilson_interval

__all__ = ["proportion_text", "difference_sentence", "ratio_sentence"]


def proportion_text(successes: int, n: int, *, level: float = 0.95, digits: int = 3) -> str:
    """"0.998 [0.994, 0.999] (Wilson 95%, n = 2000)": a proportion with its Wilson interval, which
    keeps a width at 0 and 1 where p ± z·se collapses to a point."""
    low, high = wilson_interval(successes, n, level)
    shown = format_interval(successes / n, float(low), float(high), reference=successes / n, digits=digits)
    return f"{shown} (Wilson {level:.0%}, n = {n})"


def difference_sentence(a: str, b: str, verdict: Verdict, *, digits: int = 3, what: str = "") -> str:
    """"GRAIN minus Greedy-Gnorm{what}: +0.141 [+0.118, +0.163] resolved (Holm over 2): GRAIN higher."
    and, when the interval holds 0, "... not resolved (...): these data do not say which is higher.\"
    (or, when every resample gives a difference of exactly 0, that)."""
    text = f"{a} minus {b}{what}: {verdict.text(digits=digits)}"
    if verdict.value != verdict.value:
        return text + ": not measured."
    if verdict.low == verdict.high == verdict.value == verdict.reference:
        return text + ": the difference is exactly 0 on every resample."
    if not verdict.resolved:
        return text + ": these data do not say which is higher."
    return text + f": {a} {'higher' if verdict.value > verdict.reference else 'lower'}."


def ratio_sentence(a: str, b: str, verdict: Verdict) -> str:
    """A time ratio a / b (below 1: a is faster) as a sentence: "GRAIN 0.05 takes 0.28 [0.25, 0.31]
    of dense's time (Holm over 9): resolved, 3.6x as fast." or "... not resolved: the interval holds 1"."""
    shown = format_interval(verdict.value, verdict.low, verdict.high, reference=1.0, digits=2)
    text = f"{a} takes {shown} of {b}'s time ({verdict.correction} over {verdict.comparisons})"
    if not verdict.resolved:
        return text + ": not resolved, the interval holds 1, so these timings do not say which is faster."
    if verdict.value < 1:
        return text + f": resolved, {a} is faster ({1 / verdict.value:.2f}x the speed of {b})."
    return text + f": resolved, {a} is slower ({verdict.value:.2f}x the time of {b})."
