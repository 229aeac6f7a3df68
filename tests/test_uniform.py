"""Uniform pruning and the checkpoints it makes possible.

* ``uniform=True``: every layer (every key/value group, for query heads under grouped-query
  attention) loses one unit per round, its lowest-scored; shapes stay uniform after every round,
  and the order is that of a plain loop written out here.
* A uniformly pruned Llama/Qwen2/Mistral is saved with a standard config: plain transformers
  loads it in a process where gnorm_kernels cannot be imported.
* An unevenly pruned one records transformers' ``per_layer_config`` and reloads exactly.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from gnorm_kernels.checkpoints.pruned import load_pruned, save_pruned
from gnorm_kernels.engine.driver import greedy_prune, run_method, static_prune
from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.pruning import prune_heads, prune_kv_groups
from gnorm_kernels.models.loading import load_model
from gnorm_kernels.scoring.gnorm import gnorm_scores
from gnorm_kernels.testing import random_batches, tiny_random_model


@pytest.fixture(scope="module")
def tiny_lm():
    """tiny-lm (4 layers x 8 query heads in 2 key/value groups) and 4 calibration batches."""
    from gnorm_kernels.data.lm_tasks import synthetic_lm_task

    model, tokenizer = load_model("tiny-lm", progress=False)
    task = synthetic_lm_task(train_size=100)
    return model, tokenizer, task.batches("calibration", tokenizer, batch_size=16)[:4], task


def group_sizes(model) -> list[list[int]]:
    """Per layer: the query heads each present key/value group still holds."""
    return [[sum(b.kv_head_of(h) == g for h in b.kept_heads) for g in b.kept_kv_heads]
            for b in head_layout(model).blocks]


def replay(model, trajectory, unit: str):
    """The model after each step of `trajectory` (a copy per step)."""
    work = copy.deepcopy(model)
    for step in trajectory.steps[1:]:
        (prune_heads if unit == "head" else prune_kv_groups)(work, _as_map(step.pruned))
        yield step, work


def _as_map(units):
    out: dict[int, list[int]] = {}
    for layer, u in units:
        out.setdefault(layer, []).append(u)
    return out


def reference_rounds(model, batches, unit: str, rounds: int) -> list[list[tuple[int, int]]]:
    """Uniform Greedy-Gnorm written plainly: score, take each cell's lowest present unit, prune."""
    work = copy.deepcopy(model)
    layout = head_layout(work)
    out = []
    for _ in range(rounds):
        scores = gnorm_scores(work, batches, unit=unit)
        layout = head_layout(work)
        kept = layout.kept_mask() if unit == "head" else layout.kept_kv_mask()
        size = layout.num_heads // layout.kv_heads if unit == "head" and layout.grouped else scores.shape[1]
        chosen = []
        for layer in range(scores.shape[0]):
            for start in range(0, scores.shape[1], size):
                cell = [(scores[layer, u].item(), u) for u in range(start, start + size) if kept[layer, u]]
                if cell:
                    chosen.append((layer, min(cell)[1]))
        (prune_heads if unit == "head" else prune_kv_groups)(work, _as_map(chosen))
        out.append(sorted(chosen))
    return out


# --------------------------------------------------------------------------- uniform pruning


@pytest.mark.parametrize("unit, rounds", [("head", 3), ("kv_group", 1)])
def test_uniform_rounds_on_tiny_lm_keep_every_layer_and_group_alike_and_match_a_plain_loop(tiny_lm, unit, rounds):
    model, _, batches, _ = tiny_lm
    trajectory = greedy_prune(model, batches, unit=unit, uniform=True, steps=rounds, progress=False)
    assert len(trajectory.steps) == rounds + 1
    for step, pruned in replay(model, trajectory, unit):
        sizes = group_sizes(pruned)
        assert len({tuple(s) for s in sizes}) == 1, f"step {step.step}: layers differ: {sizes}"
        assert len(set(sizes[0])) == 1, f"step {step.step}: groups differ: {sizes}"
    per_round = 4 * 2 if unit == "head" else 4  # one per key/value group of each layer, or one group per layer
    assert [len(s.pruned) for s in trajectory.steps[1:]] == [per_round] * rounds
    assert [sorted(s.pruned) for s in trajectory.steps[1:]] == reference_rounds(model, batches, unit, rounds)
    assert trajectory.settings["uniform"] is True


def test_uniform_rounds_on_a_bert_match_a_plain_loop_and_leave_equal_layers():
    model = tiny_random_model("bert", num_layers=3, num_heads=4)
    batches = random_batches(model, num_batches=2)
    trajectory = run_method("greedy-gnorm", model, batches, uniform=True, steps=3, progress=False)
    for step, pruned in replay(model, trajectory, "head"):
        counts = {len(b.kept_heads) for b in head_layout(pruned).blocks}
        assert counts == {4 - step.step}
    assert [sorted(s.pruned) for s in trajectory.steps[1:]] == reference_rounds(model, batches, "head", 3)
    assert [sorted(layer for layer, _ in s.pruned) for s in trajectory.steps[1:]] == [[0, 1, 2]] * 3


def test_uniform_budget_counts_rounds_and_rounds_a_ratio_down_saying_so():
    model = tiny_random_model("bert", num_layers=3, num_heads=4)
    batches = random_batches(model, num_batches=1)
    with pytest.warns(UserWarning, match="rounded down to 1 rounds"):
        t = static_prune(model, batches, uniform=True, ratio=0.4, progress=False)  # 4.8 heads = 1.6 rounds of 3
    assert t.budget == 3 and len(t.order) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert static_prune(model, batches, uniform=True, ratio=0.5, progress=False).budget == 6
    assert static_prune(model, batches, uniform=True, min_heads_per_layer=1, progress=False).budget == 9
    with pytest.raises(ValueError, match="heads_per_step must be 1"):
        greedy_prune(model, batches, uniform=True, heads_per_step=2, progress=False)
    with pytest.raises(ValueError, match="at most|allows"):
        greedy_prune(model, batches, uniform=True, steps=5, progress=False)
    uneven = prune_heads(copy.deepcopy(model), {0: [1]})
    with pytest.raises(ValueError, match="needs a uniform model.*\\[3, 4, 4\\]"):
        greedy_prune(uneven, batches, uniform=True, progress=False)


# --------------------------------------------------------------------------- standard checkpoints

PLAIN_LOAD = textwrap.dedent("""
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "gnorm_kernels" or name.startswith("gnorm_kernels."):
                raise ImportError(f"{name} is blocked in this process")
    sys.meta_path.insert(0, Block())
    import torch
    from transformers import AutoModelForCausalLM
    try:
        import gnorm_kernels  # noqa: F401
        sys.exit("gnorm_kernels was importable")
    except ImportError:
        pass
    folder, ids = sys.argv[1], json.loads(sys.argv[2])
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits
    torch.save(logits, folder + "/plain_logits.pt")
    assert not any(n.startswith("gnorm_kernels") for n in sys.modules)
""")


def test_uniformly_pruned_tiny_lm_loads_with_plain_transformers_without_the_package(tiny_lm, tmp_path):
    model, tokenizer, batches, _ = tiny_lm
    trajectory = greedy_prune(model, batches, unit="head", uniform=True, steps=2, progress=False)
    pruned = prune_heads(copy.deepcopy(model), trajectory.pruned_heads_at(steps=2))
    folder = save_pruned(pruned, tmp_path / "uniform", tokenizer=tokenizer)
    config = json.loads((folder / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 8)
    assert "per_layer_config" not in config
    ids = batches[0]["input_ids"][:4]
    subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(folder), json.dumps(ids.tolist())], check=True,
                   cwd=tmp_path)
    plain = torch.load(folder / "plain_logits.pt")
    ours, _ = load_model(folder, progress=False)
    assert head_layout(ours).pruned_heads() == head_layout(pruned).pruned_heads()  # original indices again
    with torch.no_grad():
        assert (plain - ours(ids).logits).abs().max().item() <= 1e-4
        assert (plain - pruned(ids).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_uniform_kv_groups_give_a_standard_config_that_plain_from_pretrained_builds(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_random_model(family, num_layers=2, num_heads=6, num_kv_heads=3, head_size=8)
    prune_kv_groups(model, {0: [1], 1: [2]})
    folder = save_pruned(model, tmp_path / family)
    config = json.loads((folder / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = random_batches(model, num_batches=1)[0]["input_ids"]
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, model(ids).logits, atol=1e-5)


# --------------------------------------------------------------------------- uneven: per_layer_config


def test_unevenly_pruned_decoder_records_per_layer_config_and_reloads_with_identical_logits(tiny_lm, tmp_path):
    model, tokenizer, batches, _ = tiny_lm
    pruned = prune_heads(copy.deepcopy(model), {0: [1, 2], 1: [4, 5, 6, 7], 3: [0]})
    folder = save_pruned(pruned, tmp_path / "uneven", tokenizer=tokenizer)
    config = json.loads((folder / "config.json").read_text())
    assert config["per_layer_config"] == {
        "0": {"num_attention_heads": 6, "num_key_value_heads": 2},
        "1": {"num_attention_heads": 4, "num_key_value_heads": 1},
        "2": {"num_attention_heads": 8, "num_key_value_heads": 2},
        "3": {"num_attention_heads": 7, "num_key_value_heads": 2},
    }
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (8, 2)  # the unpruned globals
    again, _ = load_model(folder, progress=False)
    ids = batches[0]["input_ids"]
    with torch.no_grad():
        assert torch.equal(again(ids).logits, pruned(ids).logits)
    # a per-layer count that disagrees with the recorded heads is refused, naming the file
    config["per_layer_config"]["3"]["num_attention_heads"] = 6
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json.*disagree"):
        load_pruned(folder)


def test_encoders_keep_the_package_format(tmp_path):
    model = prune_heads(tiny_random_model("bert", num_layers=2, num_heads=4), {0: [0], 1: [0]})
    config = json.loads((save_pruned(model, tmp_path / "bert") / "config.json").read_text())
    assert config["num_attention_heads"] == 4 and "per_layer_config" not in config and "head_dim" not in config
    assert math.isclose(len(load_pruned(tmp_path / "bert").bert.encoder.layer[0].attention.self.query.weight), 24)


def test_gnorm_prune_uniform_writes_a_model_plain_transformers_builds(tmp_path):
    from transformers import AutoModelForCausalLM

    from gnorm_kernels.cli import main

    out = tmp_path / "run"
    assert main(["prune", "--model", "tiny-lm", "--task", "synthetic-lm", "--unit", "kv_group", "--uniform",
                 "--ratio", "0.5", "--calib-size", "32", "--eval-size", "50", "--quiet", "--out", str(out)]) == 0
    trajectory = json.loads((out / "trajectory.json").read_text())
    assert trajectory["settings"]["uniform"] is True and len(trajectory["steps"]) == 2  # step 0 and one round
    config = json.loads((out / "model" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 1)
    plain = AutoModelForCausalLM.from_pretrained(out / "model")
    assert [layer.self_attn.k_proj.out_features for layer in plain.model.layers] == [8] * 4
