"""The one table of precisions and the one of activation-checkpointing modes cover every value the
config accepts, and mean what torch and the trainer take them to mean."""

from __future__ import annotations

from typing import get_args

import pytest
import torch

from olmo_cli.config.activation_checkpointing import checkpointed_blocks
from olmo_cli.config.precision import PRECISIONS, autocast_dtype, compute_dtype, precision_of
from olmo_cli.config.schema import ActivationCheckpointing, TrainConfig

# `precision: Literal[...] | None`
(PRECISION_LITERAL,) = [
    a for a in get_args(TrainConfig.model_fields["precision"].annotation) if a is not type(None)
]


def _config(**updates: object) -> TrainConfig:
    return TrainConfig().model_copy(update=updates)


def test_every_configurable_precision_is_in_the_table():
    assert sorted(get_args(PRECISION_LITERAL)) == sorted(PRECISIONS)


@pytest.mark.parametrize(
    ("precision", "autocast", "compute"),
    [
        ("amp_bf16", torch.bfloat16, torch.bfloat16),
        ("amp_fp16", torch.float16, torch.float16),
        ("fp32", None, torch.float32),
        (None, None, torch.float32),  # unset: fp32, as upstream
    ],
)
def test_precision_dtypes(precision, autocast, compute):
    cfg = _config(precision=precision)
    assert autocast_dtype(cfg) is autocast
    assert compute_dtype(cfg) is compute
    assert precision_of(cfg).bytes == torch.empty(0, dtype=compute).element_size()


@pytest.mark.parametrize("mode", get_args(ActivationCheckpointing))
def test_every_configurable_checkpointing_mode_is_in_the_table(mode):
    blocks = checkpointed_blocks(mode, 12)
    assert blocks == sorted(set(blocks)) and all(0 <= i < 12 for i in blocks)
    assert (blocks == []) == (mode == "fine_grained")  # only fine_grained checkpoints inside the blocks
