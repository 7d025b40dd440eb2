"""GGUF export read back with the `gguf` package's own reader: llama.cpp's olmo metadata, tensor names
and shapes, the vocabulary, and dequantized tensors against the source within each format's error. The
q/k row permutation is checked against RoPE itself: half-split rotation of the original rows equals
adjacent-pair rotation (llama.cpp's) of the permuted rows."""

from __future__ import annotations

import json

import gguf  # the gguf extra (and dev) installs it: a missing reference fails, never skips
import numpy as np
import pytest
import torch

from olmo_cli.errors import UsageError
from olmo_cli.load.build import load_tokenizer
from olmo_cli.load.read import read_checkpoint
from olmo_cli.model.olmo import rope_tables, rotary
from olmo_cli.quant.gguf_export import permute_for_llama_rope, write_gguf
from olmo_cli.quant.gguf_vocab import bpe_vocab
from tests._fixtures import write_checkpoint

from ._helpers import quant_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path, _ = write_checkpoint(tmp_path_factory.mktemp("gguf"), quant_config(), seed=3)
    found = read_checkpoint(path)
    return found, load_tokenizer(found)


def _fields(reader):
    return {key: field.contents() for key, field in reader.fields.items()}


# Largest error per element, as a fraction of the block's largest |value| (32 values a block).
FORMAT_ERROR = {"f16": 2**-11, "q8_0": 1 / 254 + 2**-10, "q4_0": 1 / 8 + 2**-10}


def _source_q(found, layer: int) -> np.ndarray:
    cfg = found.config.model
    q = found.state[f"transformer.blocks.{layer}.att_proj.weight"][: cfg.d_model]
    return permute_for_llama_rope(q, cfg.n_heads).numpy()


@pytest.mark.parametrize("file_type", ["f16", "q8_0", "q4_0"])
def test_gguf_reads_back_with_olmo_metadata_shapes_and_values(checkpoint, tmp_path, file_type):
    found, tokenizer = checkpoint
    cfg = found.config.model
    result = write_gguf(found, tokenizer, tmp_path / "m.gguf", file_type=file_type)
    reader = gguf.GGUFReader(str(result.path))
    f = _fields(reader)
    assert f["general.architecture"] == "olmo"
    expected = {
        "olmo.block_count": cfg.n_layers, "olmo.embedding_length": cfg.d_model,
        "olmo.feed_forward_length": cfg.mlp_hidden // 2, "olmo.attention.head_count": cfg.n_heads,
        "olmo.attention.head_count_kv": cfg.n_heads, "olmo.context_length": cfg.max_sequence_length,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "olmo", "tokenizer.ggml.eos_token_id": 0,
        "tokenizer.ggml.padding_token_id": 1, "tokenizer.ggml.add_bos_token": False,
    }  # fmt: skip
    assert {k: f[k] for k in expected} == expected
    assert f["olmo.rope.freq_base"] == pytest.approx(10000.0)
    assert f["olmo.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert "olmo.attention.clamp_kqv" not in f  # clip_qkv is null: early llama.cpp crashed on a 0 here
    tokens = f["tokenizer.ggml.tokens"]
    vocab = json.loads(tokenizer.json_text)["model"]
    assert len(tokens) == cfg.padded_vocab_size and tokens[:2] == ["<|endoftext|>", "<|padding|>"]
    assert f["tokenizer.ggml.token_type"][:3] == [3, 3, 1]  # two CONTROL tokens, then NORMAL
    assert all(tokens[i] == token for token, i in vocab["vocab"].items())
    assert f["tokenizer.ggml.merges"] == vocab["merges"]
    tensors = {t.name: t for t in reader.tensors}
    names = {"token_embd.weight"} | {
        f"blk.{i}.{part}.weight"
        for i in range(cfg.n_layers)
        for part in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    }
    assert set(tensors) == names  # tied: llama.cpp reuses token_embd as the output layer
    assert tensors["blk.0.ffn_gate.weight"].shape.tolist() == [cfg.d_model, cfg.mlp_hidden // 2]  # [in, out]
    assert tensors["token_embd.weight"].shape.tolist() == [cfg.d_model, cfg.padded_vocab_size]
    t = tensors["blk.1.attn_q.weight"]
    assert t.tensor_type.name.lower() == file_type
    values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(cfg.d_model, cfg.d_model)
    source = _source_q(found, 1)
    block_max = np.abs(source).reshape(-1, 32).max(axis=1, keepdims=True)
    error = np.abs(values - source).reshape(-1, 32)
    assert (error <= block_max * FORMAT_ERROR[file_type] + 1e-7).all()


def test_q4_0_keeps_the_output_layer_at_q8_0(checkpoint, tmp_path):
    found, tokenizer = checkpoint
    result = write_gguf(found, tokenizer, tmp_path / "m.gguf", file_type="q4_0")
    assert result.tensor_types["token_embd.weight"] == "q8_0"  # tied: it is the output layer
    assert result.tensor_types["blk.0.ffn_down.weight"] == "q4_0"


def test_untied_gqa_clipped_model_writes_output_and_clamp(tmp_path):
    cfg = quant_config("model.weight_tying=false", "model.n_kv_heads=2", "model.clip_qkv=8.0")
    path, _ = write_checkpoint(tmp_path, cfg, seed=4)
    found = read_checkpoint(path)
    result = write_gguf(found, load_tokenizer(found), tmp_path / "m.gguf", file_type="f32")
    reader = gguf.GGUFReader(str(result.path))
    f = _fields(reader)
    assert f["olmo.attention.clamp_kqv"] == pytest.approx(8.0) and f["olmo.attention.head_count_kv"] == 2
    tensors = {t.name: t for t in reader.tensors}
    head_dim = cfg.model.d_model // cfg.model.n_heads
    assert tensors["blk.0.attn_k.weight"].shape.tolist() == [cfg.model.d_model, 2 * head_dim]
    out = tensors["output.weight"]
    np.testing.assert_array_equal(np.asarray(out.data), found.state["transformer.ff_out.weight"].numpy())


def _rotate_adjacent_pairs(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """llama.cpp's "normal" RoPE, written out: dims (2i, 2i+1) rotate by pos * theta^(-2i/hd).
    x: [t, heads, hd]."""
    hd = x.shape[-1]
    angles = positions[:, None].float() * theta ** (-torch.arange(0, hd, 2).float() / hd)
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


def test_permutation_turns_half_split_rope_into_adjacent_pair_rope():
    heads, hd, d, t = 2, 16, 32, 5
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(heads * hd, d, generator=gen), torch.randn(t, d, generator=gen)
    positions = torch.arange(t)
    cos, sin = rope_tables(positions, hd, 10000.0)
    ours = rotary((x @ w.T).view(t, heads, hd).transpose(0, 1), cos, sin)  # [heads, t, hd]
    theirs = _rotate_adjacent_pairs(
        (x @ permute_for_llama_rope(w, heads).T).view(t, heads, hd), positions, 1e4
    )
    # Same vectors up to the within-head reordering, so attention scores are identical.
    expected = permute_for_llama_rope(ours.transpose(0, 1).reshape(t, heads * hd).T, heads).T.view(
        t, heads, hd
    )
    torch.testing.assert_close(theirs, expected, rtol=1e-5, atol=1e-5)
    scores_ours = ours @ ours.transpose(-1, -2)
    scores_theirs = theirs.transpose(0, 1) @ theirs.transpose(0, 1).transpose(-1, -2)
    torch.testing.assert_close(scores_theirs, scores_ours, rtol=1e-5, atol=1e-4)


def test_models_llama_cpp_cannot_run_are_refused(tmp_path):
    path, _ = write_checkpoint(tmp_path, quant_config("model.include_bias=true"))
    found = read_checkpoint(path)
    with pytest.raises(UsageError, match="include_bias"):
        write_gguf(found, load_tokenizer(found), tmp_path / "m.gguf", file_type="f16")


def test_a_tokenizer_that_is_not_byte_level_bpe_is_refused():
    word_level = json.dumps({"model": {"type": "WordLevel", "vocab": {"a": 0}}, "pre_tokenizer": None})
    with pytest.raises(UsageError, match="byte-level BPE"):
        bpe_vocab(word_level, 8)
