"""A GGUF file in llama.cpp's `olmo` architecture (LLM_ARCH_OLMO) for OLMo 1 models, or its `olmo2`
architecture (LLM_ARCH_OLMO2) for OLMo 2 models (norms after attention and MLP), written with the `gguf`
package.

OLMo 2 (`olmo2`) differs from the list below in: the norm weights `blk.N.attn_q_norm` (d wide),
`attn_k_norm` (KV width), `post_attention_norm`, `post_ffw_norm` and `output_norm`; `output` always
present (llama.cpp requires it; a tied model repeats the embedding); q and k rows left as they are
(llama.cpp rotates OLMo 2 half-split, "NEOX"); `olmo2.attention.layer_norm_rms_epsilon` and no clamp;
the pre-tokenizer named after the tokenizer's split regex ("dbrx" for dolma2's cl100k one).

Facts this follows (llama.cpp's OLMo loader and its HF converter; docs/format.md §11.3):
- tensors `token_embd`, `output` (untied models only: llama.cpp reuses the embedding otherwise), and per
  block `attn_q/k/v` (our fused `att_proj` split), `attn_output`, `ffn_up` (first half of `ff_proj`),
  `ffn_gate` (second half), `ffn_down`; no norm tensors (OLMo-1's LayerNorm has no parameters);
- llama.cpp rotates adjacent pairs (2i, 2i+1) where OLMo rotates half-split pairs (i, i + hd/2), so the
  rows of q and k are permuted within each head, as its converter does for Llama-style checkpoints;
- hyperparameters under `olmo.*`: context and embedding length, block count, feed-forward length (half
  the fused width), head counts, rope base, `attention.layer_norm_epsilon`, and `attention.clamp_kqv`
  only when clip_qkv is set;
- the tokenizer as a GPT-2 style byte-level BPE (`tokenizer.ggml.model` "gpt2", pre-tokenizer "olmo":
  GPT-2's split regex): every embedding row has a token (ids past the tokenizer are `[PADn]`, unused),
  the merges, and the EOS/pad ids; no BOS is added at encode time (OLMo has none).
Quantized types (q8_0, q4_0) need rows that are a multiple of 32 values; a tensor whose rows are not
falls back to f16, as llama.cpp's converter does. In q4_0 files the output layer (the embedding when
tied) is q8_0, as llama.cpp's own quantizer keeps it at higher precision than the rest.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from olmo_cli.config.schema import ModelConfig
from olmo_cli.errors import UsageError

if TYPE_CHECKING:
    from olmo_cli.checkpoint.weights import CheckpointWeights
    from olmo_cli.data.tokenizer import ResolvedTokenizer

__all__ = [
    "GGUF_TYPES",
    "gguf_arch",
    "GgufResult",
    "gguf_tensors",
    "permute_for_llama_rope",
    "unsupported_for_gguf",
    "write_gguf",
]

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
BLOCK = 32  # values per q8_0 / q4_0 block


@dataclass
class GgufResult:
    path: Path
    file_type: str
    tensor_types: dict[str, str]
    bytes: int
    warnings: list[str] = field(default_factory=list)


def _require_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise UsageError(
            "GGUF export needs the `gguf` package",
            hint="pip install gguf  (or: pip install 'olmo-cli[gguf]')",
        ) from None
    return gguf


def gguf_arch(cfg: ModelConfig) -> str:
    """llama.cpp's architecture for this model: 'olmo2' for the OLMo 2 block, else 'olmo'."""
    return "olmo2" if cfg.norm_after else "olmo"


def unsupported_for_gguf(cfg: ModelConfig) -> list[str]:
    """What llama.cpp's `olmo` / `olmo2` architecture cannot express about this model (empty: exportable)."""
    if gguf_arch(cfg) == "olmo2":
        olmo2 = [
            (cfg.include_bias or cfg.bias_for_layer_norm, "include_bias / bias_for_layer_norm: biases"),
            (cfg.layer_norm_type != "rms", f"layer_norm_type: {cfg.layer_norm_type} (olmo2 needs rms)"),
            (not cfg.layer_norm_with_affine, "layer_norm_with_affine: false (olmo2 norms have weights)"),
            (not cfg.attention_layer_norm, "attention_layer_norm: false (olmo2 has QK-norm)"),
            (not cfg.attention_layer_norm_with_affine, "attention_layer_norm_with_affine: false"),
            (cfg.clip_qkv is not None, "clip_qkv (olmo2 does not clamp)"),
            (cfg.embedding_layer_norm, "embedding_layer_norm"),
            (not cfg.rope, "rope: false (absolute or ALiBi positions)"),
            (cfg.activation_type != "swiglu", f"activation_type: {cfg.activation_type}"),
            (cfg.scale_logits, "scale_logits: true"),
        ]
        return [what for bad, what in olmo2 if bad]
    checks = [
        (cfg.include_bias, "include_bias: linear biases"),
        (cfg.layer_norm_with_affine, "layer_norm_with_affine: norm weights"),
        (cfg.layer_norm_type != "default", f"layer_norm_type: {cfg.layer_norm_type}"),
        (cfg.attention_layer_norm, "attention_layer_norm: QK-norm"),
        (cfg.embedding_layer_norm, "embedding_layer_norm"),
        (not cfg.rope, "rope: false (absolute or ALiBi positions)"),
        (cfg.activation_type != "swiglu", f"activation_type: {cfg.activation_type}"),
        (cfg.norm_after, "norm_after: true"),
        (cfg.scale_logits, "scale_logits: true"),
    ]
    return [what for bad, what in checks if bad]


def permute_for_llama_rope(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of one head reordered from half-split pairs (i, i + hd/2) to adjacent pairs (2i, 2i + 1)."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def gguf_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, fp32 weight [out, in]) in llama.cpp's order and layout."""
    if gguf_arch(cfg) == "olmo2":
        yield from _olmo2_tensors(state, cfg)
        return
    yield "token_embd.weight", state["transformer.wte.weight"]
    for i in range(cfg.n_layers):
        prefix = f"transformer.blocks.{i}."
        kv = cfg.effective_n_kv_heads * cfg.head_dim
        q, k, v = state[prefix + "att_proj.weight"].split((cfg.d_model, kv, kv), dim=0)
        up, gate = state[prefix + "ff_proj.weight"].chunk(2, dim=0)
        yield f"blk.{i}.attn_q.weight", permute_for_llama_rope(q, cfg.n_heads)
        yield f"blk.{i}.attn_k.weight", permute_for_llama_rope(k, cfg.effective_n_kv_heads)
        yield f"blk.{i}.attn_v.weight", v
        yield f"blk.{i}.attn_output.weight", state[prefix + "attn_out.weight"]
        yield f"blk.{i}.ffn_gate.weight", gate
        yield f"blk.{i}.ffn_up.weight", up
        yield f"blk.{i}.ffn_down.weight", state[prefix + "ff_out.weight"]
    if not cfg.weight_tying:
        yield "output.weight", state["transformer.ff_out.weight"]


def _olmo2_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    yield "token_embd.weight", state["transformer.wte.weight"]
    kv = cfg.effective_n_kv_heads * cfg.head_dim
    for i in range(cfg.n_layers):
        prefix = f"transformer.blocks.{i}."
        q, k, v = state[prefix + "att_proj.weight"].split((cfg.d_model, kv, kv), dim=0)
        up, gate = state[prefix + "ff_proj.weight"].chunk(2, dim=0)
        yield f"blk.{i}.attn_q.weight", q
        yield f"blk.{i}.attn_k.weight", k
        yield f"blk.{i}.attn_v.weight", v
        yield f"blk.{i}.attn_output.weight", state[prefix + "attn_out.weight"]
        yield f"blk.{i}.attn_q_norm.weight", state[prefix + "q_norm.weight"]
        yield f"blk.{i}.attn_k_norm.weight", state[prefix + "k_norm.weight"]
        yield f"blk.{i}.post_attention_norm.weight", state[prefix + "attn_norm.weight"]
        yield f"blk.{i}.ffn_gate.weight", gate
        yield f"blk.{i}.ffn_up.weight", up
        yield f"blk.{i}.ffn_down.weight", state[prefix + "ff_out.weight"]
        yield f"blk.{i}.post_ffw_norm.weight", state[prefix + "ff_norm.weight"]
    yield "output_norm.weight", state["transformer.ln_f.weight"]
    output = "transformer.wte.weight" if cfg.weight_tying else "transformer.ff_out.weight"
    yield "output.weight", state[output]


def _tensor_count(cfg: ModelConfig) -> int:
    if gguf_arch(cfg) == "olmo2":
        return cfg.n_layers * 11 + 3
    return cfg.n_layers * 7 + 1 + (0 if cfg.weight_tying else 1)


def _tensor_type(name: str, array: np.ndarray, file_type: str, cfg: ModelConfig) -> str:
    if file_type == "f32" or array.ndim < 2:
        return "f32"
    if file_type == "f16" or array.shape[-1] % BLOCK:
        return "f16"
    output_layer = name == "output.weight" or (
        cfg.weight_tying and name == "token_embd.weight" and gguf_arch(cfg) == "olmo"
    )
    if file_type == "q4_0" and output_layer:
        return "q8_0"
    return file_type


def _encode(gguf: Any, array: np.ndarray, kind: str) -> tuple[np.ndarray, Any]:
    if kind == "f32":
        return array.astype(np.float32), None
    if kind == "f16":
        return array.astype(np.float16), None
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[kind]
    return gguf.quants.quantize(array.astype(np.float32), qtype), qtype


def _write_hparams(writer: Any, gguf: Any, cfg: ModelConfig, name: str, file_type: str) -> None:
    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    }
    writer.add_type("model")
    writer.add_name(name)
    writer.add_file_type(file_types[file_type])
    if file_type in ("q8_0", "q4_0"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(cfg.max_sequence_length)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.mlp_hidden // 2)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.effective_n_kv_heads)
    writer.add_rope_freq_base(float(cfg.rope_theta))
    if gguf_arch(cfg) == "olmo2":
        writer.add_layer_norm_rms_eps(cfg.layer_norm_eps)
    else:
        writer.add_layer_norm_eps(cfg.layer_norm_eps)
    writer.add_vocab_size(cfg.padded_vocab_size)
    if cfg.clip_qkv is not None:
        writer.add_clamp_kqv(float(cfg.clip_qkv))


def _write_tokenizer(writer: Any, gguf: Any, tokenizer: ResolvedTokenizer, cfg: ModelConfig) -> None:
    from olmo_cli.quant.gguf_vocab import bpe_vocab, pre_tokenizer_name

    vocab = bpe_vocab(tokenizer.json_text, cfg.padded_vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer.json_text))
    writer.add_token_list(vocab.tokens)
    writer.add_token_types([int(t) for t in vocab.types])
    writer.add_token_merges(vocab.merges)
    ids = tokenizer.identity
    writer.add_eos_token_id(ids.eos_token_id)
    writer.add_pad_token_id(ids.pad_token_id)
    # No BOS in OLMo: EOS separates documents, so it stands in where a tool asks for one, never added.
    writer.add_bos_token_id(ids.eos_token_id if ids.bos_token_id is None else ids.bos_token_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)


def write_gguf(
    checkpoint: CheckpointWeights,
    tokenizer: ResolvedTokenizer,
    output: Path | str,
    *,
    file_type: str,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> GgufResult:
    """Writes `checkpoint` (full precision) as a GGUF file of `file_type` (see GGUF_TYPES)."""
    gguf = _require_gguf()
    cfg = checkpoint.config.model
    if file_type not in GGUF_TYPES:
        raise UsageError(f"unknown GGUF type {file_type!r}", hint=f"one of {', '.join(GGUF_TYPES)}")
    problems = unsupported_for_gguf(cfg)
    if problems:
        raise UsageError(
            f"llama.cpp's {gguf_arch(cfg)} architecture cannot express this model: " + "; ".join(problems),
            hint="GGUF export covers OLMo 1 and OLMo 2 style models (see `olmo presets show 1b` or olmo2-1b)",
        )
    output = Path(output)
    if output.is_dir():
        raise UsageError(f"--output {output} is a directory; give the .gguf file to write")
    if output.exists() and not overwrite:
        raise UsageError(f"--output {output} already exists", hint="pass --overwrite")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    writer = gguf.GGUFWriter(str(tmp), gguf_arch(cfg))
    warnings: list[str] = []
    types: dict[str, str] = {}
    try:
        _write_hparams(writer, gguf, cfg, checkpoint.config.run_name or checkpoint.path.name, file_type)
        _write_tokenizer(writer, gguf, tokenizer, cfg)
        total = _tensor_count(cfg)
        for done, (name, weight) in enumerate(gguf_tensors(checkpoint.state, cfg), 1):
            array = weight.detach().float().contiguous().numpy()
            kind = _tensor_type(name, array, file_type, cfg)
            if kind == "f16" and file_type in ("q8_0", "q4_0"):
                warnings.append(
                    f"{name}: rows of {array.shape[-1]} are not a multiple of {BLOCK}; stored f16"
                )
            data, raw = _encode(gguf, array, kind)
            writer.add_tensor(name, data, raw_dtype=raw)
            types[name] = kind
            if progress is not None:
                progress(done, total)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, output)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return GgufResult(output, file_type, types, output.stat().st_size, warnings)
