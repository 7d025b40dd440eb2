"""Shared helpers for the training-engine tests: the shipped presets, loaded the way a run loads them,
small models with their architecture switches, and `olmo` run as a separate process."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

from olmo_cli.config.loader import load_config
from olmo_cli.config.schema import ModelConfig, TrainConfig


@functools.cache
def _preset(name: str) -> TrainConfig:
    return load_config(preset=name).config


def preset(name: str, **updates: object) -> TrainConfig:
    """A fresh copy of preset `name` (tests may change it), with top-level fields replaced."""
    return _preset(name).model_copy(deep=True, update=updates)


def significant(x: float, digits: int) -> float:
    """`x` rounded to `digits` significant figures, to compare with a published check value."""
    return float(f"{x:.{digits}g}")


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


def small(name: str, **model_updates: object) -> TrainConfig:
    """Preset `name` with its model shrunk to a few thousand parameters, other switches kept."""
    cfg = preset(name)
    model = ModelConfig.model_validate(cfg.model.model_dump() | SMALL | model_updates)
    return cfg.model_copy(update={"model": model})


REPO = Path(__file__).resolve().parents[2]


def olmo_process(*args: str, cwd: Path) -> None:
    """`python -m olmo_cli ARGS` in its own process (free of any torchrun variables of ours); asserts it
    succeeded, showing the ends of its output when not."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-m", "olmo_cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
