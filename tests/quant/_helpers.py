"""Small quantization fixtures: the tiny preset shrunk (d_model 128, so int4 groups of 128 fit every row),
with the built-in tokenizer, quantized in memory, and raw token files to score it on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from olmo_cli.config.schema import TrainConfig
from olmo_cli.model.olmo import OLMo
from olmo_cli.quant.model import build_quantized_model, quantize_state
from olmo_cli.quant.settings import QuantLayout, QuantSettings
from tests._fixtures import tiny_config

SEQ = 32


def quant_config(*overrides: str) -> TrainConfig:
    """The tiny preset at d_model 128 (int4 groups of 128 fit every row), 2 layers, SEQ positions."""
    return tiny_config(
        "model.d_model=128", "model.n_layers=2", f"model.max_sequence_length={SEQ}", *overrides
    )


def quantized(model: OLMo, settings: QuantSettings) -> tuple[OLMo, dict[str, torch.Tensor], QuantLayout]:
    tensors, modules = quantize_state(model.state_dict(), model.config, settings)
    layout = QuantLayout(settings, modules)
    return build_quantized_model(model.config, tensors, layout), tensors, layout


def write_tokens(directory: Path, vocab: int, instances: int, seed: int = 0) -> Path:
    """A directory with one raw uint16 token file (headerless, as `olmo data tokenize` writes)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rng.integers(0, vocab, size=instances * SEQ).astype(np.uint16).tofile(directory / "part-0.npy")
    return directory


def token_ids(vocab: int, batch: int = 2, length: int = SEQ, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
