"""Reliability of `gnorm` runs: killed runs resume to the uninterrupted result, one run per output
folder, resumes check what they resume, NaN models are named by step, Ctrl-C and SIGTERM keep the
progress for --resume, no pickle runs, read-only targets and local paths fail before any work."""

from __future__ import annotations

import copy
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gnorm_kernels.cli.commands import main
from gnorm_kernels.cli.outputs import CLIError, OutputFolder

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--task", "synthetic", "--calib-size", "32", "--eval-size", "64", "--quiet"]

# `gnorm` in a child process. TEST_STEP_DELAY slows every evaluation (so a test can act part way);
# TEST_KILL_AT_SAVE=N makes the N-th trajectory write stop half way and SIGKILL the process, as a
# power cut in the middle of writing a file would.
RUNNER = r"""
import os, signal, sys, time, types
import gnorm_kernels.engine.driver as greedy
import gnorm_kernels.engine.trajectory as trajectory

delay = float(os.environ.get("TEST_STEP_DELAY", "0"))
if delay:
    evaluate = greedy._evaluate
    def slow(*args, **kwargs):
        time.sleep(delay)
        return evaluate(*args, **kwargs)
    greedy._evaluate = slow

kill_at = int(os.environ.get("TEST_KILL_AT_SAVE", "0"))
if kill_at:
    real, calls = trajectory.json, []
    def dump(obj, f, **kwargs):
        calls.append(1)
        if len(calls) < kill_at:
            return real.dump(obj, f, **kwargs)
        text = real.dumps(obj, **kwargs)
        f.write(text[: len(text) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    trajectory.json = types.SimpleNamespace(dump=dump, dumps=real.dumps, loads=real.loads,
                                            JSONDecodeError=real.JSONDecodeError)

# Ctrl-C as in a terminal, even when the tests run in the background (where SIGINT is ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)
from gnorm_kernels.cli.commands import main
sys.exit(main(sys.argv[1:]))
"""


def _start(argv: list[str], **env: str) -> subprocess.Popen:
    environment = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", RUNNER, *argv], env=environment, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_steps(process: subprocess.Popen, checkpoint: Path, steps: int, timeout: float = 400) -> None:
    """Until `checkpoint` records `steps` steps after step 0 (or the process ends)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert process.poll() is None, f"the run ended early: {process.communicate()}"
        try:
            if len(json.loads(checkpoint.read_text())["steps"]) > steps:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"{checkpoint} did not reach {steps} steps in {timeout} s")


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _hidden_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def _assert_same_run(a: Path, b: Path) -> None:
    """Two trajectory files: same order, same metrics and sizes per step, same score grids."""
    x, y = json.loads(a.read_text()), json.loads(b.read_text())
    assert [s["pruned"] for s in x["steps"]] == [s["pruned"] for s in y["steps"]]
    assert x["complete"] and y["complete"] and x["budget"] == y["budget"]
    for s, t in zip(x["steps"], y["steps"]):
        assert (s["metrics"] is None) == (t["metrics"] is None)
        if s["metrics"] is not None:
            assert s["metrics"] == pytest.approx(t["metrics"], rel=1e-6)
        assert (s["params"], s["size_mb"]) == (t["params"], t["size_mb"])
        if s["scores"] is not None:
            nan = float("nan")
            torch.testing.assert_close(torch.tensor([[nan if v is None else v for v in r] for r in s["scores"]]),
                                       torch.tensor([[nan if v is None else v for v in r] for r in t["scores"]]),
                                       equal_nan=True, rtol=1e-5, atol=0)
    assert x["settings"] == y["settings"]


# --------------------------------------------------------------------------- killed runs resume


def test_a_killed_prune_resumes_to_the_uninterrupted_result_and_locks_its_folder(model_dir, tmp_path, capsys):
    argv = ["prune", "--model", model_dir, *SMALL, "--ratio", "1.0"]
    out = tmp_path / "runs" / "run"
    partial, lock = out.parent / ".run.partial", out.parent / ".run.lock"
    process = _start([*argv, "--out", str(out)], TEST_STEP_DELAY="1.0")
    reference = tmp_path / "reference"
    assert main([*argv, "--out", str(reference)]) == 0  # meanwhile, the same run uninterrupted
    capsys.readouterr()
    seed = random.randrange(10**6)
    kill_after = random.Random(seed).randint(1, 6)  # of the 8 steps
    _wait_for_steps(process, partial / "trajectory.json", 1)

    # a second run on the same folder fails at once and touches nothing
    before = {p.name: p.stat().st_mtime_ns for p in partial.iterdir()}
    for extra in ([], ["--force"], ["--resume"]):
        with pytest.raises(SystemExit) as err:
            main(["prune", "--model", "/nonexistent", *SMALL, "--out", str(out), *extra])
        message = capsys.readouterr().err
        assert err.value.code == 2 and f"another gnorm run (pid {process.pid}) is writing" in message, message
    assert partial.is_dir() and set(before) <= {p.name for p in partial.iterdir()}

    _wait_for_steps(process, partial / "trajectory.json", kill_after)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    saved = json.loads((partial / "trajectory.json").read_text())
    assert not out.exists() and lock.exists() and not saved["complete"], f"seed {seed}"
    killed_at = len(saved["steps"])

    # without --resume the progress is neither lost nor silently restarted
    with pytest.raises(SystemExit) as err:
        main([*argv, "--out", str(out)])
    assert err.value.code == 2 and "--resume" in capsys.readouterr().err
    assert json.loads((partial / "trajectory.json").read_text()) == saved

    # --resume takes over the stale lock and carries on from the last finished step
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr()
    assert f"from step {killed_at - 1}" in printed.err, printed.err
    _assert_same_run(out / "trajectory.json", reference / "trajectory.json")
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "mask.png", "model", "trajectory.json"]
    assert _leftovers(out.parent) == [] and _hidden_files(out) == [], f"seed {seed}"


def test_a_compare_killed_while_writing_a_trajectory_resumes_to_the_same_result(model_dir, tmp_path, capsys):
    argv = ["compare", "--model", model_dir, *SMALL, "--methods", "greedy-gnorm,random", "--random-seeds", "2",
            "--ratio", "0.5"]
    reference = tmp_path / "reference"
    assert main([*argv, "--out", str(reference)]) == 0
    capsys.readouterr()

    out = tmp_path / "cmp"
    # each method writes its trajectory once at the start and after each of its 4 steps, then once
    # more with the run's settings: 3 runs x 6 writes; stop in the middle of one of them
    seed = random.randrange(10**6)
    kill_at = random.Random(seed).randint(1, 18)
    process = _start([*argv, "--out", str(out)], TEST_KILL_AT_SAVE=str(kill_at))
    process.wait(timeout=600)
    assert process.returncode == -signal.SIGKILL, process.communicate()
    partial = tmp_path / ".cmp.partial"
    assert [p.name for p in partial.rglob(".*.tmp")], f"no half-written file (seed {seed}, write {kill_at})"

    saved = [p for p in partial.rglob("*.json") if not p.name.startswith(".")]  # none if killed in the first write
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert ("resuming" in capsys.readouterr().err) == bool(saved), f"seed {seed}, write {kill_at}"
    names = sorted(p.name for p in (out / "trajectories").iterdir())
    assert names == ["greedy-gnorm.json", "random-seed0.json", "random-seed1.json"]
    for name in names:
        _assert_same_run(out / "trajectories" / name, reference / "trajectories" / name)
    assert (out / "table.csv").read_text() == (reference / "table.csv").read_text()
    assert _leftovers(tmp_path) == [] and _hidden_files(out) == [], f"seed {seed}"


def test_ctrl_c_and_sigterm_keep_the_finished_steps_for_resume(model_dir, tmp_path, capsys):
    """SIGINT (Ctrl-C) or SIGTERM after 2 finished steps of a fresh `gnorm prune`: the partial
    folder stays (the lock goes), one line says where and how to continue, the exit status is
    128 + the signal, and --resume reaches the trajectory of an uninterrupted run."""
    argv = ["prune", "--model", model_dir, *SMALL, "--ratio", "1.0"]
    runs = {}
    for sig in (signal.SIGINT, signal.SIGTERM):  # side by side
        out = tmp_path / sig.name / "run"
        runs[sig] = (out, _start([*argv, "--out", str(out)], TEST_STEP_DELAY="1.0"))  # 8 steps of at least 1 s
    reference = tmp_path / "reference"
    assert main([*argv, "--out", str(reference)]) == 0  # meanwhile, the same run uninterrupted
    capsys.readouterr()
    for sig, (out, process) in runs.items():
        _wait_for_steps(process, out.parent / ".run.partial" / "trajectory.json", 2)
        process.send_signal(sig)
    for sig, (out, process) in runs.items():
        _, err = process.communicate(timeout=120)
        partial = out.parent / ".run.partial"
        assert process.returncode == 128 + sig, err
        again = shlex.join(["gnorm", *argv, "--out", str(out), "--resume"])
        assert err.strip().splitlines()[-1] == (
            f"gnorm prune: interrupted by {sig.name}; progress kept in {partial}; continue with: {again}"), err
        assert "Traceback" not in err, err
        assert _leftovers(out.parent) == [".run.partial"] and not out.exists(), sig.name  # no lock left
        saved = json.loads((partial / "trajectory.json").read_text())
        assert len(saved["steps"]) >= 3 and not saved["complete"]
        assert main([*argv, "--out", str(out), "--resume"]) == 0
        assert f"from step {len(saved['steps']) - 1}" in capsys.readouterr().err
        _assert_same_run(out / "trajectory.json", reference / "trajectory.json")
        assert _leftovers(out.parent) == [] and _hidden_files(out) == [], sig.name


def test_a_stop_before_any_progress_leaves_nothing(tmp_path, capsys):
    """Ctrl-C before a run wrote anything: nothing to resume, so nothing is left."""
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as stop:
        with OutputFolder(out, resume=False, command="prune"):
            raise KeyboardInterrupt
    assert getattr(stop.value, "kept", None) is None and list(tmp_path.iterdir()) == []


def _simulate_a_kill(monkeypatch, steps: int) -> None:
    """The next `gnorm` run stops after `steps` steps and leaves everything as SIGKILL would."""
    import gnorm_kernels.engine.driver as greedy

    real = greedy.run_method

    def killed(*args, **kwargs):
        real(*args, **{**kwargs, "max_steps": steps})
        raise KeyboardInterrupt

    monkeypatch.setattr(greedy, "run_method", killed)
    monkeypatch.setattr(OutputFolder, "discard", lambda self: self._lock.release())


def test_resume_refuses_another_model_or_evaluation_set_and_keeps_the_progress(model_dir, tmp_path, capsys):
    from gnorm_kernels.models.loading import load_model

    out = tmp_path / "run"
    argv = ["prune", "--model", model_dir, *SMALL, "--ratio", "0.5", "--out", str(out)]
    with pytest.MonkeyPatch.context() as patch:
        _simulate_a_kill(patch, 2)
        with pytest.raises(SystemExit):
            main(argv)
    partial = tmp_path / ".run.partial"
    saved = (partial / "trajectory.json").read_text()
    capsys.readouterr()

    other = tmp_path / "other-model"
    model, tokenizer = load_model(model_dir, progress=False)
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight[0, 0] += 1e-3
    model.save_pretrained(other)
    tokenizer.save_pretrained(other)
    for change, message in (([argv[0], "--model", str(other), *argv[3:]], "the model's weights changed"),
                            ([*argv, "--eval-size", "48"], "the evaluation set changed"),
                            ([*argv, "--max-length", "16"], "the calibration set changed")):
        with pytest.raises(SystemExit) as err:
            main([*change, "--resume"])
        printed = capsys.readouterr().err
        assert err.value.code == 2 and message in printed, printed
        assert (partial / "trajectory.json").read_text() == saved  # still there for the right resume
    assert main([*argv, "--resume"]) == 0
    assert json.loads((out / "trajectory.json").read_text())["complete"] and _leftovers(tmp_path) == []


def test_the_api_resume_checks_weights_and_evaluation_data(tmp_path):
    from gnorm_kernels.engine.driver import greedy_prune
    from gnorm_kernels.engine.resume import ResumeMismatch
    from gnorm_kernels.testing import random_batches, tiny_random_model

    model = tiny_random_model("bert")
    calib, test = random_batches(model, num_batches=2, seed=1), random_batches(model, num_batches=2, seed=2)
    checkpoint = tmp_path / "run.json"
    greedy_prune(model, calib, test, checkpoint=checkpoint, max_steps=2, progress=False)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        next(changed.parameters())[0, 0] += 1e-4
    with pytest.raises(ResumeMismatch, match="the model's weights changed") as err:
        greedy_prune(changed, calib, test, checkpoint=checkpoint, progress=False)
    assert any("model_fingerprint" in d for d in err.value.differences)
    relabelled = [dict(b, labels=1 - b["labels"]) for b in test]  # same texts, other labels
    with pytest.raises(ValueError, match="the evaluation set changed"):
        greedy_prune(model, calib, relabelled, checkpoint=checkpoint, progress=False)
    assert greedy_prune(model, calib, test, checkpoint=checkpoint, progress=False).complete


# --------------------------------------------------------------------------- one run per folder


def test_one_run_per_folder_and_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    first = OutputFolder(out, resume=False)
    first.path("a.txt").write_text("first")
    with pytest.raises(CLIError, match=rf"another gnorm run \(pid {os.getpid()}\) is writing --out"):
        OutputFolder(out, force=True, resume=True)
    assert (first.tmp / "a.txt").read_text() == "first"
    first._lock.release()  # what the kernel does when a killed run's process dies
    (tmp_path / ".run.lock").write_text("12345")  # the lock file a killed run leaves
    second = OutputFolder(out, resume=True)
    assert second.resumed and (second.path("a.txt")).read_text() == "first"
    second.commit()
    assert (out / "a.txt").read_text() == "first" and _leftovers(tmp_path) == []


def test_a_folder_filled_by_something_else_keeps_the_outputs_where_the_message_says(model_dir, tmp_path,
                                                                                  monkeypatch, capsys):
    import gnorm_kernels.engine.driver as greedy

    out = tmp_path / "run"
    real = greedy.run_method

    def meanwhile(*args, **kwargs):
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")
        return real(*args, **kwargs)

    monkeypatch.setattr(greedy, "run_method", meanwhile)
    argv = ["prune", "--model", model_dir, *SMALL, "--steps", "1", "--out", str(out)]
    with pytest.raises(SystemExit) as err:
        main(argv)
    message = capsys.readouterr().err
    assert err.value.code == 2 and "filled up" in message
    left = Path(message.split("outputs left in ")[1].split(" ")[0])
    assert (left / "trajectory.json").is_file() and (left / "model").is_dir()
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    monkeypatch.setattr(greedy, "run_method", real)
    assert main([*argv, "--resume", "--force"]) == 0  # the finished run moves into place
    assert (out / "trajectory.json").is_file() and _leftovers(tmp_path) == []


def test_a_commit_killed_half_way_puts_the_earlier_run_back(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "earlier.txt").write_text("earlier")
    out.rename(tmp_path / ".run.old")  # killed between the two renames of a --force commit
    with pytest.raises(CLIError, match="already holds files"):
        OutputFolder(out, resume=False)
    assert (out / "earlier.txt").read_text() == "earlier" and _leftovers(tmp_path) == []


def _log_disk_events(monkeypatch) -> list[tuple[str, str]]:
    """Record ("fsync", path) and ("rename", destination) in the order they happen."""
    events: list[tuple[str, str]] = []
    fsync, replace, rename = os.fsync, os.replace, Path.rename

    def logged_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def logged_replace(src, dst):
        events.append(("rename", str(Path(dst).resolve())))
        return replace(src, dst)

    def logged_rename(self, target):
        events.append(("rename", str(Path(target).resolve())))
        return rename(self, target)

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    monkeypatch.setattr(Path, "rename", logged_rename)
    return events


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads open files' paths from /proc")
def test_writes_reach_the_disk_before_they_are_renamed_into_place(tmp_path, monkeypatch):
    """Power loss: a trajectory and a committed run are flushed before the rename that publishes
    them, and the folder holding the new name is flushed after it."""
    from gnorm_kernels.engine.trajectory import Trajectory

    events = _log_disk_events(monkeypatch)
    target = (tmp_path / "t.json").resolve()
    Trajectory(method="random", family="bert", num_layers=1, num_heads=2, greedy=False, prune_first="low",
               settings={}).save(target)
    kinds = [kind for kind, _ in events]
    renamed = kinds.index("rename")
    assert events[renamed] == ("rename", str(target))
    assert any(kind == "fsync" and Path(p).name.startswith(".t.json.") for kind, p in events[:renamed])
    assert ("fsync", str(tmp_path.resolve())) in events[renamed + 1:]

    events.clear()
    out = (tmp_path / "run").resolve()
    with OutputFolder(out, resume=False) as folder:
        folder.path("model", "weights.bin").write_bytes(b"w" * 100)
    published = events.index(("rename", str(out)))
    flushed = [Path(p).name for kind, p in events[:published] if kind == "fsync"]
    assert "weights.bin" in flushed and "model" in flushed
    assert ("fsync", str(tmp_path.resolve())) in events[published + 1:]
    assert (out / "model" / "weights.bin").read_bytes() == b"w" * 100


# --------------------------------------------------------------------------- calibration data


@pytest.mark.parametrize("method", ["greedy-gnorm", "entropy", "random"])
def test_an_all_padding_calibration_batch_is_an_error(method):
    """A batch whose attention_mask is 0 everywhere gives zero gradients: all-zero scores, then
    a prune in index order. It is refused, naming the batch, before any work."""
    from gnorm_kernels.engine.driver import run_method
    from gnorm_kernels.heads.families import head_layout
    from gnorm_kernels.scoring.gnorm import gnorm_scores
    from gnorm_kernels.testing import random_batches, tiny_random_model

    model = tiny_random_model("bert")
    calib = random_batches(model, num_batches=2, seed=1)
    calib[1] = {**calib[1], "attention_mask": torch.zeros_like(calib[1]["attention_mask"])}
    with pytest.raises(ValueError, match="calibration batch 1 has no real tokens: its attention_mask is 0 everywhere"):
        run_method(method, model, calib, None, progress=False)
    with pytest.raises(ValueError, match="calibration batch 1 has no real tokens"):
        gnorm_scores(model, calib)
    assert head_layout(model).pruned_heads() == {}


# --------------------------------------------------------------------------- non-finite models


def _nan_model(vocab_size: int = 99):
    from gnorm_kernels.testing import tiny_random_model

    model = tiny_random_model("bert", vocab_size=vocab_size)
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.self.query.weight[0, 0] = float("nan")
    return model


@pytest.mark.parametrize("method", ["greedy-gnorm", "static-gnorm", "entropy", "inverse-entropy", "taylor", "random"])
def test_every_driver_names_the_step_where_a_model_gives_nan(method):
    from gnorm_kernels.engine.driver import run_method
    from gnorm_kernels.testing import random_batches

    model = _nan_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib, test = random_batches(model, num_batches=2, seed=1), random_batches(model, num_batches=1, seed=2)
    with pytest.raises(FloatingPointError, match=rf"^{method}, step 0 \(the model as given\), evaluating: .*non-finite"):
        run_method(method, model, calib, test, progress=False)
    if method != "random":  # random scores never run the model
        with pytest.raises(FloatingPointError, match=rf"^{method}, step 1: .*(NaN|nan|non-finite)"):
            run_method(method, model, calib, None, progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k].nan_to_num(), after[k].nan_to_num()) for k in before)


def test_the_cli_reports_a_nan_model_in_words(tmp_path, capsys):
    from gnorm_kernels.data.synthetic import synthetic_tokenizer

    folder = tmp_path / "nan-model"
    tokenizer = synthetic_tokenizer()
    _nan_model(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for command in (["prune", "--method", "entropy"], ["compare", "--methods", "random,greedy-gnorm"]):
        with pytest.raises(SystemExit) as err:
            main([*command, "--model", str(folder), *SMALL, "--out", str(tmp_path / "out")])
        message = capsys.readouterr().err
        assert err.value.code == 1 and "step 0 (the model as given)" in message and "non-finite" in message
        assert "JSON compliant" not in message and "Traceback" not in message
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- what is good stays good


def test_no_pickle_ever_runs(model_dir, tmp_path, capsys):
    import pickle

    marker = tmp_path / "pickle-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "pickled"
    folder.mkdir()
    for file in Path(model_dir).iterdir():
        if file.suffix != ".safetensors":
            (folder / file.name).write_bytes(file.read_bytes())
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(SystemExit) as err:
        main(["prune", "--model", str(folder), *SMALL, "--out", str(tmp_path / "out")])
    assert err.value.code == 1 and "safetensors" in capsys.readouterr().err
    assert not marker.exists()


def test_read_only_targets_and_local_paths_fail_before_any_work(tmp_path, monkeypatch, capsys):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("a local path went to the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    targets = [a_file / "run"]  # beside a file
    if _cannot_create("/sys"):
        targets.append(Path("/sys/gnorm-run"))  # read-only even for root
    for out in targets:
        with pytest.raises(SystemExit) as err:
            main(["prune", "--model", str(tmp_path / "never-loaded"), *SMALL, "--out", str(out)])
        assert err.value.code == 2 and "cannot write beside --out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["prune", "--model", "./no-such-model", *SMALL, "--out", str(tmp_path / "run")])
    assert err.value.code == 1 and "does not exist" in capsys.readouterr().err
    assert a_file.read_text() == "x" and _leftovers(tmp_path) == []


def _cannot_create(folder: str) -> bool:
    try:
        os.mkdir(os.path.join(folder, f"gnorm-probe-{os.getpid()}"))
    except OSError:
        return True
    os.rmdir(os.path.join(folder, f"gnorm-probe-{os.getpid()}"))
    return False
