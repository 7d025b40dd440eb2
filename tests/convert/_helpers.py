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
