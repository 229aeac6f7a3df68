"""The `gnorm` command line: prune, compare, ablate, grain's wiring, output-folder safety, a light --help."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gnorm_kernels.checkpoints.pruned import load_pruned
from gnorm_kernels.cli.commands import METHOD_NAMES, build_parser, main
from gnorm_kernels.cli.outputs import CLIError, OutputFolder

SMALL = ["--task", "synthetic", "--calib-size", "32", "--eval-size", "64", "--quiet"]


def _leftovers(parent):
    """What a run may leave beside --out: partial folders, replaced runs, lock files."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".") and
            (".partial" in p.name or ".old" in p.name or p.name.endswith(".lock"))]


def test_prune_writes_trajectory_plots_and_a_loadable_pruned_model(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["prune", "--model", model_dir, *SMALL, "--method", "greedy-gnorm", "--ratio", "0.25",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "mask.png", "model", "trajectory.json"]
    data = json.loads((out / "trajectory.json").read_text())
    assert data["method"] == "greedy-gnorm" and data["units_total"] == 8 and data["complete"]
    assert len(data["steps"]) == 3 and all(len(s["pruned"]) == 1 for s in data["steps"][1:])
    model = load_pruned(out / "model")
    gone = {tuple(h) for s in data["steps"] for h in s["pruned"]}
    assert {(int(l), h) for l, hs in model.config.pruned_heads.items() for h in hs} == gone
    assert "pruned 2 of 8 heads" in capsys.readouterr().out
    assert not _leftovers(tmp_path)


def test_compare_writes_one_plot_one_table_and_every_trajectory(model_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--model", model_dir, *SMALL, "--methods", "greedy-gnorm,entropy,random",
                 "--random-seeds", "2", "--out", str(out)]) == 0
    names = sorted(p.name for p in (out / "trajectories").iterdir())
    assert names == ["entropy.json", "greedy-gnorm.json", "random-seed0.json", "random-seed1.json"]
    for f in ("accuracy.png", "masks.png", "table.md"):
        assert (out / f).stat().st_size > 0
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert [r["method"] for r in rows] == ["greedy-gnorm", "entropy", "random"]
    assert {"at_25%", "at_50%", "at_75%", "auc", "auc_min", "auc_max"} <= set(rows[0])
    assert rows[2]["runs"] == "2" and rows[0]["auc_min"] == ""
    for r in rows:
        assert 0.0 <= float(r["auc"]) <= 1.0 and 0.0 <= float(r["at_50%"]) <= 1.0
    printed = capsys.readouterr().out
    assert "| method |" in printed and "random (median of 2)" in printed


def test_ablate_prints_a_layers_by_heads_table(model_dir, capsys):
    assert main(["ablate", "--model", model_dir, *SMALL]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split() == ["layer", "h0", "h1", "h2", "h3"]
    assert [line.split()[0] for line in lines[2:]] == ["0", "1"]


def test_a_bad_out_fails_before_any_work_and_keeps_earlier_files(model_dir, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    with pytest.raises(SystemExit) as err:
        main(["prune", "--model", "/nonexistent/model", *SMALL, "--out", str(a_file)])
    assert err.value.code == 2 and "is a file" in capsys.readouterr().err
    assert a_file.read_text() == "keep me"

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "trajectory.json").write_text("{}")
    with pytest.raises(SystemExit) as err:
        main(["prune", "--model", "/nonexistent/model", *SMALL, "--out", str(earlier)])
    assert err.value.code == 2 and "--force" in capsys.readouterr().err
    # a run that fails part way (here: the model cannot be loaded) leaves the old files alone
    with pytest.raises(SystemExit) as err:
        main(["prune", "--model", str(tmp_path / "missing"), *SMALL, "--out", str(earlier), "--force"])
    assert err.value.code == 1 and "missing does not exist" in capsys.readouterr().err
    assert (earlier / "trajectory.json").read_text() == "{}" and not _leftovers(tmp_path)
    # with --force a finished run replaces the folder
    assert main(["prune", "--model", model_dir, *SMALL, "--steps", "1", "--out", str(earlier), "--force"]) == 0
    assert json.loads((earlier / "trajectory.json").read_text())["steps"][1]["pruned"]
    assert not _leftovers(tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--method", "magnitude"], "unknown method"),
    (["--ratio", "1.5"], "--ratio must be in [0, 1]"),
    (["--calib-size", "0"], "--calib-size must be >= 1"),
])
def test_bad_arguments_exit_with_a_clear_message(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as err:
        main(["prune", "--model", "/nonexistent", "--out", str(tmp_path / "x"), *args])
    assert err.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not _leftovers(tmp_path)


def test_too_many_steps_is_reported_without_a_traceback(model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["prune", "--model", model_dir, *SMALL, "--steps", "9", "--out", str(tmp_path / "x")])
    assert err.value.code == 1 and "steps=9 is more" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not _leftovers(tmp_path)


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("prune", "compare", "ablate", "grain"):
        assert command in text


def test_grain_is_a_subcommand_run_by_the_grain_package(monkeypatch):
    from gnorm_kernels.cli import grain as grain_cli

    learning_rates = []

    def fake_run(args):
        learning_rates.append(args.lr)
        return 0

    monkeypatch.setattr(grain_cli, "run", fake_run)
    # gnorm's handler fills in the learning rate (GRAIN's own, the tiny model's) and hands over
    for argv, lr in ((["grain", "--model", "elsewhere"], 3e-5), (["grain"], 1e-3), (["grain", "--lr", "0.5"], 0.5)):
        args = build_parser().parse_args(argv)
        assert args.command == "grain" and args.steps == 1500
        assert args.handler(args) == 0 and learning_rates[-1] == lr


@pytest.mark.parametrize("argv", [["--help"], ["prune", "--help"], ["compare", "--help"], ["grain", "--help"]])
def test_help_does_not_import_torch(argv):
    code = (
        "import sys\n"
        "from gnorm_kernels.cli.commands import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print(sorted(m for m in ('torch', 'transformers', 'gnorm_kernels.scoring.registry') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_help_lists_the_registered_methods():
    from gnorm_kernels.scoring.registry import METHODS

    assert METHOD_NAMES == tuple(METHODS)
    compare = build_parser().parse_args(["compare", "--out", "x"])
    assert compare.methods == ",".join(METHODS)


def test_the_grain_implementations_are_the_ones_grain_has():
    from gnorm_kernels.cli.grain import GRAIN_IMPLEMENTATIONS
    from gnorm_kernels.grain.attention import DEFAULT_IMPL, IMPLEMENTATIONS

    assert GRAIN_IMPLEMENTATIONS == IMPLEMENTATIONS and build_parser().parse_args(["grain"]).impl == DEFAULT_IMPL


def test_output_folder_commits_on_success_and_discards_on_error(tmp_path):
    with OutputFolder(tmp_path / "ok") as folder:
        folder.path("sub", "a.txt").write_text("a")
        assert not (tmp_path / "ok").exists()
    assert (tmp_path / "ok" / "sub" / "a.txt").read_text() == "a"
    with pytest.raises(RuntimeError), OutputFolder(tmp_path / "ok", force=True) as folder:
        folder.path("b.txt").write_text("b")
        raise RuntimeError("failed half way")
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["sub"] and not _leftovers(tmp_path)
    with pytest.raises(CLIError, match="--force"):
        OutputFolder(tmp_path / "ok")
    # a folder that fills up while the run goes keeps it, and its outputs stay where the message says
    with pytest.raises(CLIError, match="filled up") as err, OutputFolder(tmp_path / "late") as folder:
        folder.path("c.txt").write_text("c")
        (tmp_path / "late").mkdir()
        (tmp_path / "late" / "other.txt").write_text("theirs")
    assert (folder.tmp / "c.txt").read_text() == "c" and str(folder.tmp) in str(err.value)
    assert [p.name for p in (tmp_path / "late").iterdir()] == ["other.txt"]


def test_an_interrupted_run_leaves_no_partial_output(model_dir, tmp_path, monkeypatch, capsys):
    import gnorm_kernels.engine.driver as greedy

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(greedy, "run_method", interrupted)
    with pytest.raises(SystemExit) as err:
        main(["prune", "--model", model_dir, *SMALL, "--out", str(tmp_path / "run")])
    assert err.value.code == 130 and "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not _leftovers(tmp_path)


# --------------------------------------------------------------------------- model, tokenizer and labels agree

FILM_WORDS = "the film was good but the plot was dull and the acting was great".split()


def _csv(path, labels, words=8):
    rows = [f"{' '.join(FILM_WORDS[(i + j) % len(FILM_WORDS)] for j in range(words))} {i},{label}"
            for i, label in enumerate(labels)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return str(path)


def test_new_head_is_needed_for_other_classes_and_is_stated(model_dir, tmp_path, capsys):
    three = _csv(tmp_path / "three.csv", ["a", "b", "c"] * 20)
    argv = ["prune", "--model", model_dir, "--task", three, "--quiet", "--steps", "1"]
    with pytest.raises(SystemExit) as err:
        main([*argv, "--out", str(tmp_path / "no")])
    message = capsys.readouterr().err
    assert err.value.code == 2 and "'a', 'b', 'c'" in message and "--new-head" in message
    assert main([*argv, "--new-head", "--out", str(tmp_path / "yes")]) == 0
    assert "new, untrained one for the task's 3 classes (a, b, c)" in capsys.readouterr().err
    assert json.loads((tmp_path / "yes" / "trajectory.json").read_text())["settings"]["new_head"] is True
    saved = load_pruned(tmp_path / "yes" / "model")
    assert saved.config.num_labels == 3 and saved.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_a_tokenizer_can_be_given_apart_from_the_model(model_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((Path(model_dir) / name).read_bytes())
    argv = ["ablate", "--model", str(bare), *SMALL]
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 1 and "no tokenizer files" in capsys.readouterr().err
    assert main([*argv, "--tokenizer", model_dir]) == 0


def test_max_length_never_passes_the_model_positions(model_dir, tmp_path, capsys):
    long_texts = _csv(tmp_path / "long.csv", [0, 1] * 20, words=100)  # 100 words: past the 64 positions
    argv = ["prune", "--model", model_dir, "--task", long_texts, "--quiet", "--steps", "1"]
    assert main([*argv, "--out", str(tmp_path / "default")]) == 0  # the default 128 would crash
    assert "positions" not in capsys.readouterr().err  # the default fits the model without a note
    assert main([*argv, "--max-length", "500", "--out", str(tmp_path / "asked")]) == 0
    assert "--max-length 500 is more than the model's 64 positions; using 64" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--device", "gpu"], "--device 'gpu' is not a torch device"),
    (["--device", "cuda:7"], "--device cuda:7: "),
    (["--task", "LABELS_0_1000"], "class ids [1000] outside the model's 2 classes"),
])
def test_bad_devices_and_labels_fail_before_any_work(model_dir, tmp_path, capsys, extra, message):
    if "LABELS_0_1000" in extra:
        extra = ["--task", _csv(tmp_path / "far.csv", [0, 1000] * 10)]
    with pytest.raises(SystemExit) as err:
        main(["prune", "--model", model_dir, *SMALL, *extra, "--out", str(tmp_path / "x")])
    assert err.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not _leftovers(tmp_path)


def test_a_classification_task_on_a_causal_lm_says_which_tasks_fit(tmp_path, capsys):
    """A causal LM reads labels through verdict words: `--task synthetic` (class ids) is refused
    before any work, naming the tasks that fit, instead of an internal key error at evaluation."""
    from gnorm_kernels.cli.load import _check_fits_causal_lm
    from gnorm_kernels.data.lm_tasks import lm_tokenizer, synthetic_lm_task
    from gnorm_kernels.testing import tiny_random_model

    tokenizer = lm_tokenizer()
    model = tiny_random_model("llama", vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    with pytest.raises(SystemExit) as err:
        main(["prune", "--model", str(tmp_path / "lm"), *SMALL, "--out", str(tmp_path / "run")])
    message = capsys.readouterr().err
    assert err.value.code == 2 and "--task synthetic is a classification task" in message, message
    assert 'tasks that fit it: "synthetic-lm"' in message and "label_token_ids" not in message
    assert not (tmp_path / "run").exists() and not _leftovers(tmp_path)
    _check_fits_causal_lm(synthetic_lm_task(train_size=1, calibration_size=4, test_size=4), tokenizer, "lm")


def test_the_task_defaults_to_the_one_the_offline_model_learned():
    import argparse

    from gnorm_kernels.cli.commands import DEFAULT_TASKS, _check_args

    def checked(**flags):
        base = dict(model="tiny", task=None, calib_data=None, eval_data=None, calib_size=None, batch_size=None,
                    eval_size=None, default_eval_size=500, max_length=None, preset=None)
        args = argparse.Namespace(**{**base, **flags})
        _check_args(args)
        return args.task

    assert checked(model="tiny-aspects") == "aspects" and checked(model="tiny-lm") == "synthetic-lm"
    assert checked(model="some/hub-model") == "synthetic" and checked(model="tiny-aspects", task="glue/sst2") == "glue/sst2"
    assert set(DEFAULT_TASKS) == {"tiny", "tiny-aspects", "tiny-lm"}
