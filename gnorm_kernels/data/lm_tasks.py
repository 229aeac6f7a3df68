"""Synthetic reviews as text for causal LMs: the verdict words, the word-level LM tokenizer,
labelled and text-only LM batches, and the "synthetic-lm" task.

Each review of the synthetic grammar (`gnorm_kernels.data.synthetic`) becomes a text that ends in
its verdict, ``[BOS] the plot was dull but the acting was superb verdict : positive``: a causal LM
has a perplexity on every token and a verdict accuracy on the word predicted after the cue.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from gnorm_kernels.data.synthetic import SPECIAL_TOKENS, synthetic_task, synthetic_vocabulary
from gnorm_kernels.data.tasks import Example, Task

__all__ = [
    "VERDICTS",
    "VERDICT_CUE",
    "LM_SPECIAL_TOKENS",
    "LMTask",
    "lm_tokenizer",
    "lm_text",
    "lm_batches",
    "synthetic_lm_task",
]

VERDICTS = ("negative", "positive")  # label names of "synthetic-lm": class i's one-token verdict word
VERDICT_CUE = "verdict :"  # between the review and its verdict, so the model knows the review ended
LM_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")


def lm_tokenizer(*, model_max_length: int = 64) -> Any:
    """A word-level tokenizer over the grammar's words, the cue and the verdict words.

    Adds ``[BOS]`` in front of every text, pads on the right with ``[PAD]``; no token type ids
    (Llama takes none). A `PreTrainedTokenizerFast`, so it saves and reloads with
    `AutoTokenizer.from_pretrained` like a hub tokenizer.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = [w for w in synthetic_vocabulary() if w not in SPECIAL_TOKENS]
    vocab = list(dict.fromkeys([*LM_SPECIAL_TOKENS, *words, *VERDICT_CUE.split(), *VERDICTS]))
    ids = {w: i for i, w in enumerate(vocab)}
    core = Tokenizer(WordLevel(ids, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", ids["[BOS]"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="[BOS]",
        eos_token="[EOS]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        padding_side="right",
        model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"],
    )


def lm_text(example: Example, verdicts: Sequence[str] = VERDICTS) -> str:
    """The text an LM reads for a labelled review: the review, the cue, the verdict word."""
    if not 0 <= example.label < len(verdicts):
        raise ValueError(f"label {example.label} has no verdict word; verdicts are {list(verdicts)}")
    return f"{example.text} {VERDICT_CUE} {verdicts[example.label]}"


def _verdict_token_ids(tokenizer: Any, verdicts: Sequence[str]) -> torch.Tensor:
    """The one token id of each verdict word (an error for a word of several tokens, or unknown)."""
    ids = []
    for word in verdicts:
        found = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(found) != 1 or found[0] == tokenizer.unk_token_id:
            pieces = tokenizer.convert_ids_to_tokens(found)
            raise ValueError(
                f"each verdict must be one known token of the tokenizer; {word!r} becomes {len(found)} token(s) "
                f"{pieces}. Choose verdict words that are single entries of its vocabulary"
            )
        ids.append(found[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"verdict words must be distinct tokens; {list(verdicts)} give ids {ids}")
    return torch.tensor(ids, dtype=torch.long)


def lm_batches(
    examples: Sequence[Example],
    tokenizer: Any,
    verdicts: Sequence[str] | None = VERDICTS,
    *,
    batch_size: int = 32,
    max_length: int = 64,
    shuffle: bool = False,
    seed: int = 0,
    group_by_length: bool = False,
    pool_batches: int = 50,
    epochs: int = 1,
    limit: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Batches for a causal LM: ``input_ids`` and ``attention_mask``, padded per batch.

    With `verdicts` (one word per class) each row is ``[BOS] review verdict : <word>`` and the
    batch also holds ``labels`` [B], ``label_token_ids`` [C] and ``verdict_index`` [B] (the
    position of the verdict token), the labelled LM format of `gnorm_kernels.data.batches`. With
    ``verdicts=None`` rows are ``[BOS] text`` alone, for perplexity. Batching options are those of
    `Task.batches`; a row the `max_length` would cut is an error, not a silent truncation.
    """
    examples = list(examples)
    if any(ex.text_pair is not None for ex in examples):
        raise ValueError("an LM row is one text; got examples with a text_pair (join the pair into one text first)")
    labelled = verdicts is not None
    if labelled:
        token_ids = _verdict_token_ids(tokenizer, verdicts)
        rows = [Example(lm_text(ex, verdicts), None, ex.label) for ex in examples]
    else:
        rows = [Example(ex.text, None, 0) for ex in examples]
    task = Task("lm-rows", list(verdicts or ["text"]), {"train": rows, "calibration": [], "test": []})
    batches = task.batches(
        "train", tokenizer, batch_size=batch_size, limit=limit, max_length=max_length + 1, shuffle=shuffle, seed=seed,
        group_by_length=group_by_length, pool_batches=pool_batches, epochs=epochs,
    )
    for batch in batches:
        mask = batch["attention_mask"]
        if int(mask.sum(1).max()) > max_length:
            raise ValueError(
                f"a row has {int(mask.sum(1).max())} tokens, over max_length={max_length}; raise max_length "
                "(a cut row would lose its verdict)"
            )
        labels = batch.pop("labels")
        if not labelled:
            continue
        last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # the last real token, either padding side
        batch.update(labels=labels, label_token_ids=token_ids.clone(), verdict_index=last)
    return batches


class LMTask(Task):
    """A `Task` whose texts a causal LM reads with their verdict words (its label names):
    `batches` gives the labelled LM batches of `lm_batches` (``labelled=False``: text only)."""

    def batches(self, split: str, tokenizer: Any, *, labelled: bool = True, max_length: int = 64,
                **options: Any) -> list[dict[str, torch.Tensor]]:
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}; this task has {sorted(self.splits)}")
        verdicts = self.label_names if labelled else None
        return lm_batches(self.splits[split], tokenizer, verdicts, max_length=max_length, **options)


def synthetic_lm_task(
    *, seed: int = 0, train_size: int = 40_000, calibration_size: int = 512, test_size: int = 2_000
) -> LMTask:
    """The synthetic reviews as an LM task: the splits of `synthetic_task`, named by verdict word.

    Texts are the bare reviews; its `batches` (like `lm_batches`) append the cue and the verdict.
    """
    base = synthetic_task(seed=seed, train_size=train_size, calibration_size=calibration_size, test_size=test_size)
    return LMTask(
        name="synthetic-lm",
        label_names=list(VERDICTS),
        splits=base.splits,
        metric="accuracy",
        info={**base.info, "verdict_cue": VERDICT_CUE, "format": "causal-lm"},
    )
