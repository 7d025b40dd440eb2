"""Small native checkpoints for the conversion tests: the tiny preset shrunk, with the built-in tokenizer."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from olmo_cli.checkpoint.unsharded import write_unsharded
from olmo_cli.config.loader import load_config
from olmo_cli.config.schema import TrainConfig
from olmo_cli.config.yamlio import dump_yaml
from olmo_cli.model.olmo import OLMo, build_model


def tiny_train_config(*overrides: str) -> TrainConfig:
    base = [
        "model.d_model=64",
        "model.n_layers=2",
        "model.max_sequence_length=128",
        # A large init std: logits far apart, so agreement is not an accident of near-zero activations.
        "model.init_fn=normal",
        "model.init_std=0.3",
    ]
    return load_config(preset="tiny", overrides=[*base, *overrides]).config


def write_native(directory: Path, cfg: TrainConfig, seed: int = 0) -> tuple[Path, OLMo]:
    model = build_model(cfg.model, seed=seed).eval()
    path = write_unsharded(
        directory / "step0-unsharded", model.state_dict(), None, None, dump_yaml(cfg.model_dump(mode="json"))
    )
    return path, model


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
