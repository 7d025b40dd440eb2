"""Native OLMo <-> Hugging Face `transformers` `OlmoForCausalLM` (model_type "olmo"), as pure functions.

The two layouts hold the same numbers: HF splits the fused projections (`att_proj` into q/k/v,
`ff_proj` into up/gate, first half up) and renames the rest. File reading and writing live with the
`convert-hf` command; transformers itself is not imported here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from olmo_cli.config.schema import ModelConfig

__all__ = ["check_hf_compatible", "hf_config_dict", "to_hf_state_dict", "from_hf_state_dict"]

# OLMo-1 data uses this id as end of document; some configs say 0 (a known upstream slip).
_OLMO_EOS_TOKEN_ID = 50279

_NATIVE_BLOCK = re.compile(r"^transformer\.blocks\.(?P<layer>\d+)\.(?P<name>\w+)\.weight$")
_HF_LAYER = re.compile(r"^model\.layers\.(?P<layer>\d+)\.(?P<name>[\w.]+)\.weight$")
# Older transformers versions persisted the rotary tables; they hold nothing a checkpoint needs.
_HF_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
_RENAMED = {"attn_out": "self_attn.o_proj", "ff_out": "mlp.down_proj"}


def check_hf_compatible(cfg: ModelConfig) -> None:
    """Raises ValueError naming every setting HF's Olmo architecture cannot express."""
    problems = []
    if not cfg.rope:
        problems.append("rope must be true (HF Olmo has no learned position embeddings)")
    if cfg.include_bias:
        problems.append("include_bias must be false (HF Olmo linears have no bias)")
    if cfg.layer_norm_with_affine or cfg.layer_norm_type != "default":
        problems.append("layer norms must be the non-parametric default type")
    if cfg.layer_norm_eps != 1e-5:
        problems.append(f"layer_norm_eps must be 1e-5 (HF hard-codes it), got {cfg.layer_norm_eps}")
    if cfg.activation_type != "swiglu":
        problems.append(f"activation_type must be swiglu, got {cfg.activation_type}")
    for flag in ("attention_layer_norm", "embedding_layer_norm", "norm_after", "scale_logits"):
        if getattr(cfg, flag):
            problems.append(f"{flag} must be false")
    if problems:
        raise ValueError("cannot express this model as transformers' OlmoForCausalLM: " + "; ".join(problems))


def hf_config_dict(cfg: ModelConfig, *, fix_eos_token_id: bool = True) -> dict[str, Any]:
    """The `config.json` of the converted model.

    `fix_eos_token_id` rewrites an `eos_token_id` of 0 to 50279, as upstream's converter does, when
    the vocabulary is large enough to hold it (an OLMo tokenizer).
    """
    check_hf_compatible(cfg)
    eos = cfg.eos_token_id
    if fix_eos_token_id and eos == 0 and cfg.padded_vocab_size > _OLMO_EOS_TOKEN_ID:
        eos = _OLMO_EOS_TOKEN_ID
    return {
        "architectures": ["OlmoForCausalLM"],
        "model_type": "olmo",
        "vocab_size": cfg.padded_vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_hidden // 2,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.effective_n_kv_heads,
        "max_position_embeddings": cfg.max_sequence_length,
        "rope_theta": float(cfg.rope_theta),
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "clip_qkv": cfg.clip_qkv,
        "tie_word_embeddings": cfg.weight_tying,
        "pad_token_id": cfg.pad_token_id,
        "bos_token_id": None,
        "eos_token_id": eos,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def _qkv_sizes(cfg: ModelConfig) -> list[int]:
    kv_width = cfg.effective_n_kv_heads * cfg.head_dim
    return [cfg.d_model, kv_width, kv_width]


def to_hf_state_dict(native: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Native keys (after `normalize_upstream_keys`) -> `OlmoForCausalLM` keys.

    The split q/k/v and up/gate tensors are fresh copies, so the result shares no storage with the
    fused originals. A tied model gets `lm_head.weight` as the embedding tensor itself, as HF's own
    state dict of a tied model has it.
    """
    check_hf_compatible(cfg)
    out: dict[str, torch.Tensor] = {}
    for key, value in native.items():
        if key == "transformer.wte.weight":
            out["model.embed_tokens.weight"] = value
            if cfg.weight_tying:
                out["lm_head.weight"] = value
        elif key == "transformer.ff_out.weight" and not cfg.weight_tying:
            out["lm_head.weight"] = value
        elif (match := _NATIVE_BLOCK.match(key)) is not None:
            out.update(_block_to_hf(match["name"], int(match["layer"]), value, cfg))
        else:
            raise ValueError(f"unexpected native key {key!r} for a transformers Olmo model")
    return out


def _block_to_hf(name: str, layer: int, value: torch.Tensor, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    prefix = f"model.layers.{layer}."
    if name == "att_proj":
        q, k, v = (part.clone() for part in value.split(_qkv_sizes(cfg), dim=0))
        return {
            f"{prefix}self_attn.q_proj.weight": q,
            f"{prefix}self_attn.k_proj.weight": k,
            f"{prefix}self_attn.v_proj.weight": v,
        }
    if name == "ff_proj":
        # First half of the fused MLP input is the linear branch, the second the gate.
        up, gate = (part.clone() for part in value.chunk(2, dim=0))
        return {f"{prefix}mlp.up_proj.weight": up, f"{prefix}mlp.gate_proj.weight": gate}
    if name in _RENAMED:
        return {f"{prefix}{_RENAMED[name]}.weight": value}
    raise ValueError(f"unexpected native key 'transformer.blocks.{layer}.{name}.weight'")


def from_hf_state_dict(hf: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """`OlmoForCausalLM` keys -> native keys, in the model's own order: att_proj = cat(q, k, v),
    ff_proj = cat(up, gate).

    For a tied model `lm_head.weight` is dropped (it is the embedding); a missing or unknown tensor is an
    error, so nothing is silently lost.
    """
    check_hf_compatible(cfg)
    layers: dict[int, dict[str, torch.Tensor]] = {}
    top: dict[str, torch.Tensor] = {}
    for key, value in hf.items():
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            top[key] = value
        elif (match := _HF_LAYER.match(key)) is not None:
            layers.setdefault(int(match["layer"]), {})[match["name"]] = value
        elif not _HF_IGNORED.search(key):
            raise ValueError(f"unexpected transformers Olmo key {key!r}")
    needed = ["model.embed_tokens.weight"] + ([] if cfg.weight_tying else ["lm_head.weight"])
    missing = [key for key in needed if key not in top]
    if missing or sorted(layers) != list(range(cfg.n_layers)):
        raise ValueError(
            f"transformers Olmo state dict does not hold a {cfg.n_layers}-layer model: "
            f"missing {missing}, layers found {sorted(layers)}"
        )
    out = {"transformer.wte.weight": top["model.embed_tokens.weight"]}
    for layer in range(cfg.n_layers):
        out.update(_block_from_hf(layer, layers[layer]))
    if not cfg.weight_tying:
        out["transformer.ff_out.weight"] = top["lm_head.weight"]
    return out


def _block_from_hf(layer: int, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    expected = {
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.up_proj",
        "mlp.gate_proj",
        "mlp.down_proj",
    }
    if parts.keys() != expected:
        raise ValueError(f"layer {layer}: expected weights {sorted(expected)}, got {sorted(parts)}")
    prefix = f"transformer.blocks.{layer}."
    return {
        f"{prefix}attn_out.weight": parts["self_attn.o_proj"],
        f"{prefix}ff_out.weight": parts["mlp.down_proj"],
        f"{prefix}att_proj.weight": torch.cat(
            [parts["self_attn.q_proj"], parts["self_attn.k_proj"], parts["self_attn.v_proj"]], dim=0
        ),
        f"{prefix}ff_proj.weight": torch.cat([parts["mlp.up_proj"], parts["mlp.gate_proj"]], dim=0),
    }
