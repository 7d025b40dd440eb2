"""The conversion tests' model (the tiny preset shrunk, with the built-in tokenizer; written with
`tests._fixtures.write_checkpoint`) and a capture of what transformers logs."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from olmo_cli.config.schema import TrainConfig
from tests._fixtures import tiny_config


def tiny_train_config(*overrides: str) -> TrainConfig:
    """The tiny preset at d_model 64, 2 layers, 128 positions, with a large init std: logits far apart,
    so agreement is not an accident of near-zero activations."""
    base = ["model.d_model=64", "model.n_layers=2", "model.max_sequence_length=128"]
    return tiny_config(*base, "model.init_fn=normal", "model.init_std=0.3", *overrides)


@contextmanager
def transformers_log() -> Iterator[io.StringIO]:
    """Everything transformers logs at WARNING or above while the block runs."""
    import transformers

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    logger = transformers.logging.get_logger()  # the library's root logger: every module logs through it
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def olmo2_model(*overrides: str):
    """(config, model): olmo2-tiny at d_model 64, 2 layers, 128 positions, init std 0.3, and every norm
    weight (attn_norm, ff_norm, q_norm, k_norm, ln_f) drawn from [0.5, 1.5], so a norm mapped to the
    wrong place changes the logits."""
    import torch

    from olmo_cli.config.loader import load_config
    from olmo_cli.model.olmo import build_model

    base = ["model.d_model=64", "model.n_layers=2", "model.max_sequence_length=128", "model.init_std=0.3"]
    cfg = load_config(preset="olmo2-tiny", overrides=[*base, *overrides]).config
    model = build_model(cfg.model, seed=0)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.copy_(0.5 + torch.rand(param.shape, generator=generator))
    return cfg, model
