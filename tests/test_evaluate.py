"""Metrics, size, latency and single-head ablation on models whose answers are known."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gnorm_kernels.evaluation import evaluate, measure_latency, model_size_mb, parameter_count, single_head_ablation


class EchoClassifier(nn.Module):
    """Predicts class `input_ids[:, 0]` with logit margin 2: outputs are known in advance."""

    def __init__(self, num_labels: int = 2) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.config = SimpleNamespace(num_labels=num_labels)
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.register_buffer("offset", torch.zeros(num_labels, dtype=torch.float64))
        self.modes: list[bool] = []

    def forward(self, input_ids, attention_mask=None, **_):
        self.modes.append(self.training)
        onehot = nn.functional.one_hot(input_ids[:, 0], self.num_labels).float()
        return SimpleNamespace(logits=self.scale * onehot + self.offset.float())


def batch(pred: list[int], gold: list[int]) -> dict[str, torch.Tensor]:
    ids = torch.tensor(pred)[:, None].repeat(1, 3)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor(gold)}


def test_evaluate_binary_metrics_match_hand_computation() -> None:
    model = EchoClassifier()
    batches = [batch([1, 1, 0], [1, 0, 0]), batch([0, 1], [1, 1])]
    result = evaluate(model, batches, metric="f1")
    # tp = 2, fp = 1, fn = 1, tn = 1
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert result["matthews"] == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))
    assert result["score"] == result["f1"]
    assert result["n"] == 5
    right = -math.log(math.exp(2) / (math.exp(2) + 1))
    wrong = -math.log(1 / (math.exp(2) + 1))
    assert result["loss"] == pytest.approx((3 * right + 2 * wrong) / 5, rel=1e-5)


def test_evaluate_multiclass_has_no_f1_and_perfect_matthews() -> None:
    model = EchoClassifier(num_labels=3)
    result = evaluate(model, [batch([0, 1, 2, 2], [0, 1, 2, 2])], metric="matthews")
    assert "f1" not in result
    assert result["accuracy"] == 1.0 and result["matthews"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="binary"):
        evaluate(model, [batch([0], [0])], metric="f1")
    with pytest.raises(ValueError, match="accuracy"):
        evaluate(model, [batch([0], [0])], metric="bleu")


def test_evaluate_runs_in_eval_mode_and_restores_train_mode() -> None:
    model = EchoClassifier()
    model.train()
    evaluate(model, [batch([1], [1])])
    assert model.modes == [False]
    assert model.training
    model.eval()
    evaluate(model, [batch([1], [1])])
    assert not model.training


def test_evaluate_needs_labels_and_batches() -> None:
    model = EchoClassifier()
    with pytest.raises(ValueError, match="labels"):
        evaluate(model, [{"input_ids": torch.zeros(1, 2, dtype=torch.long)}])
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, [])


def bert(layers: int = 2, hidden: int = 16, heads: int = 4, ffn: int = 24, vocab: int = 30, positions: int = 20):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=positions, type_vocab_size=2, num_labels=3,
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval()


def test_parameter_count_matches_the_bert_formula() -> None:
    L, D, F, V, P, C = 2, 16, 24, 30, 20, 3
    model = bert(L, D, 4, F, V, P)
    per_layer = 4 * (D * D + D) + 2 * D + (D * F + F) + (F * D + D) + 2 * D
    embeddings = (V + P + 2) * D + 2 * D
    pooler, classifier = D * D + D, D * C + C
    assert parameter_count(model, encoder_only=True) == L * per_layer
    assert parameter_count(model) == embeddings + L * per_layer + pooler + classifier
    with pytest.raises(ValueError, match="encoder"):
        parameter_count(nn.Linear(2, 2), encoder_only=True)


def test_model_size_counts_parameters_and_buffers_in_their_dtypes() -> None:
    model = EchoClassifier(num_labels=4)  # one float32 parameter, a float64 buffer of 4
    assert model_size_mb(model) == pytest.approx((4 + 8 * 4) / 2**20)
    half = nn.Linear(10, 10).half()
    assert model_size_mb(half) == pytest.approx(110 * 2 / 2**20)
    bigger = bert()
    positions = sum(b.numel() * b.element_size() for b in bigger.buffers())
    assert model_size_mb(bigger) == pytest.approx((parameter_count(bigger) * 4 + positions) / 2**20)


def test_measure_latency_reports_per_batch_figures() -> None:
    model = bert()
    batches = [{"input_ids": torch.randint(0, 30, (4, 8)), "labels": torch.zeros(4, dtype=torch.long)}] * 2
    model.train()
    result = measure_latency(model, batches, repeats=3, warmup=1)
    assert model.training
    assert result["batches"] == 2 and result["repeats"] == 3 and result["mean_batch_size"] == 4
    assert 0 < result["min_s"] <= result["median_s"]
    assert result["per_example_s"] == pytest.approx(result["median_s"] / 4)
    assert result["threads"] == torch.get_num_threads()
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, batches, repeats=0)


def test_single_head_ablation_matches_masked_evaluation() -> None:
    from gnorm_kernels.heads.masking import mask_heads
    from gnorm_kernels.heads.pruning import prune_heads
    from gnorm_kernels.testing import random_batches, tiny_random_model

    model = tiny_random_model("bert", num_layers=2, num_heads=4, num_labels=3)
    batches = random_batches(model, num_batches=4, batch_size=16)
    # labels the model itself predicts: base accuracy 1, so every drop is >= 0
    for b in batches:
        b["labels"] = model(**{k: v for k, v in b.items() if k != "labels"}).logits.argmax(-1)
    drops = single_head_ablation(model, batches, progress=False)
    assert drops.shape == (2, 4)
    assert (drops >= 0).all()
    mask = torch.ones(2, 4)
    mask[1, 2] = 0
    with mask_heads(model, mask):
        masked = evaluate(model, batches)["accuracy"]
    assert drops[1, 2].item() == pytest.approx(1.0 - masked)

    prune_heads(model, {0: [1, 3]})
    after = single_head_ablation(model, batches, progress=False)
    assert torch.isnan(after[0, [1, 3]]).all()
    assert not torch.isnan(after[0, [0, 2]]).any() and not torch.isnan(after[1]).any()
