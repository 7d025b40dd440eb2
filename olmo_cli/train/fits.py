"""Refusing, before any work, a model that cannot fit: a `--set model.d_model=...` typo of a few digits
asks for petabytes, and allocating them fails deep inside torch (or the kernel kills the process)."""

from __future__ import annotations

import torch

from olmo_cli.config.derived import memory_per_rank, num_params
from olmo_cli.config.schema import TrainConfig
from olmo_cli.errors import ConfigError
from olmo_cli.memory import device_memory, human_bytes

__all__ = ["check_model_fits"]


def check_model_fits(cfg: TrainConfig, device: torch.device, world_size: int, processes_here: int) -> None:
    """Raises ConfigError when the parameters and optimizer state alone exceed the memory of a process
    (sharded over `world_size` processes by FSDP)."""
    params = num_params(cfg.model)
    # The plan's fp32 weights, gradients and AdamW moments; a LoRA run trains adapters only, so its base
    # needs just the weights. Both are lower bounds: activations and buffers come on top.
    memory = memory_per_rank(cfg, max(world_size, 1))
    need = memory.params if cfg.lora is not None else memory.sharded_states
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
