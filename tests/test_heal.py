"""Healing a pruned model by distillation (`gk.heal`, `gnorm heal`)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from gnorm_kernels.checkpoints.pruned import save_pruned
from gnorm_kernels.engine.driver import greedy_prune
from gnorm_kernels.engine.resume import ResumeMismatch
from gnorm_kernels.evaluation import evaluate
from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.pruning import prune_heads, prune_kv_groups
from gnorm_kernels.healing import heal
from gnorm_kernels.models.loading import load_model
from gnorm_kernels.testing import random_batches, tiny_random_model


@pytest.fixture(scope="module")
def lm():
    from gnorm_kernels.data.lm_tasks import synthetic_lm_task

    model, tokenizer = load_model("tiny-lm", progress=False)
    task = synthetic_lm_task(train_size=1, calibration_size=512)
    calibration = task.batches("calibration", tokenizer, batch_size=16, limit=256)
    test = task.batches("test", tokenizer, batch_size=250, limit=500)
    return model, tokenizer, calibration, test


def perplexity(model, batches) -> float:
    return evaluate(model, batches, metric="perplexity")["perplexity"]


def test_heal_lowers_tiny_lm_perplexity_after_half_its_kv_groups_are_pruned(lm):
    teacher, _, calibration, test = lm
    trajectory = greedy_prune(teacher, calibration[:4], unit="kv_group", uniform=True, steps=1, progress=False)
    student = prune_kv_groups(copy.deepcopy(teacher), trajectory.pruned_units_at(steps=1))
    assert [len(b.kept_kv_heads) for b in head_layout(student).blocks] == [1, 1, 1, 1]
    shapes = {n: p.shape for n, p in student.named_parameters()}
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    before = perplexity(student, test)
    healed = heal(student, teacher, calibration, steps=48, lr=2e-3, progress=False)
    after = perplexity(healed, test)
    assert healed is student and not student.training
    assert after < before - 0.05 * (before - perplexity(teacher, test)), (before, after)
    assert {n: p.shape for n, p in student.named_parameters()} == shapes  # nothing grew back
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_state.items())


def test_an_interrupted_heal_resumes_to_the_uninterrupted_result(tmp_path):
    teacher = tiny_random_model("llama", num_layers=2, num_heads=4, num_kv_heads=2)
    batches = random_batches(teacher, num_batches=3)
    pruned = prune_heads(copy.deepcopy(teacher), {0: [0, 1], 1: [3]})
    whole = heal(copy.deepcopy(pruned), teacher, batches, steps=7, lr=1e-3, temperature=2.0, progress=False)
    path = tmp_path / "heal.pt"
    heal(copy.deepcopy(pruned), teacher, batches, steps=7, lr=1e-3, temperature=2.0, checkpoint=path,
         save_every=2, max_steps=3, progress=False)
    resumed = heal(copy.deepcopy(pruned), teacher, batches, steps=7, lr=1e-3, temperature=2.0, checkpoint=path,
                   save_every=2, progress=False)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ResumeMismatch, match="lr"):
        heal(copy.deepcopy(pruned), teacher, batches, steps=7, lr=5e-4, temperature=2.0, checkpoint=path,
             progress=False)


def test_heal_distils_a_classifier_logits_and_checks_its_arguments():
    teacher = tiny_random_model("bert", num_layers=2, num_heads=4, initializer_range=0.3)
    batches = random_batches(teacher, num_batches=2)
    student = prune_heads(copy.deepcopy(teacher), {0: [0, 1], 1: [2]})

    def divergence(model) -> float:  # KL(teacher || model) of the class distributions
        total = 0.0
        with torch.no_grad():
            for b in batches:
                inputs = {k: v for k, v in b.items() if k != "labels"}
                t, s = teacher(**inputs).logits.log_softmax(-1), model(**inputs).logits.log_softmax(-1)
                total += (t.exp() * (t - s)).sum(-1).mean().item()
        return total

    before = divergence(student)
    heal(student, teacher, batches, steps=30, lr=1e-3, hidden_weight=0.5, progress=False)
    assert divergence(student) < 0.2 * before
    with pytest.raises(ValueError, match="non-empty list of batches"):
        heal(student, teacher, [], steps=1)
    with pytest.raises(ValueError, match="temperature > 0"):
        heal(student, teacher, batches, steps=1, temperature=0)


def test_gnorm_heal_writes_a_healed_model_and_the_metrics_before_and_after(lm, tmp_path, capsys):
    from gnorm_kernels.cli import main

    teacher, tokenizer, _, _ = lm
    pruned = prune_kv_groups(copy.deepcopy(teacher), {layer: [0] for layer in range(4)})
    save_pruned(pruned, tmp_path / "pruned", tokenizer=tokenizer)
    out = tmp_path / "healed"
    assert main(["heal", "--model", str(tmp_path / "pruned"), "--teacher", "tiny-lm", "--task", "synthetic-lm",
                 "--steps", "6", "--lr", "2e-3", "--calib-size", "64", "--eval-size", "100", "--save-every", "2",
                 "--quiet", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["before"]) >= {"perplexity", "accuracy"} and report["steps"] == 6
    assert report["after"]["perplexity"] != report["before"]["perplexity"]
    assert not (out / "heal_state.pt").exists()
    healed, _ = load_model(out / "model", progress=False)
    assert head_layout(healed).pruned_kv_heads() == {layer: [0] for layer in range(4)}
    assert "perplexity:" in capsys.readouterr().out
