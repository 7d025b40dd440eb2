"""Small quantization fixtures: a checkpoint of the tiny preset shrunk (d_model 128, so int4 groups of
128 fit every row), with the built-in tokenizer, and raw token files to score it on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from olmo_cli.checkpoint.unsharded import write_unsharded
from olmo_cli.config.loader import load_config
from olmo_cli.config.schema import TrainConfig
from olmo_cli.config.yamlio import dump_yaml
from olmo_cli.model.olmo import OLMo, build_model
from olmo_cli.quant.model import build_quantized_model, quantize_state
from olmo_cli.quant.settings import QuantLayout, QuantSettings

SEQ = 32


def tiny_config(*overrides: str) -> TrainConfig:
    base = ["model.d_model=128", "model.n_layers=2", f"model.max_sequence_length={SEQ}"]
    return load_config(preset="tiny", overrides=[*base, *overrides]).config


def write_checkpoint(directory: Path, cfg: TrainConfig, seed: int = 0) -> tuple[Path, OLMo]:
    model = build_model(cfg.model, seed=seed).eval()
    path = write_unsharded(
        directory / "step0-unsharded", model.state_dict(), None, None, dump_yaml(cfg.model_dump(mode="json"))
    )
    return path, model


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
