"""Native OLMo <-> Hugging Face `transformers`, as pure functions, for both families:
`OlmoForCausalLM` (model_type "olmo", OLMo 1) and `Olmo2ForCausalLM` (model_type "olmo2", OLMo 2).

The layouts hold the same numbers: HF splits the fused projections (`att_proj` into q/k/v, `ff_proj`
into up/gate, first half up) and renames the rest; OLMo 2 adds the weighted RMSNorms (q_norm, k_norm,
the norms after attention and MLP, and the final norm). A native model is OLMo 2 when its block puts
the norms after (`norm_after`). File reading and writing live with the `convert-hf` command;
transformers itself is not imported here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from olmo_cli.config.schema import ModelConfig

__all__ = [
    "HF_FAMILIES",
    "check_hf_compatible",
    "from_hf_state_dict",
    "hf_config_dict",
    "hf_family",
    "to_hf_state_dict",
]

# model_type -> the transformers class that loads it
HF_FAMILIES = {"olmo": "OlmoForCausalLM", "olmo2": "Olmo2ForCausalLM"}

# OLMo-1 data uses this id as end of document; some configs say 0 (a known upstream slip).
_OLMO_EOS_TOKEN_ID = 50279

_NATIVE_BLOCK = re.compile(r"^transformer\.blocks\.(?P<layer>\d+)\.(?P<name>\w+)\.weight$")
_HF_LAYER = re.compile(r"^model\.layers\.(?P<layer>\d+)\.(?P<name>[\w.]+)\.weight$")
# Older transformers versions persisted the rotary tables; they hold nothing a checkpoint needs.
_HF_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
_RENAMED = {"attn_out": "self_attn.o_proj", "ff_out": "mlp.down_proj"}
# OLMo 2's norms, native block name -> HF layer name
_OLMO2_NORMS = {
    "q_norm": "self_attn.q_norm",
    "k_norm": "self_attn.k_norm",
    "attn_norm": "post_attention_layernorm",
    "ff_norm": "post_feedforward_layernorm",
}
_FINAL_NORM = ("transformer.ln_f.weight", "model.norm.weight")
# A native block's state-dict order (upstream's registration order)
_BLOCK_ORDER = ("k_norm", "q_norm", "attn_out", "ff_out", "attn_norm", "ff_norm", "att_proj", "ff_proj")


def hf_family(cfg: ModelConfig) -> str:
    """'olmo2' for the OLMo 2 block (norms after attention and MLP), else 'olmo'."""
    return "olmo2" if cfg.norm_after else "olmo"


def check_hf_compatible(cfg: ModelConfig) -> None:
    """Raises ValueError naming every setting HF's Olmo (or Olmo2) architecture cannot express."""
    if hf_family(cfg) == "olmo2":
        _check_olmo2(cfg)
        return
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


def _check_olmo2(cfg: ModelConfig) -> None:
    problems = []
    if not cfg.rope:
        problems.append("rope must be true (HF Olmo2 has no learned position embeddings)")
    if cfg.include_bias or cfg.bias_for_layer_norm:
        problems.append("include_bias and bias_for_layer_norm must be false (HF Olmo2 has no biases)")
    if cfg.layer_norm_type != "rms" or not cfg.layer_norm_with_affine:
        problems.append("layer norms must be RMSNorm with weights (layer_norm_type rms, with affine)")
    if not (cfg.attention_layer_norm and cfg.attention_layer_norm_with_affine):
        problems.append("attention_layer_norm (QK-norm) must be on, with weights")
    if cfg.activation_type != "swiglu":
        problems.append(f"activation_type must be swiglu, got {cfg.activation_type}")
    if cfg.clip_qkv is not None:
        problems.append("clip_qkv must be unset (HF Olmo2 does not clip)")
    for flag in ("embedding_layer_norm", "scale_logits"):
        if getattr(cfg, flag):
            problems.append(f"{flag} must be false")
    if problems:
        raise ValueError(
            "cannot express this model as transformers' Olmo2ForCausalLM: " + "; ".join(problems)
        )


def hf_config_dict(cfg: ModelConfig, *, fix_eos_token_id: bool = True) -> dict[str, Any]:
    """The `config.json` of the converted model.

    `fix_eos_token_id` rewrites an `eos_token_id` of 0 to 50279, as upstream's converter does, when
    the vocabulary is large enough to hold it (an OLMo tokenizer).
    """
    check_hf_compatible(cfg)
    eos = cfg.eos_token_id
    if fix_eos_token_id and eos == 0 and cfg.padded_vocab_size > _OLMO_EOS_TOKEN_ID:
        eos = _OLMO_EOS_TOKEN_ID
    family = hf_family(cfg)
    config = {
        "architectures": [HF_FAMILIES[family]],
        "model_type": family,
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
    if family == "olmo2":  # no clip_qkv; the RMSNorm epsilon is a setting
        del config["clip_qkv"]
        config["rms_norm_eps"] = float(cfg.layer_norm_eps)
    return config


def _qkv_sizes(cfg: ModelConfig) -> list[int]:
    kv_width = cfg.effective_n_kv_heads * cfg.head_dim
    return [cfg.d_model, kv_width, kv_width]


def to_hf_state_dict(native: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Native keys (after `normalize_upstream_keys`) -> `OlmoForCausalLM` / `Olmo2ForCausalLM` keys.

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
        elif key == _FINAL_NORM[0] and hf_family(cfg) == "olmo2":
            out[_FINAL_NORM[1]] = value
        elif (match := _NATIVE_BLOCK.match(key)) is not None:
            out.update(_block_to_hf(match["name"], int(match["layer"]), value, cfg))
        else:
            raise ValueError(
                f"unexpected native key {key!r} for a transformers {HF_FAMILIES[hf_family(cfg)]}"
            )
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
    if name in _OLMO2_NORMS and hf_family(cfg) == "olmo2":
        return {f"{prefix}{_OLMO2_NORMS[name]}.weight": value}
    raise ValueError(f"unexpected native key 'transformer.blocks.{layer}.{name}.weight'")


def from_hf_state_dict(hf: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """`OlmoForCausalLM` / `Olmo2ForCausalLM` keys -> native keys, in the model's own order:
    att_proj = cat(q, k, v), ff_proj = cat(up, gate).

    For a tied model `lm_head.weight` is dropped (it is the embedding); a missing or unknown tensor is an
    error, so nothing is silently lost.
    """
    check_hf_compatible(cfg)
    olmo2 = hf_family(cfg) == "olmo2"
    layers: dict[int, dict[str, torch.Tensor]] = {}
    top: dict[str, torch.Tensor] = {}
    for key, value in hf.items():
        if key in ("model.embed_tokens.weight", "lm_head.weight") or (olmo2 and key == _FINAL_NORM[1]):
            top[key] = value
        elif (match := _HF_LAYER.match(key)) is not None:
            layers.setdefault(int(match["layer"]), {})[match["name"]] = value
        elif not _HF_IGNORED.search(key):
            raise ValueError(f"unexpected transformers {HF_FAMILIES[hf_family(cfg)]} key {key!r}")
    needed = ["model.embed_tokens.weight"] + ([] if cfg.weight_tying else ["lm_head.weight"])
    needed += [_FINAL_NORM[1]] if olmo2 else []
    missing = [key for key in needed if key not in top]
    if missing or sorted(layers) != list(range(cfg.n_layers)):
        raise ValueError(
            f"transformers {HF_FAMILIES[hf_family(cfg)]} state dict does not hold a {cfg.n_layers}-layer "
            f"model: missing {missing}, layers found {sorted(layers)}"
        )
    out = {"transformer.wte.weight": top["model.embed_tokens.weight"]}
    if olmo2:
        out[_FINAL_NORM[0]] = top[_FINAL_NORM[1]]
    for layer in range(cfg.n_layers):
        out.update(_block_from_hf(layer, layers[layer], olmo2))
    if not cfg.weight_tying:
        out["transformer.ff_out.weight"] = top["lm_head.weight"]
    return out


def _block_from_hf(layer: int, parts: dict[str, torch.Tensor], olmo2: bool) -> dict[str, torch.Tensor]:
    expected = {
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.up_proj",
        "mlp.gate_proj",
        "mlp.down_proj",
    } | (set(_OLMO2_NORMS.values()) if olmo2 else set())
    if parts.keys() != expected:
        raise ValueError(f"layer {layer}: expected weights {sorted(expected)}, got {sorted(parts)}")
    prefix = f"transformer.blocks.{layer}."
    fused = {
        "attn_out": parts["self_attn.o_proj"],
        "ff_out": parts["mlp.down_proj"],
        "att_proj": torch.cat(
            [parts["self_attn.q_proj"], parts["self_attn.k_proj"], parts["self_attn.v_proj"]], dim=0
        ),
        "ff_proj": torch.cat([parts["mlp.up_proj"], parts["mlp.gate_proj"]], dim=0),
    }
    norms = {native: parts[hf] for native, hf in _OLMO2_NORMS.items()} if olmo2 else {}
    merged = fused | norms
    return {f"{prefix}{name}.weight": merged[name] for name in _BLOCK_ORDER if name in merged}
