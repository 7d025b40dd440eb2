"""Initialization: each tensor's distribution (std and truncation) per scheme, checked statistically."""

from __future__ import annotations

import math

import pytest
import torch

from olmo_cli.config.schema import ModelConfig
from olmo_cli.model.init import Constant, Normal, init_rule, init_weights
from olmo_cli.model.olmo import OLMo, build_model
from tests._fixtures import model_config

D, LAYERS, FUSED, VOCAB = 256, 4, 1024, 512  # SwiGLU: block ff_out fan-in FUSED/2


def config(**overrides: object) -> ModelConfig:
    sizes = dict(d_model=D, n_layers=LAYERS, mlp_hidden_size=FUSED, weight_tying=False)
    return model_config(VOCAB, **{**sizes, "init_fn": "mitchell", **overrides})


def truncated_std(std: float, cutoff: float | None) -> float:
    """Standard deviation of N(0, std^2) truncated to +-cutoff*std."""
    if cutoff is None:
        return std
    density = math.exp(-(cutoff**2) / 2) / math.sqrt(2 * math.pi)
    return std * math.sqrt(1 - 2 * cutoff * density / math.erf(cutoff / math.sqrt(2)))


def check(param: torch.Tensor, std: float, cutoff: float | None) -> None:
    observed = param.double().std().item()
    assert observed == pytest.approx(truncated_std(std, cutoff), rel=0.03)
    assert abs(param.double().mean().item()) < 0.05 * std
    if cutoff is not None:
        assert param.abs().max().item() <= cutoff * std * (1 + 1e-6)
        assert param.abs().max().item() > 0.9 * cutoff * std  # truncated at the bound, not far inside


def expected_mitchell(name: str) -> float:
    if name.startswith("transformer.blocks."):
        layer = int(name.split(".")[2])
        if ".attn_out." in name:
            return 1 / math.sqrt(2 * D * (layer + 1))
        if ".ff_out." in name:
            return 1 / math.sqrt(2 * (FUSED // 2) * (layer + 1))
    return 1 / math.sqrt(D)  # wte, top ff_out, att_proj, ff_proj


def test_mitchell_statistics() -> None:
    model = build_model(config(), seed=0)
    for name, param in model.named_parameters():
        check(param, expected_mitchell(name), 3.0)


def test_mitchell_cutoff_and_embedding_std_overrides() -> None:
    model = build_model(config(init_cutoff_factor=2.0, emb_init_std=0.5), seed=1)
    params = dict(model.named_parameters())
    check(params["transformer.wte.weight"], 0.5, 2.0)
    check(params["transformer.blocks.2.attn_out.weight"], 1 / math.sqrt(2 * D * 3), 2.0)


def test_normal_is_untruncated_by_default() -> None:
    model = build_model(config(init_fn="normal", init_std=0.02), seed=2)
    for param in model.parameters():
        check(param, 0.02, None)
    # 65k draws from an untruncated normal: some land beyond 3 std.
    assert model.transformer["blocks"][0].attn_out.weight.abs().max() > 3 * 0.02


def test_normal_with_cutoff() -> None:
    model = build_model(config(init_fn="normal", init_std=0.05, init_cutoff_factor=2.5), seed=3)
    for param in model.parameters():
        check(param, 0.05, 2.5)


def test_full_megatron_statistics() -> None:
    model = build_model(config(init_fn="full_megatron", init_std=0.03, scale_emb_init=True), seed=4)
    params = dict(model.named_parameters())
    check(params["transformer.wte.weight"], 0.03 * math.sqrt(D), 3.0)
    check(params["transformer.ff_out.weight"], 1 / math.sqrt(D), 3.0)
    check(params["transformer.blocks.1.att_proj.weight"], 0.03, 3.0)
    check(params["transformer.blocks.1.ff_proj.weight"], 0.03, 3.0)
    for layer in range(LAYERS):
        for module in ("attn_out", "ff_out"):
            check(params[f"transformer.blocks.{layer}.{module}.weight"], 0.03 / math.sqrt(2 * LAYERS), 3.0)


def test_biases_zero_and_norm_weights_one() -> None:
    cfg = config(
        include_bias=True, layer_norm_with_affine=True, attention_layer_norm=True, embedding_layer_norm=True
    )
    model = OLMo(cfg)
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(7.0)
    init_weights(model, cfg)
    for name, param in model.named_parameters():
        if name.endswith(".bias"):
            assert torch.all(param == 0), name
        elif "norm" in name or "ln_f" in name:
            assert torch.all(param == 1), name
        else:
            assert param.std() > 0, name


def test_rules_by_name() -> None:
    cfg = config()
    assert init_rule("transformer.blocks.3.attn_out.weight", cfg) == Normal(1 / math.sqrt(2 * D * 4), 3.0)
    assert init_rule("transformer.blocks.0._checkpoint_wrapped_module.ff_proj.weight", cfg) == Normal(
        D**-0.5, 3.0
    )
    assert init_rule("transformer.blocks.0.ff_norm.weight", cfg) == Constant(1.0)
    assert init_rule("transformer.ff_out.bias", cfg) == Constant(0.0)
    with pytest.raises(ValueError, match="no initialization rule"):
        init_rule("transformer.mystery.weight", cfg)
    with pytest.raises(ValueError, match="kaiming_normal"):
        init_rule("transformer.wte.weight", config(init_fn="kaiming_normal"))


def test_seeded_build_is_reproducible_and_private() -> None:
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    first = build_model(config(n_layers=1), seed=11).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG was not consumed
    second = build_model(config(n_layers=1), seed=11).state_dict()
    third = build_model(config(n_layers=1), seed=12).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["transformer.wte.weight"], third["transformer.wte.weight"])


def test_olmo2_presets_initialize_as_their_configs_say() -> None:
    # OLMo 2's configs: init_fn normal, std 0.02 cut at 3 std for every matrix (embedding, q/k/v, MLP,
    # output); every RMSNorm weight (attn_norm, ff_norm, q_norm, k_norm, ln_f) starts at one.
    from olmo_cli.config.loader import load_config

    cfg = load_config(preset="olmo2-tiny").config.model
    model = build_model(cfg, seed=5)
    names = dict(model.named_parameters())
    assert {"transformer.blocks.0.q_norm.weight", "transformer.blocks.0.k_norm.weight"} <= set(names)
    for name, param in names.items():
        if param.ndim == 1:
            assert torch.all(param == 1), name
        else:
            check(param, 0.02, 3.0)
    for big in ("olmo2-1b", "olmo2-7b", "olmo2-13b", "olmo2-32b"):
        model_cfg = load_config(preset=big).config.model
        for name in (
            "transformer.wte.weight",
            "transformer.blocks.9.attn_out.weight",
            "transformer.ff_out.weight",
        ):
            assert init_rule(name, model_cfg) == Normal(0.02, 3.0), (big, name)
        assert init_rule("transformer.blocks.9.q_norm.weight", model_cfg) == Constant(1.0)
