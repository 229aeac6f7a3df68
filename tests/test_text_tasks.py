"""Text-only tasks for causal LMs: files of documents in every format, windows of tokens,
perplexity through evaluate, the drivers, trajectories, compare, plots, widgets and the CLI;
python-docs from the standard library. Fast: on `tiny-lm` and a random BERT folder."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gnorm_kernels.cli import main
from gnorm_kernels.data.loading import load_task
from gnorm_kernels.data.synthetic import synthetic_task
from gnorm_kernels.data.text import TextTask, pack_windows, python_docs_task, read_documents
from gnorm_kernels.engine.trajectory import Trajectory
from gnorm_kernels.evaluation import evaluate


@pytest.fixture(scope="module")
def lm():
    from gnorm_kernels.models.loading import load_model

    return load_model("tiny-lm", progress=False)


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    """Forty distinct film reviews of the grammar tiny-lm was trained on."""
    texts = [ex.text for ex in synthetic_task(seed=3, train_size=1, calibration_size=60, test_size=1).splits["calibration"]]
    return list(dict.fromkeys(texts))[:40]


def _write(folder: Path, kind: str, texts: list[str]) -> Path:
    path = folder / f"notes.{kind}"
    if kind == "txt":  # a document is a paragraph; the first one wraps over two lines
        first, *rest = texts
        half = len(first.split()) // 2
        wrapped = " ".join(first.split()[:half]) + "\n" + " ".join(first.split()[half:])
        path.write_text("\n\n".join([wrapped, *rest]) + "\n")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    else:
        with path.open("w", newline="") as f:
            writer = csv.writer(f, delimiter="\t" if kind == "tsv" else ",")
            writer.writerow(["id", "text"])
            writer.writerows([i, t] for i, t in enumerate(texts))
    return path


@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv", "tsv"])
def test_a_file_of_documents_without_labels_is_a_text_task(tmp_path, reviews, kind):
    path = _write(tmp_path, kind, reviews)
    task = load_task(path)
    assert isinstance(task, TextTask) and task.metric == "perplexity" and task.label_names == []
    docs = [ex.text for split in task.splits.values() for ex in split]
    assert len(docs) == len(reviews) and len(set(docs)) == len(docs)
    if kind == "txt":  # a paragraph is one document, its lines kept as written
        assert reviews[0].split() == next(d for d in docs if "\n" in d).split()
    else:
        assert sorted(docs) == sorted(reviews)
    test = {ex.text for ex in task.splits["test"]}
    assert test and task.splits["calibration"] and not test & {ex.text for ex in task.splits["calibration"]}
    assert load_task(path).splits == task.splits  # seeded: the same split again


def test_documents_are_packed_into_windows_of_max_length_tokens(lm, reviews):
    _, tokenizer = lm
    batches = pack_windows(reviews[:10], tokenizer, max_length=16, batch_size=4)
    stream = [i for r in reviews[:10] for i in tokenizer(r)["input_ids"]]  # tiny-lm adds [BOS] to each
    ids = torch.cat([b["input_ids"][b["attention_mask"].bool()] for b in batches]).tolist()
    assert ids == stream  # every token once, in order
    widths = [int(n) for b in batches for n in b["attention_mask"].sum(1)]
    assert all(w == 16 for w in widths[:-1]) and 1 < widths[-1] <= 16
    limited = pack_windows(reviews, tokenizer, max_length=16, batch_size=4, limit=5)
    assert sum(len(b["input_ids"]) for b in limited) == 5


def test_a_paragraph_per_document_and_clear_errors(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("a single line\nand another line of the same paragraph\n")
    assert read_documents(path) == ["a single line\nand another line of the same paragraph"]
    with pytest.raises(ValueError, match="at least 2 distinct documents.*blank lines"):
        load_task(path)


def test_per_window_nll_gives_the_perplexity(lm, reviews):
    model, tokenizer = lm
    batches = pack_windows(reviews, tokenizer, max_length=24, batch_size=8)
    result = evaluate(model, batches, metric="perplexity", per_example=True)
    assert result["score"] == result["perplexity"]
    assert len(result["example_nll"]) == sum(len(b["input_ids"]) for b in batches)
    assert sum(result["example_tokens"]) == result["tokens"]
    assert math.isclose(math.exp(sum(result["example_nll"]) / sum(result["example_tokens"])), result["perplexity"],
                        rel_tol=1e-9)
    assert 1 < result["perplexity"] < len(tokenizer) / 2  # well below a uniform guess over its vocabulary


@pytest.fixture(scope="module")
def text_runs(lm, reviews):
    from gnorm_kernels.engine.driver import run_method

    model, tokenizer = lm
    task = TextTask("reviews", {"train": [], "calibration": [], "test": []})
    calibration = pack_windows(reviews[:20], tokenizer, max_length=32, batch_size=8)
    evaluation = pack_windows(reviews[20:], tokenizer, max_length=32, batch_size=8)
    assert task.metric == "perplexity"
    return {m: run_method(m, model, calibration, evaluation, metric="perplexity", unit="kv_group", steps=3,
                          per_example=True, progress=False, seed=0) for m in ("greedy-gnorm", "random")}


def test_trajectories_record_perplexity_and_its_windows(text_runs, tmp_path):
    t = text_runs["greedy-gnorm"]
    assert all(s.perplexity is not None and s.predictions is not None for s in t.steps)
    # text alone: each window's NLL sum and token count, from which the step's perplexity follows
    assert all(math.isclose(math.exp(sum(s.predictions) / sum(s.golds)), s.perplexity, rel_tol=1e-6) for s in t.steps)
    assert t.steps[-1].perplexity > t.steps[0].perplexity  # 3 of 8 KV groups gone: worse
    t.save(tmp_path / "t.json")
    again = Trajectory.load(tmp_path / "t.json")
    assert again.steps[2].predictions == t.steps[2].predictions
    assert again.steps[2].golds == t.steps[2].golds
    xs, ys = t.curve("perplexity")
    expected = np.sum((xs[1:] - xs[:-1]) * (np.log(ys[1:]) + np.log(ys[:-1])) / 2) / xs[-1]
    assert math.isclose(t.area_under_curve("perplexity"), expected)  # AUC of log-perplexity


def test_compare_bootstraps_perplexity_over_windows(text_runs):
    from gnorm_kernels.evidence.comparison import Comparison, bootstrap_evidence

    runs = {m: [t] for m, t in text_runs.items()}
    evidence = bootstrap_evidence(runs, metric="perplexity", budgets=[0.25], ranges=[], resamples=200)
    greedy = evidence.estimates["greedy-gnorm"]
    t = text_runs["greedy-gnorm"]
    assert math.isclose(greedy["unpruned"].value, t.steps[0].perplexity)
    assert greedy["unpruned"].low < greedy["unpruned"].value < greedy["unpruned"].high
    assert math.isclose(greedy["auc"].value, t.area_under_curve("perplexity"))
    assert greedy["auc"].low <= greedy["auc"].value <= greedy["auc"].high
    assert evidence.examples == len(t.steps[0].predictions)
    text = Comparison(runs, evidence).markdown()
    assert "AUC of log perplexity" in text and "evaluation windows" in text and "Lower perplexity is better" in text


def test_plots_and_widgets_read_perplexity(text_runs):
    from gnorm_kernels.evidence.viz import plot_accuracy_curves
    from gnorm_kernels.evidence.widgets import PruningExplorer

    figure = plot_accuracy_curves(text_runs, metric="perplexity")
    assert figure.axes[0].get_yscale() == "log"
    explorer = PruningExplorer(text_runs, draw=False)
    shown = explorer.set_ratio(1.0)
    assert shown["metric"] == "perplexity" and shown["score"] == text_runs["greedy-gnorm"].steps[-1].perplexity
    assert "perplexity" in explorer.summary.value and "× unpruned" in explorer.summary.value


SMALL = ["--steps", "2", "--calib-size", "4", "--eval-size", "6", "--max-length", "32", "--quiet"]


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_gnorm_prune_on_a_text_file_records_perplexity_at_every_step(tmp_path, reviews, kind, lm):
    path = _write(tmp_path, kind, reviews)
    out = tmp_path / "run"
    assert main(["prune", "--model", "tiny-lm", "--task", str(path), "--unit", "kv_group", *SMALL, "--out", str(out)]) == 0
    t = Trajectory.load(out / "trajectory.json")
    assert t.settings["metric"] == "perplexity" and len(t.steps) == 3
    assert all(s.metrics["perplexity"] > 1 for s in t.steps)


def test_gnorm_compare_with_calib_and_eval_text_files(tmp_path, reviews, lm):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    calib, held = _write(tmp_path / "a", "csv", reviews[:20]), _write(tmp_path / "b", "tsv", reviews[20:])
    out = tmp_path / "cmp"
    assert main(["compare", "--model", "tiny-lm", "--calib-data", str(calib), "--eval-data", str(held),
                 "--methods", "greedy-gnorm,random", "--random-seeds", "2", "--resamples", "100", "--unit", "kv_group",
                 "--metric", "perplexity", *SMALL, "--out", str(out)]) == 0
    table = (out / "table.md").read_text()
    assert "AUC of log perplexity" in table and "perplexity unpruned" in table


def test_tasks_that_do_not_fit_the_model_are_one_clear_line(tmp_path, reviews, model_dir, lm, capsys):
    text = _write(tmp_path, "txt", reviews)
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--model", model_dir, "--task", str(text), *SMALL, "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "fits a causal LM" in capsys.readouterr().err
    labelled = tmp_path / "labelled.csv"
    with labelled.open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *((r, i % 2) for i, r in enumerate(reviews))])
    with pytest.raises(SystemExit):
        main(["prune", "--model", "tiny-lm", "--task", str(labelled), *SMALL, "--out", str(tmp_path / "y")])
    assert "python-docs, a .txt file" in capsys.readouterr().err.replace('"', "")
    with pytest.raises(SystemExit):
        main(["prune", "--model", "tiny-lm", "--task", str(text), "--metric", "accuracy", *SMALL,
              "--out", str(tmp_path / "z")])
    assert "use --metric perplexity" in capsys.readouterr().err


def test_python_docs_is_deterministic_disjoint_prose():
    task = load_task("python-docs")
    again = python_docs_task()
    assert task.splits == again.splits and isinstance(task, TextTask)
    calibration = {ex.text for ex in task.splits["calibration"]}
    test = {ex.text for ex in task.splits["test"]}
    assert len(calibration) >= 100 and len(test) >= 100 and not calibration & test
    assert all(len(text.split()) >= 20 for text in calibration | test)
    assert load_task("python-docs", seed=1).splits["test"] != task.splits["test"]


def test_gnorm_ablate_on_text_reports_the_rise_in_perplexity(tmp_path, reviews, lm, capsys):
    path = _write(tmp_path, "txt", reviews)
    assert main(["ablate", "--model", "tiny-lm", "--task", str(path), "--eval-size", "4", "--max-length", "32",
                 "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("perplexity ") and "rise in perplexity" in lines[0]
    rises = [float(v) for line in lines[2:] for v in line.split()[1:]]
    assert len(rises) == 32 and max(rises) > 0  # some head matters: the model reads worse without it


def test_calibration_draws_of_a_text_task_count_windows(lm, reviews, tmp_path):
    from gnorm_kernels.evidence.calibration import calibration_draws

    _, tokenizer = lm
    task = load_task(_write(tmp_path, "jsonl", reviews))
    draws = calibration_draws(task, tokenizer, draws=3, size=5, batch_size=2, max_length=12)
    assert [[len(b["input_ids"]) for b in d] for d in draws] == [[2, 2, 1]] * 3  # 5 windows each, batches of 2
    windows = [torch.cat([b["input_ids"] for b in d]) for d in draws]
    assert all(w.shape == (5, 12) for w in windows)
    rows = {tuple(r.tolist()) for w in windows for r in w}
    assert len(rows) == 15  # disjoint
    first = torch.cat([b["input_ids"] for b in task.batches("calibration", tokenizer, max_length=12, limit=5)])
    assert torch.equal(windows[0], first)  # draw 0: the calibration split's first windows
    with pytest.raises(ValueError, match="windows of 12 tokens"):
        calibration_draws(task, tokenizer, draws=2, size=10_000, max_length=12)
