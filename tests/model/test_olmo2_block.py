"""The OLMo 2 block (issue 16, point 1) against transformers' Olmo2ForCausalLM, the reference: reordered
norms (RMSNorm on the attention and MLP outputs before the residual add), QK-norm over the whole q and k
projections, RoPE theta 500000, RMS eps 1e-6, and GQA. The weights are mapped by hand here, so this
checks the model's math independently of the HF converter."""

from __future__ import annotations

import pytest
import torch

from olmo_cli.config.schema import ModelConfig
from olmo_cli.model.olmo import build_model

transformers = pytest.importorskip("transformers")


def olmo2_config(n_kv_heads: int) -> ModelConfig:
    # The settings upstream's OLMo 2 configs use, at toy sizes.
    return ModelConfig(
        d_model=64,
        n_heads=4,
        n_kv_heads=n_kv_heads,
        n_layers=2,
        mlp_hidden_size=2 * 96,
        max_sequence_length=32,
        vocab_size=100,
        embedding_size=128,
        block_type="sequential",
        activation_type="swiglu",
        norm_after=True,
        layer_norm_type="rms",
        layer_norm_with_affine=True,
        layer_norm_eps=1e-6,
        attention_layer_norm=True,
        attention_layer_norm_with_affine=True,
        bias_for_layer_norm=False,
        include_bias=False,
        weight_tying=False,
        rope=True,
        rope_theta=500_000,
        init_device="cpu",
    )


def hf_reference(cfg: ModelConfig):
    hf_cfg = transformers.Olmo2Config(
        vocab_size=cfg.padded_vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.mlp_hidden // 2,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.effective_n_kv_heads,
        max_position_embeddings=cfg.max_sequence_length,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.layer_norm_eps,
        attention_bias=False,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.Olmo2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # random norm weights, so a norm applied in the wrong place shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def native_state(hf_model) -> dict[str, torch.Tensor]:
    sd = hf_model.state_dict()
    out = {
        "transformer.wte.weight": sd["model.embed_tokens.weight"],
        "transformer.ln_f.weight": sd["model.norm.weight"],
    }
    out["transformer.ff_out.weight"] = sd["lm_head.weight"]
    for i in range(hf_model.config.num_hidden_layers):
        p, n = f"model.layers.{i}.", f"transformer.blocks.{i}."
        att = [sd[f"{p}self_attn.{x}_proj.weight"] for x in "qkv"]
        out[n + "att_proj.weight"] = torch.cat(att)
        out[n + "attn_out.weight"] = sd[f"{p}self_attn.o_proj.weight"]
        out[n + "q_norm.weight"] = sd[f"{p}self_attn.q_norm.weight"]
        out[n + "k_norm.weight"] = sd[f"{p}self_attn.k_norm.weight"]
        out[n + "attn_norm.weight"] = sd[f"{p}post_attention_layernorm.weight"]
        out[n + "ff_norm.weight"] = sd[f"{p}post_feedforward_layernorm.weight"]
        out[n + "ff_proj.weight"] = torch.cat([sd[f"{p}mlp.up_proj.weight"], sd[f"{p}mlp.gate_proj.weight"]])
        out[n + "ff_out.weight"] = sd[f"{p}mlp.down_proj.weight"]
    return out


@pytest.mark.parametrize("n_kv_heads", [4, 2], ids=["mha", "gqa"])
def test_olmo2_logits_equal_transformers(n_kv_heads):
    cfg = olmo2_config(n_kv_heads)
    hf = hf_reference(cfg)
    ours = build_model(cfg, "cpu").eval()
    ours.load_state_dict(native_state(hf), strict=True)
    ids = torch.randint(
        0, cfg.vocab_size, (2, cfg.max_sequence_length), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    got = got.logits if hasattr(got, "logits") else got
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
