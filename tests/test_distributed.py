"""torch.distributed on the CPU: two gloo processes started by torchrun give what one process gives.

Two launches run in the background while the single-process references are computed here:
tests/dist_worker.py (every scorer on half the batches, greedy runs with and without an
interruption, FSDP2 scoring and masked greedy pruning, bad input) and a two-process `gnorm prune`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dist_worker as worker
import pytest
import torch

from gnorm_kernels.parallel import distributed

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 900  # seconds; the runs take about a minute on two idle cores
CLI_ARGS = ["prune", "--model", "tiny", "--task", "synthetic", "--ratio", "0.25", "--heads-per-step", "4",
            "--calib-size", "64", "--batch-size", "16", "--eval-size", "512", "--quiet"]


def _torchrun(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait(process: subprocess.Popen, log: Path) -> None:
    try:
        code = process.wait(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"torchrun did not finish in {LAUNCH_TIMEOUT} s:\n{log.read_text()[-4000:]}")
    assert code == 0, f"torchrun exited with {code}:\n{log.read_text()[-6000:]}"


@pytest.fixture(scope="module")
def launches(tmp_path_factory, tiny):
    """Both two-process runs, started at once (the tiny model is cached first, by `tiny`)."""
    root = tmp_path_factory.mktemp("dist")
    (root / "worker").mkdir()
    started = {
        "worker": _torchrun([str(ROOT / "tests" / "dist_worker.py"), str(root / "worker")], root / "worker.log"),
        "cli": _torchrun(["-m", "gnorm_kernels.cli.commands", *CLI_ARGS, "--out", str(root / "cli2")], root / "cli.log"),
    }
    yield root, started
    for process in started.values():
        if process.poll() is None:
            process.kill()


@pytest.fixture(scope="module")
def ranks(launches):
    """What rank 0 and rank 1 of the worker saved, and the worker's output folder."""
    root, started = launches
    _wait(started["worker"], root / "worker.log")
    out = root / "worker"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)], out


# --------------------------------------------------------------------------- data-parallel scoring


def test_every_rank_holds_the_same_global_scores(ranks):
    (first, second), _ = ranks
    assert first["world"] == second["world"] == 2
    keys = [k for k in first if isinstance(first[k], torch.Tensor)]
    assert len(keys) >= len(worker.SCORERS) + len(worker.FSDP_SCORERS)
    for key in keys:
        assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize("name", list(worker.SCORERS))
def test_scores_on_half_the_batches_each_equal_one_process_on_all(ranks, name):
    (first, _), _ = ranks
    for family in first["families"]:
        model, calibration, _ = worker.setup(family)
        expected = worker.score(model, calibration, name)
        got = first[f"{family}/{name}"]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7, msg=f"{family} {name}")
        assert torch.equal(torch.argsort(got.flatten()), torch.argsort(expected.flatten())), f"{family} {name}"


def test_each_score_reduces_with_one_collective(ranks):
    (first, _), _ = ranks
    for key, calls in first["collectives"].items():
        assert calls == (0 if key.endswith("random") else 1), key


# --------------------------------------------------------------------------- the greedy loop


def _single_process_greedy(setup, options, **kwargs):
    from gnorm_kernels.engine.driver import greedy_prune

    model, calibration, evaluation = setup()
    return greedy_prune(model, calibration, evaluation, **options, **kwargs)


def _same_run(got, expected) -> None:
    assert got.order == expected.order
    assert got.settings == expected.settings  # global counts and fingerprint of the data
    assert got.complete and len(got.steps) == len(expected.steps)
    for a, b in zip(got.steps, expected.steps):
        assert (a.params, a.encoder_params) == (b.params, b.encoder_params)
        assert a.metrics.keys() == b.metrics.keys()
        for key in a.metrics:
            assert a.metrics[key] == pytest.approx(b.metrics[key], rel=1e-5, abs=1e-7), key
        if b.scores is not None:
            torch.testing.assert_close(a.scores, b.scores, rtol=1e-5, atol=1e-7, equal_nan=True)


def test_two_process_greedy_takes_the_same_steps_and_resumes(ranks):
    from gnorm_kernels.engine.trajectory import Trajectory

    (first, _), out = ranks
    expected = _single_process_greedy(lambda: worker.setup("bert"), worker.GREEDY)
    assert len(expected.steps) > 2  # more than one step after the interruption
    _same_run(Trajectory.load(out / "greedy.json"), expected)
    assert first["interrupted_steps"] == 2  # step 0 and one step, then the run stopped
    _same_run(Trajectory.load(out / "resumed.json"), expected)


# --------------------------------------------------------------------------- FSDP2


@pytest.mark.parametrize("name", worker.FSDP_SCORERS)
def test_fsdp_scores_equal_the_unsharded_model(ranks, name):
    (first, _), _ = ranks
    model, calibration, _ = worker.fsdp_setup()
    assert model.config.hidden_size == 18 and model.config.num_attention_heads == 3
    # 18 rows over two ranks: rows 0-8 and 9-17, so head 1 (rows 6-11) straddles the shards
    torch.testing.assert_close(first[f"fsdp/{name}"], worker.score(model, calibration, name), rtol=1e-5, atol=1e-8)


def test_fsdp_greedy_masks_heads_and_saves_a_checkpoint_one_process_reloads(ranks):
    from gnorm_kernels.checkpoints.pruned import load_pruned
    from gnorm_kernels.engine.trajectory import Trajectory
    from gnorm_kernels.heads.families import head_layout

    (first, _), out = ranks
    got = Trajectory.load(out / "fsdp.json")
    _same_run(got, _single_process_greedy(worker.fsdp_setup, worker.FSDP_GREEDY))
    reloaded = load_pruned(out / "fsdp_model")
    assert sorted((l, h) for l, hs in head_layout(reloaded).pruned_heads().items() for h in hs) == sorted(got.order)
    batch = worker.fsdp_setup()[2][0]
    with torch.no_grad():
        logits = reloaded(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.testing.assert_close(logits, first["fsdp/masked_logits"], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("key, message", [
    ("error/models", "DistributedError: ranks hold different models or settings"),
    ("error/too_few", "DistributedError: 1 calibration batches cannot be shared by 2 processes"),
    ("error/seeds", "DistributedError: ranks hold different random_scores seeds"),
    ("error/sharded_twice", "ValueError: the model is already sharded"),
])
def test_bad_input_is_an_error_on_every_rank(ranks, key, message):
    (first, second), _ = ranks
    assert first[key].startswith(message) and second[key].startswith(message), (first[key], second[key])


def test_a_backend_that_cannot_run_on_the_device_is_refused(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    if not torch.cuda.is_available():
        with pytest.raises(distributed.DistributedError, match="CUDA is not available"):
            distributed.init_from_env("cuda")
    with pytest.raises(distributed.DistributedError, match="cpu .gloo. or cuda .nccl."):
        distributed.init_from_env("meta")
    monkeypatch.delenv("RANK")
    assert distributed.init_from_env("cpu") is False  # not started by torchrun: nothing to do


def test_fsdp_needs_torch_distributed(tmp_path, capsys):
    from gnorm_kernels.cli import commands as cli
    from gnorm_kernels.parallel import fsdp
    from gnorm_kernels.testing import tiny_random_model

    with pytest.raises(distributed.DistributedError, match="torchrun"):
        fsdp.shard_model(tiny_random_model("bert"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*CLI_ARGS, "--fsdp", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "--fsdp shards the model across processes: start the command with torchrun" in capsys.readouterr().err


def test_shards_are_round_robin_and_gathered_back_in_order():
    items = list(range(7))
    assert distributed.shard(items) == items  # one process: everything
    assert distributed.gather_shards(items) == items
    assert distributed.mean_over_ranks(torch.tensor([6.0]), 3).item() == 2.0


# --------------------------------------------------------------------------- the command line


def test_two_process_gnorm_prune_writes_what_one_process_writes(launches, tmp_path):
    from safetensors.torch import load_file

    from gnorm_kernels.cli import commands as cli

    assert cli.main([*CLI_ARGS, "--out", str(tmp_path / "cli1")]) == 0  # meanwhile the launches run
    root, started = launches
    _wait(started["cli"], root / "cli.log")
    one, two = tmp_path / "cli1", root / "cli2"
    assert sorted(p.relative_to(one).as_posix() for p in one.rglob("*")) == \
        sorted(p.relative_to(two).as_posix() for p in two.rglob("*"))
    assert not list(root.glob(".cli2.*"))  # the other rank's checked copy of --out is gone
    a, b = (json.loads((path / "trajectory.json").read_text()) for path in (one, two))
    assert a["settings"] == b["settings"]
    assert [s["pruned"] for s in a["steps"]] == [s["pruned"] for s in b["steps"]]
    assert len(a["steps"]) == 3  # 8 of 32 heads, 4 per step
    for sa, sb in zip(a["steps"], b["steps"]):
        assert sa["metrics"] == pytest.approx(sb["metrics"], rel=1e-5)
    weights = [load_file(path / "model" / "model.safetensors") for path in (one, two)]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
