"""Small random models and batches of every supported family, for tests, benchmarks and demos.

Nothing here needs a network: configs are built in code, weights are random (seeded).
"""

from __future__ import annotations

import torch

__all__ = ["FAMILIES", "DECODER_FAMILIES", "tiny_random_model", "random_batches"]

FAMILIES = ("bert", "albert", "roberta", "xlm-roberta", "electra", "distilbert")
DECODER_FAMILIES = ("gpt2", "llama", "qwen2", "mistral")

_CLASSES = {
    "bert": ("BertConfig", "BertForSequenceClassification"),
    "albert": ("AlbertConfig", "AlbertForSequenceClassification"),
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification"),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaForSequenceClassification"),
    "electra": ("ElectraConfig", "ElectraForSequenceClassification"),
    "distilbert": ("DistilBertConfig", "DistilBertForSequenceClassification"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
}


def tiny_random_model(
    family: str = "bert",
    *,
    num_layers: int = 2,
    num_heads: int = 4,
    head_size: int = 8,
    intermediate_size: int | None = None,
    vocab_size: int = 99,
    num_labels: int = 2,
    seed: int = 0,
    attn_implementation: str = "eager",
    num_kv_heads: int | None = None,
    **config_overrides,
) -> torch.nn.Module:
    """A randomly initialised model of `family` in eval mode: `*ForSequenceClassification` for
    encoders, `*ForCausalLM` (GPT-2: `GPT2LMHeadModel`) for decoders.

    For ALBERT `num_layers` counts the distinct (shared) blocks, each run at two depths, so that
    sharing across depth is exercised. Llama, Qwen2 and Mistral get grouped-query attention with
    `num_kv_heads` key/value heads (default: half the query heads). Dropout is off everywhere.
    """
    import transformers

    if family not in _CLASSES:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(_CLASSES)}")
    config_name, model_name = _CLASSES[family]
    hidden = num_heads * head_size
    kwargs = dict(
        vocab_size=vocab_size,
        num_labels=num_labels,
        attn_implementation=attn_implementation,
    )
    if family in DECODER_FAMILIES:
        kwargs.pop("num_labels")
        kwargs.update(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "gpt2":
        kwargs.update(n_layer=num_layers, n_head=num_heads, n_embd=hidden, n_inner=intermediate_size or 2 * hidden,
                      n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    elif family in DECODER_FAMILIES:
        kwargs.update(hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                      num_key_value_heads=num_kv_heads or max(1, num_heads // 2),
                      intermediate_size=intermediate_size or 2 * hidden, max_position_embeddings=64,
                      attention_dropout=0.0, head_dim=head_size)
    elif family == "distilbert":
        kwargs.update(dim=hidden, n_layers=num_layers, n_heads=num_heads,
                      hidden_dim=intermediate_size or 2 * hidden, dropout=0.0,
                      attention_dropout=0.0, seq_classif_dropout=0.0, max_position_embeddings=64)
    else:
        kwargs.update(
            hidden_size=hidden,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size or 2 * hidden,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            max_position_embeddings=64,
        )
        if family == "albert":
            # num_layers distinct (shared) blocks, each reused at two depths
            kwargs.update(embedding_size=16, num_hidden_layers=2 * num_layers,
                          num_hidden_groups=num_layers, classifier_dropout_prob=0.0)
        if family in ("roberta", "xlm-roberta"):
            kwargs.update(pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    kwargs.update(config_overrides)
    config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config)
    return model.eval()


def random_batches(
    model: torch.nn.Module,
    *,
    num_batches: int = 2,
    batch_size: int = 4,
    seq_len: int = 12,
    seed: int = 0,
    pad: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """Random token batches for `model`'s vocabulary with (optionally) right padding, and class
    labels for classifiers (a causal LM's targets are its inputs shifted, so it gets none)."""
    from gnorm_kernels.heads.families import family_of

    config = model.config
    causal = family_of(model).causal and not type(model).__name__.endswith("ForSequenceClassification")
    gen = torch.Generator().manual_seed(seed)
    pad_id = getattr(config, "pad_token_id", 0) or 0
    low = 3 if pad_id < 3 else 0
    batches = []
    for _ in range(num_batches):
        ids = torch.randint(low, config.vocab_size, (batch_size, seq_len), generator=gen)
        ids[ids == pad_id] = low
        mask = torch.ones(batch_size, seq_len, dtype=torch.long)
        if pad:
            lengths = torch.randint(max(2, seq_len // 2), seq_len + 1, (batch_size,), generator=gen)
            lengths[0] = seq_len
            for i, n in enumerate(lengths.tolist()):
                mask[i, n:] = 0
                ids[i, n:] = pad_id
        labels = torch.randint(0, config.num_labels, (batch_size,), generator=gen)
        batch = {"input_ids": ids, "attention_mask": mask}
        if not causal:
            batch["labels"] = labels
        batches.append(batch)
    return batches
