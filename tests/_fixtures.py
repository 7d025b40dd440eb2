"""What the tests share: small model configs, tiny models, the shipped presets shrunk, and checkpoints
written from them. Session fixtures built on these (trained runs, checkpoints made once) are in
tests/conftest.py.

- `model_config` / `tiny_model`: a bare ModelConfig (or a model built from it) of the tiny preset's
  architecture at a few thousand parameters; each test passes the sizes it depends on.
- `preset` / `small` / `tiny_config`: a shipped preset as a run loads it; shrunk to the few-thousand
  parameter model the trainer tests use; the tiny preset with `--set`-style overrides.
- `SMALL_ARGS`: `small("tiny")` as `olmo train` options, for the tests that run the real command.
- `write_checkpoint`: a model's weights saved as one of our unsharded checkpoints with its config.yaml.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from olmo_cli.checkpoint.unsharded import write_unsharded
from olmo_cli.config.loader import load_config
from olmo_cli.config.schema import ModelConfig, TrainConfig
from olmo_cli.config.yamlio import dump_yaml
from olmo_cli.model.olmo import OLMo, build_model

# The tiny preset's (OLMo 1) architecture: RoPE, SwiGLU, no biases, non-parametric layer norms; no dropout.
OLMO_1_ARCH = {
    "rope": True,
    "include_bias": False,
    "layer_norm_with_affine": False,
    "attention_dropout": 0.0,
    "residual_dropout": 0.0,
    "embedding_dropout": 0.0,
}
TINY_SIZES = {
    "d_model": 32,
    "n_heads": 4,
    "n_layers": 2,
    "vocab_size": 64,
    "embedding_size": 64,
    "max_sequence_length": 64,
    "eos_token_id": 0,
    "pad_token_id": 1,
}


def model_config(vocab: int | None = None, **fields: Any) -> ModelConfig:
    """The OLMo 1 architecture at d_model 32, 4 heads, 2 layers, 64 positions, a 64-token tied
    vocabulary (EOS 0, padding 1); `vocab` sets the vocabulary and embedding size at once, `fields`
    replace anything."""
    sizes = {"vocab_size": vocab, "embedding_size": vocab} if vocab is not None else {}
    return ModelConfig(**{**OLMO_1_ARCH, **TINY_SIZES, **sizes, **fields})


def tiny_model(vocab: int | None = None, seed: int = 0, **fields: Any) -> OLMo:
    """`model_config(vocab, **fields)` built on the CPU from `seed`, in eval mode."""
    return build_model(model_config(vocab, **fields), "cpu", seed=seed).eval()


@functools.cache
def _preset(name: str) -> TrainConfig:
    return load_config(preset=name).config


def preset(name: str, **updates: object) -> TrainConfig:
    """A fresh copy of preset `name` (tests may change it), with top-level fields replaced."""
    return _preset(name).model_copy(deep=True, update=updates)


SMALL = {
    "d_model": 32,
    "n_heads": 4,
    "n_layers": 2,
    "mlp_ratio": 4,
    "mlp_hidden_size": None,
    "vocab_size": 60,
    "embedding_size": 64,
    "max_sequence_length": 16,
}


def small(name: str = "tiny", **model_updates: object) -> TrainConfig:
    """Preset `name` with its model shrunk to a few thousand parameters, other switches kept."""
    cfg = preset(name)
    model = ModelConfig.model_validate(cfg.model.model_dump() | SMALL | model_updates)
    return cfg.model_copy(update={"model": model})


# `small("tiny")` as options of `olmo train`: its model, fp32, no evaluators, a fixed peak, no wandb.
SMALL_ARGS = [
    "--preset",
    "tiny",
    *("--set", "model.d_model=32", "--set", "model.n_heads=4", "--set", "model.n_layers=2"),
    *("--set", "model.max_sequence_length=16", "--set", "model.vocab_size=60"),
    *("--set", "model.embedding_size=64", "--set", "precision=fp32", "--set", "evaluators=[]"),
    *("--set", "speed_monitor.gpu_flops_available=1e12", "--no-wandb"),
]


def tiny_config(*overrides: str) -> TrainConfig:
    """The tiny preset with `overrides` applied as `olmo --set` applies them."""
    return load_config(preset="tiny", overrides=list(overrides)).config if overrides else preset("tiny")


def write_checkpoint(
    directory: Path,
    cfg: TrainConfig,
    seed: int = 0,
    *,
    model: OLMo | None = None,
    name: str = "step0-unsharded",
) -> tuple[Path, OLMo]:
    """`model` (else one built from `cfg` with `seed`) saved as `directory/name`, an unsharded
    checkpoint of weights alone with `cfg` as its config.yaml; returns (checkpoint, model in eval mode)."""
    model = (model or build_model(cfg.model, seed=seed)).eval()
    config_text = dump_yaml(cfg.model_dump(mode="json"))
    return write_unsharded(directory / name, model.state_dict(), None, None, config_text), model
