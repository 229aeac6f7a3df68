"""The statistics module on fresh synthetic data: Wilson intervals, the seed-aware paired bootstrap,
verdicts whose printed numbers show what they decided, Holm's correction, round-robin timings and
the progress-bar modes."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest

from gnorm_kernels.engine.trajectory import Step, Trajectory
from gnorm_kernels.evidence.comparison import Comparison, bootstrap_evidence
from gnorm_kernels.evidence.statistics import (
    Estimate,
    bootstrap_p_value,
    format_interval,
    holm_verdicts,
    percentile_interval,
    resample_runs,
    wilson_interval,
    with_wilson,
)
from gnorm_kernels.evidence.timing import compare_timings


def run(name: str, accuracies: list[float], golds: np.ndarray, *, draw: int = 0, seed: int = 0) -> Trajectory:
    """A 2 x 4 grid, two heads pruned a step, every step evaluated: right on the first
    round(a * n) examples at each step's accuracy a (shuffled by `seed` past step 0)."""
    n = len(golds)
    order = np.random.default_rng(seed).permutation(n)
    heads = iter([(l, h) for l in range(2) for h in range(4)])
    steps = []
    for i, a in enumerate(accuracies):
        preds = golds.copy()
        wrong = order[round(a * n):]
        preds[wrong] = 1 - preds[wrong]
        pruned = [] if i == 0 else [next(heads), next(heads)]
        steps.append(Step(i, pruned, {"accuracy": float((preds == golds).mean())}, params=0, encoder_params=0,
                          size_mb=0.0, seconds=0.0, predictions=preds.tolist(), golds=golds.tolist()))
    return Trajectory(method=name, family="bert", num_layers=2, num_heads=4, greedy=True, prune_first="lowest",
                      settings={"calibration_draw": draw, "seed": seed}, steps=steps, budget=2 * (len(steps) - 1),
                      complete=True)


# --------------------------------------------------------------------------- proportions at 0% and 100%


def test_wilson_interval_keeps_a_width_at_the_ends_and_matches_the_textbook():
    low, high = wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    low, high = wilson_interval(50, 50)
    assert high == 1.0 and low == pytest.approx(0.9287, abs=1e-4)  # not the [1, 1] of p ± z·se
    low, high = wilson_interval(0, 50)
    assert low == 0.0 and high == pytest.approx(0.0713, abs=1e-4)
    lows, highs = wilson_interval(np.array([0, 25, 50]), 50)
    assert lows.shape == (3,) and (lows < highs).all() and highs[1] - lows[1] > highs[0] - lows[0]
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(51, 50)


def test_an_accuracy_of_one_gets_a_wilson_interval_in_the_bootstrap():
    golds = np.zeros(60, dtype=int)
    ev = bootstrap_evidence({"m": [run("m", [1.0, 1.0, 0.5], golds)]}, budgets=(0.25,), resamples=200)
    unpruned = ev.estimates["m"]["unpruned"]
    assert unpruned.value == 1.0 and unpruned.high == 1.0
    assert unpruned.low == pytest.approx(float(wilson_interval(60, 60)[0]))  # the bootstrap alone reads [1, 1]
    same = with_wilson(Estimate(0.5, 0.3, 0.7), 60, 0.95)
    assert (same.low, same.high) == (0.3, 0.7)  # already wider than Wilson's: kept


# --------------------------------------------------------------------------- seeds inside the intervals


def test_resample_runs_draws_seeds_within_each_calibration_draw():
    picks = resample_runs([0, 0, 0, 1], 500, np.random.default_rng(0))
    assert picks.shape == (500, 4) and (picks[:, 3] == 3).all()
    assert set(np.unique(picks[:, :3])) == {0, 1, 2} and not (picks[:, :3] == [0, 1, 2]).all(1).all()


def test_the_random_baselines_seed_spread_is_inside_its_interval():
    golds = np.zeros(400, dtype=int)
    seeds = [0.60, 0.70, 0.75, 0.80, 0.90]  # accuracy at 50% pruned, one per seed
    random = [run("random", [1.0, a, a * 0.9, a * 0.8, a * 0.7], golds, seed=s) for s, a in enumerate(seeds)]
    method = run("m", [1.0, 0.78, 0.70, 0.62, 0.55], golds, seed=9)
    ev = bootstrap_evidence({"m": [method], "random": random}, budgets=(0.25,), resamples=1000, seed=1)
    est = ev.estimates["random"]["at_25%"]
    assert est.value == pytest.approx(0.75)
    # examples alone would give about 0.75 ± 0.04: the seeds' spread (0.70 to 0.80 around the median) is in it
    assert est.low < 0.705 and est.high > 0.795
    diff = ev.difference("m", "random")["at_25%"]
    assert diff.value == pytest.approx(0.03) and diff.low < 0 < diff.high and not diff.resolved
    one_seed = bootstrap_evidence({"m": [method], "random": [random[2]]}, budgets=(0.25,), resamples=1000, seed=1)
    assert one_seed.difference("m", "random")["at_25%"].high - one_seed.difference("m", "random")["at_25%"].low \
        < diff.high - diff.low


# --------------------------------------------------------------------------- verdicts that show what they decided


def test_printed_intervals_show_their_side_of_zero():
    resolved = format_interval(0.007, 0.0004, 0.014)
    unresolved = format_interval(-0.002, -0.006, 0.0)
    assert resolved == "0.0070 [0.0004, 0.0140]"  # not "[0.000, 0.014]", which would read as holding 0
    assert unresolved == "-0.002 [-0.006, 0.000]"  # a bound of exactly 0: the interval holds 0
    assert format_interval(-0.002, -0.006, 0.0003, signed=True) == "-0.0020 [-0.0060, +0.0003]"
    assert format_interval(-0.002, -0.006, -0.00002, signed=True) == "-0.00200 [-0.00600, -0.00002]"
    assert format_interval(0.0, -1e-17, 1e-17, signed=True) == "+0.000 [+0.000, +0.000]"  # float noise is 0
    assert format_interval(0.9990, 0.9985, 0.9996, reference=1.0) == "0.9990 [0.9985, 0.9996]"
    assert format_interval(float("nan"), 0.0, 1.0) == "n/a"


def _with_p(p: float, sign: float = 1.0, resamples: int = 1000) -> np.ndarray:
    """Bootstrap samples whose two-sided p-value against 0 is exactly `p`."""
    k = round(p * resamples / 2)
    return sign * np.concatenate([-np.ones(k), np.linspace(0.5, 1.5, resamples - k)])


def test_the_interval_excludes_the_reference_exactly_when_the_p_value_is_below_the_level():
    rng = np.random.default_rng(5)
    for _ in range(200):
        samples = rng.integers(-3, 12, size=int(rng.integers(20, 400))).astype(float)
        level = float(rng.uniform(0.5, 0.999))
        low, high = percentile_interval(samples, level)
        assert (low > 0 or high < 0) == (bootstrap_p_value(samples) < 1 - level)
    assert bootstrap_p_value(np.zeros(50)) == 1.0


def test_holm_resolves_fewer_than_uncorrected_tests_and_says_over_how_many():
    # p = 0.01, 0.03, 0.04: all below 0.05 alone; Holm: 3 x 0.01 < 0.05, then 2 x 0.03 = 0.06 stops
    samples = [_with_p(0.03), _with_p(0.01, -1.0), _with_p(0.04), np.full(1000, np.nan)]
    verdicts = holm_verdicts([0.9, -0.9, 0.8, float("nan")], samples)
    assert [v.resolved for v in verdicts] == [False, True, False, False]
    assert all(v.comparisons == 3 for v in verdicts)  # the NaN one is not a comparison
    assert verdicts[1].p_adjusted == pytest.approx(0.03) and verdicts[0].p_adjusted == pytest.approx(0.06)
    assert verdicts[1].level == pytest.approx(1 - 0.05 / 3) and verdicts[2].level == verdicts[0].level
    for v in verdicts[:3]:  # what is printed shows what was decided
        low, high = re.findall(r"[-+]?\d+\.\d+", v.text())[1:3]
        assert (float(low) > 0 or float(high) < 0) == v.resolved
        assert v.text().endswith(("resolved (Holm over 3)",))
    assert "not resolved" in verdicts[0].text() and " resolved (Holm over 3)" in verdicts[1].text()
    alone = holm_verdicts([0.9], [_with_p(0.03)])[0]
    assert alone.resolved and alone.comparisons == 1  # the same test outside the family


def test_a_comparison_table_names_its_correction_and_family():
    golds = np.zeros(300, dtype=int)
    runs = {"ref": [run("ref", [1.0, 0.9, 0.8, 0.7, 0.6], golds, seed=1)],
            "worse": [run("worse", [1.0, 0.7, 0.6, 0.5, 0.4], golds, seed=2)],
            "same": [run("same", [1.0, 0.9, 0.8, 0.7, 0.6], golds, seed=3)]}
    comparison = Comparison(runs=runs, evidence=bootstrap_evidence(runs, resamples=500))
    rows = {r["method"]: r for r in comparison.table()}
    family = 2 * (len(comparison.evidence.keys) - 1)
    assert rows["worse"]["comparisons"] == family and rows["worse"]["correction"] == "Holm"
    assert rows["worse"]["at_50%_resolved"] and not rows["same"]["at_50%_resolved"]
    for row in rows.values():
        for key in comparison.evidence.keys[1:]:
            lo, hi = row[f"{key}_diff_lo"], row[f"{key}_diff_hi"]
            assert row[f"{key}_resolved"] == (lo > 0 or hi < 0)
    text = comparison.markdown()
    assert f"Holm's step-down correction over the table's {family} comparisons" in text
    assert text.count(f"resolved (Holm, {family} comparisons)") == sum(
        row[f"{k}_resolved"] for row in rows.values() for k in comparison.evidence.keys[1:])
    pairs = comparison.pairs()
    assert len(pairs) == 6 and {(p["method"], p["versus"]) for p in pairs} == {
        (a, b) for a in runs for b in runs if a != b}
    back = {(p["method"], p["versus"]): p for p in pairs}
    assert back[("worse", "ref")]["at_50%"] == pytest.approx(-back[("ref", "worse")]["at_50%"])
    assert back[("worse", "ref")]["at_50%_resolved"] == back[("ref", "worse")]["at_50%_resolved"]


# --------------------------------------------------------------------------- timings


class FakeClock:
    """A clock that only the timed functions move: each call adds its cost, plus a drift that
    grows with every call (a machine getting slower), so no wall time is read."""

    def __init__(self, drift: float = 0.0):
        self.now, self.calls, self.drift, self.log = 0.0, 0, drift, []

    def __call__(self) -> float:
        return self.now

    def cost(self, name: str, seconds: float, noise: float = 0.0, rng: np.random.Generator | None = None):
        def fn() -> None:
            self.calls += 1
            self.log.append(name)
            self.now += seconds * (1 + self.drift * self.calls) + (noise * rng.standard_normal() if rng else 0.0)
        return fn


def test_round_robin_timings_rotate_and_resolve_only_clear_ratios():
    clock, rng = FakeClock(drift=0.01), np.random.default_rng(0)
    fns = {"dense": clock.cost("dense", 1.0, 0.05, rng), "twin": clock.cost("twin", 1.0, 0.05, rng),
           "pruned": clock.cost("pruned", 0.5, 0.05, rng)}
    t = compare_timings(fns, rounds=12, warmup=1, clock=clock)
    assert t.order[0] == ["dense", "twin", "pruned"] and t.order[1] == ["twin", "pruned", "dense"]
    assert clock.log[:3] == ["dense", "twin", "pruned"] and len(clock.log) == 3 + 12 * 3
    assert t.ratios["pruned"].resolved and t.ratios["pruned"].high < 1 and 0.4 < t.ratios["pruned"].value < 0.6
    assert not t.ratios["twin"].resolved and t.ratios["twin"].low < 1 < t.ratios["twin"].high
    assert t.ratios["twin"].comparisons == 2 and "dense" not in t.ratios
    q1, q3 = t.spread("dense")
    assert q1 <= t.median("dense") <= q3 and t.median("dense") > 1.0  # the drift slows every call
    table = t.markdown()
    assert "not resolved" in table and "| pruned |" in table and "Holm over 2 ratios" in table
    rows = {r["candidate"]: r for r in t.rows()}
    assert rows["pruned"]["resolved"] and "ratio" not in rows["dense"]
    said = t.findings().splitlines()
    assert said[0].startswith("- twin against dense: **not resolved**") and "faster" not in said[0]
    assert said[1].startswith("- pruned is **faster** than dense: time per call ratio 0.") and "Holm over 2, 12 rounds" in said[1]
    with pytest.raises(ValueError, match="reference"):
        compare_timings(fns, reference="other", clock=clock)


def test_forward_pass_times_a_model_and_leaves_its_mode_alone():
    from gnorm_kernels.evidence.timing import compare_latency
    from gnorm_kernels.testing import random_batches, tiny_random_model

    model = tiny_random_model("bert", num_layers=1, num_heads=2, seed=0)
    batches = random_batches(model, num_batches=1, batch_size=2, seed=0)
    model.train()
    t = compare_latency({"a": model, "b": model}, batches, rounds=3, resamples=50)
    assert t.seconds.shape == (3, 2) and (t.seconds > 0).all() and model.training


# --------------------------------------------------------------------------- progress bars


def test_progress_bars_follow_the_environment(monkeypatch):
    import tqdm.std

    from gnorm_kernels.progress import progress_bar, progress_mode

    monkeypatch.delenv("GNORM_PROGRESS", raising=False)
    assert progress_mode() == "text"
    bar = progress_bar(range(3), desc="x")
    assert type(bar) is tqdm.std.tqdm
    bar.close()
    monkeypatch.setenv("GNORM_PROGRESS", "off")
    bar = progress_bar(range(3))
    assert bar.disable and list(bar) == [0, 1, 2]
    monkeypatch.setenv("GNORM_PROGRESS", "loud")
    with pytest.raises(ValueError, match="GNORM_PROGRESS"):
        progress_bar(range(3))


def test_compare_means_pairs_the_examples_and_puts_the_seed_spread_in_the_interval():
    from gnorm_kernels.evidence.statistics import compare_means

    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.3, size=200)  # per-example values that vary a lot between examples
    values = {"a": base + 0.02, "b": base, "steady": np.stack([base] * 4), "spread": base + np.array([[-0.2], [0.2], [-0.2], [0.2]])}
    estimates, verdicts = compare_means(values, [("a", "b"), ("spread", "b")], resamples=1000)
    # alone, a and b overlap widely; paired, their constant gap of 0.02 is resolved with a narrow interval
    assert estimates["a"].low < estimates["b"].high
    gap = verdicts[("a", "b")]
    assert gap.resolved and gap.value == pytest.approx(0.02) and gap.high - gap.low < 1e-9 + 1e-6
    assert gap.comparisons == 2 and gap.correction == "Holm"
    # the same mean over seeds, but seeds that disagree: a wider interval than identical seeds
    assert estimates["spread"].value == pytest.approx(estimates["steady"].value)
    assert estimates["spread"].high - estimates["spread"].low > 1.5 * (estimates["steady"].high - estimates["steady"].low)
    with pytest.raises(ValueError, match="same examples"):
        compare_means({"a": base, "b": base[:10]}, [("a", "b")])
    with pytest.raises(KeyError, match="not in values"):
        compare_means({"a": base}, [("a", "zz")])


# --------------------------------------------------------------------------- fixed models' perplexity


def test_perplexity_evidence_gives_intervals_and_decides_paired_differences():
    from gnorm_kernels.evidence.statistics import perplexity_evidence

    rng = np.random.default_rng(0)
    tokens = rng.integers(20, 64, size=80)
    base = tokens * rng.uniform(3.0, 4.5, size=80)  # per-window NLL sums
    windows = {"dense": (base, tokens), "worse": (base + 0.3 * tokens, tokens),
               "twin": (base + rng.normal(0, 0.05, 80) * tokens, tokens)}
    estimates, verdicts = perplexity_evidence(windows, [("worse", "dense"), ("twin", "dense")], resamples=500)
    assert estimates["dense"].value == pytest.approx(np.exp(base.sum() / tokens.sum()))
    assert estimates["dense"].low < estimates["dense"].value < estimates["dense"].high
    worse = verdicts[("worse", "dense")]
    assert worse.value == pytest.approx(estimates["worse"].value - estimates["dense"].value)
    assert worse.resolved and worse.low > 0 and worse.comparisons == 2
    # the paired interval of a difference is narrower than either model's own interval
    assert worse.high - worse.low < estimates["dense"].high - estimates["dense"].low
    assert not verdicts[("twin", "dense")].resolved
    with pytest.raises(ValueError, match="other windows"):
        perplexity_evidence({"a": (base, tokens), "b": (base[:-1], tokens[:-1])}, [("a", "b")])
    with pytest.raises(ValueError, match="not among the models"):
        perplexity_evidence(windows, [("worse", "nobody")])


def test_decode_loop_decodes_the_same_tokens_every_call_and_measures_the_cache():
    import torch

    from gnorm_kernels.evidence.timing import DecodeLoop
    from gnorm_kernels.heads.pruning import prune_kv_groups
    from gnorm_kernels.models.loading import load_model

    model, _ = load_model("tiny-lm", progress=False)
    prompt = torch.randint(5, 40, (3, 12), generator=torch.Generator().manual_seed(0))
    loop = DecodeLoop(model, prompt, new_tokens=5)
    first, second = loop(), loop()
    assert first.shape == (3, 5) and torch.equal(first, second) and loop.cache.get_seq_length() == 12
    expected = model.generate(prompt, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert torch.equal(first, expected[:, 13:])  # the first new token comes from the prefill
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4  # K and V, float32
    assert loop.cache_bytes == 3 * 12 * per_token and loop.tokens_per_call == 15
    pruned = prune_kv_groups(copy.deepcopy(model), {i: [0] for i in range(config.num_hidden_layers)})
    assert DecodeLoop(pruned, prompt, 1).cache_bytes == loop.cache_bytes // config.num_key_value_heads
