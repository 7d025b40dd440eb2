"""The arithmetic parameter count (config/derived.py, used by `olmo presets`) equals the parameters of
the model actually built, across the architecture switches."""

import pytest
import torch

from olmo_cli.config.derived import num_params
from olmo_cli.config.loader import load_config
from olmo_cli.model.olmo import build_model
from tests._fixtures import model_config

SMALL = dict(d_model=64, vocab_size=100, embedding_size=128)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"weight_tying": False},
        {"include_bias": True, "layer_norm_with_affine": True},
        {"include_bias": True, "layer_norm_with_affine": True, "bias_for_layer_norm": False},
        {"attention_layer_norm": True, "layer_norm_with_affine": True},
        {"n_kv_heads": 2, "mlp_hidden_size": 200},
        {"activation_type": "gelu", "embedding_layer_norm": True, "layer_norm_with_affine": True},
    ],
)
def test_count_matches_built_model(overrides):
    cfg = model_config(**{**SMALL, **overrides})
    model = build_model(cfg, "meta")
    built = sum(p.numel() for p in model.parameters())
    assert num_params(cfg) == built
    embedding = sum(p.numel() for n, p in model.named_parameters() if ".wte." in n)
    assert num_params(cfg, include_embedding=False) == built - embedding


@pytest.mark.parametrize("preset", ["tiny", "1b", "7b", "7b-0724", "65b"])
def test_count_matches_built_preset(preset):
    cfg = load_config(preset=preset).config.model
    with torch.device("meta"):
        model = build_model(cfg, "meta")
    assert num_params(cfg) == sum(p.numel() for p in model.parameters())
