"""Refusing, before any work, a model that cannot fit: a `--set model.d_model=...` typo of a few digits
asks for petabytes, and allocating them fails deep inside torch (or the kernel kills the process)."""

from __future__ import annotations

import torch

from olmo_cli.config.derived import num_params
from olmo_cli.config.schema import TrainConfig
from olmo_cli.errors import ConfigError
from olmo_cli.memory import device_memory, human_bytes

__all__ = ["check_model_fits"]

# fp32 weights, gradients and AdamW's two moments; a LoRA run trains adapters only, so its base needs
# just the weights. Both are lower bounds: activations and buffers come on top.
_BYTES_FULL = 16
_BYTES_FROZEN = 4


def check_model_fits(cfg: TrainConfig, device: torch.device, world_size: int, processes_here: int) -> None:
    """Raises ConfigError when the parameters and optimizer state alone exceed the memory of a process
    (sharded over `world_size` processes by FSDP)."""
    params = num_params(cfg.model)
    per_param = _BYTES_FROZEN if cfg.lora is not None else _BYTES_FULL
    need = per_param * params // max(world_size, 1)
    have = device_memory(device, processes_here)
    if have is None or need <= have:
        return
    raise ConfigError(
        f"the model has {params:,} parameters: training needs at least {human_bytes(need)} per process "
        f"for its weights{', gradients and AdamW state' if cfg.lora is None else ''}, but a process here has "
        f"{human_bytes(have)} ({device.type})",
        hint="check model.d_model, n_layers, mlp_ratio and vocab sizes (olmo presets show --config ... "
        "prints the parameter count), or train on more devices",
    )
