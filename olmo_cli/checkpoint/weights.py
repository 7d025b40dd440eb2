"""`CheckpointWeights`: what reading any checkpoint gives, whatever its kind (see `olmo_cli.load`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from olmo_cli.checkpoint.kind import CheckpointKind
from olmo_cli.config.schema import TrainConfig

__all__ = ["CheckpointConfig", "CheckpointWeights"]


@dataclass
class CheckpointConfig:
    """A checkpoint's config without its weights."""

    path: Path
    kind: CheckpointKind
    config: TrainConfig
    tokenizer_file: Path | None = None
    """A tokenizer.json stored with the checkpoint; it wins over config.tokenizer.identifier."""


@dataclass
class CheckpointWeights(CheckpointConfig):
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    """Native parameter names, fp32, on the CPU. For a quantized checkpoint: the stored tensors (packed
    `M.qweight`/`M.scales`/`M.zeros` per quantized module M, see `olmo_cli.quant.model`)."""
    warnings: list[str] = field(default_factory=list)
    quantization: Any = None
    """Set for a quantized checkpoint (kind "quantized"): its `olmo_cli.quant.settings.QuantLayout`
    (method, group size, quantized modules). Typed loosely: quant/ sits above this package."""
    optim: dict[str, Any] | None = None
    """The unsharded optimizer state, when asked for and present (see `checkpoint.unsharded`)."""
    trainer: dict[str, Any] | None = None
    """The trainer state (train.pt), when asked for and present."""
