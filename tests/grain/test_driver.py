"""The grain_prune driver, scaled structures and `gnorm grain`."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from grain_helpers import small_model, two_layer_masks

from gnorm_kernels.grain import GrainStructure, UnevenSelfAttention, grain_prune, load_grain, unit_layout
from gnorm_kernels.testing import random_batches


def test_grain_prune_end_to_end_on_a_tiny_model():
    teacher = small_model("bert", num_layers=2)
    student = copy.deepcopy(teacher)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_state = {k: v.clone() for k, v in student.state_dict().items()}
    data = random_batches(teacher, num_batches=6, batch_size=4, seq_len=10)
    model, report = grain_prune(
        teacher, student, data, density=0.3, eval_data=data[:2], steps=30, lr=1e-3, progress=False,
        latency_batches=data[:1],
    )
    # the inputs are untouched
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k])
    for k, v in student.state_dict().items():
        assert torch.equal(v, student_state[k])
    assert report.density == pytest.approx(0.3, abs=0.01)
    assert report.masked_vs_shrunk < 1e-4
    assert report.encoder_params < 0.45 * report.encoder_params_dense
    assert report.accuracy is not None and report.latency_s is not None and report.speedup is not None
    assert any(isinstance(m, UnevenSelfAttention) for m in model.modules())
    assert report.structure.density() == pytest.approx(report.density)
    assert [h["step"] for h in report.history][-1] == 29
    # the student trained with dropout 0.1 (so the losses are not zero from the start) and the
    # shrunk model has the model's own dropout (0) back
    assert report.history[0]["loss_hidden"] > 0
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert "GRAIN at density 0.3" in str(report)
    # to_dict is the package's name; as_dict stays as its alias
    data = report.to_dict()
    assert report.as_dict() == data and json.loads(json.dumps(data)) == data
    assert data["settings"]["impl"] == "grouped"


def test_grain_prune_without_dropout_a_copied_student_matches_its_teacher_exactly():
    teacher = small_model("bert", num_layers=2)
    data = random_batches(teacher, num_batches=2)
    _, report = grain_prune(
        teacher, None, data, density=1.0, steps=1, dropout=None, progress=False, measure_speed=False
    )
    assert report.history[0]["loss_hidden"] == 0.0  # hence GRAIN's default: train the student with dropout


@pytest.mark.parametrize("density", [0, 1.5, -0.1, "0.5", True])
def test_grain_prune_rejects_bad_density(density):
    teacher = small_model("bert", num_layers=2)
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        grain_prune(teacher, None, random_batches(teacher), density=density, steps=20, progress=False)


def test_grain_prune_rejects_mismatched_teacher_and_student():
    teacher = small_model("bert", num_layers=2)
    data = random_batches(teacher)
    with pytest.raises(ValueError, match="same vocabulary size"):
        grain_prune(teacher, small_model("bert", num_layers=2, vocab_size=50), data, density=0.5, steps=20)
    with pytest.raises(ValueError, match="same label count"):
        grain_prune(teacher, small_model("bert", num_layers=2, num_labels=3), data, density=0.5, steps=20)


def test_grain_prune_rejects_schedules_that_do_not_fit():
    teacher = small_model("bert", num_layers=2)
    data = random_batches(teacher, num_batches=2)
    with pytest.raises(ValueError, match="no distillation-only phase"):
        grain_prune(teacher, None, data, density=0.5, epochs=1)  # 2 steps
    with pytest.raises(ValueError, match="data is empty"):
        grain_prune(teacher, None, [], density=0.5, steps=20)


# --------------------------------------------------------------------------- scaled structures and the CLI


def test_scaled_structure_keeps_the_shape_and_density():
    layout = unit_layout(small_model("bert", num_layers=2))
    structure = GrainStructure.from_masks(two_layer_masks(layout))
    big = structure.scaled(4, 8, 16, 256)  # attention and FFN both grow 4x
    assert (big.num_layers, big.num_heads, big.head_size, big.ffn_size) == (4, 8, 16, 256)
    assert big.density() == pytest.approx(structure.density())
    assert big.heads_per_layer() == [2 * n for n in structure.heads_per_layer() for _ in range(2)]
    with pytest.raises(ValueError, match="whole factors"):
        structure.scaled(4, 8, 12, 256)


def test_cli_grain_prunes_reports_and_saves_a_reloadable_model(model_dir, tmp_path, capsys):
    from gnorm_kernels.cli.commands import main

    out = tmp_path / "run"
    args = ["grain", "--model", model_dir, "--density", "0.5", "--steps", "10", "--train-size", "160",
            "--eval-size", "64", "--quiet", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "GRAIN at density 0.5" in text and "encoder parameters" in text and "speed-up" in text
    report = json.loads((out / "report.json").read_text())
    assert report["density"] == pytest.approx(0.5, abs=0.01)
    assert report["accuracy"] is not None and report["latency_s"] > 0
    ratio = report["latency_ratio"]  # timed round-robin against the dense model, with an interval
    assert ratio["low"] <= ratio["value"] <= ratio["high"] and ratio["rounds"] == 9
    assert ratio["resolved"] == (ratio["low"] > 1 or ratio["high"] < 1) and "ratio to dense" in text
    model = load_grain(out / "model")
    assert GrainStructure.from_dict(model.config.grain_structure).density() == pytest.approx(report["density"])


@pytest.mark.parametrize(
    "extra, message",
    [(["--density", "0"], "--density must be in (0, 1]"), (["--density", "1.5"], "--density must be in (0, 1]"),
     (["--steps", "0"], "--steps must be >= 1")],
)
def test_cli_grain_rejects_bad_arguments_before_loading(extra, message, capsys):
    from gnorm_kernels.cli.commands import main

    with pytest.raises(SystemExit) as err:
        main(["grain", "--model", "/nonexistent/model", *extra, "--quiet"])
    assert err.value.code == 2  # a bad flag, as for every command
    assert message in capsys.readouterr().err
