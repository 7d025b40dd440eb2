"""Loading a checkpoint into a freshly built model and optimizer (olmo-format.md §4.7).

`load_path` (or, with `try_load_latest_save`, the newest checkpoint in `save_folder`) names a
`step{N}-unsharded/` directory in upstream's layout (ours, or an official one) or a sharded `step{N}/`
written by torch.distributed.checkpoint at any world size. Weights always load; the optimizer unless
`reset_optimizer_state`; the trainer state unless `reset_trainer_state`. The LR, initial LR and weight
decay then follow the config and the schedule, not the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from olmo_cli.checkpoint.layout import find_latest_checkpoint, is_unsharded
from olmo_cli.config.schema import TrainConfig
from olmo_cli.errors import CheckpointError
from olmo_cli.train.distributed import World
from olmo_cli.train.state import TrainerState

__all__ = ["Restored", "checkpoint_to_load", "restore_checkpoint", "set_optimizer_hyperparameters"]


@dataclass
class Restored:
    """What a checkpoint gave: the path, the state to continue from, and parts applied later."""

    path: Path | None = None
    state: TrainerState = field(default_factory=TrainerState)
    rng: dict[str, Any] | None = None  # to restore right before the first step
    callbacks: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] | None = None  # unsharded optimizer state, loaded once the LR is known
    warnings: list[str] = field(default_factory=list)


def checkpoint_to_load(cfg: TrainConfig) -> Path | None:
    """`load_path`, or with `try_load_latest_save` the newest checkpoint in `save_folder` (if any)."""
    if cfg.try_load_latest_save:
        latest = find_latest_checkpoint(cfg.save_folder)
        if latest is not None:
            return latest
    if cfg.load_path is None:
        return None
    path = Path(cfg.load_path.rstrip("/") or cfg.load_path).expanduser()
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint {cfg.load_path} does not exist"
            if not path.exists()
            else f"{path} is not a directory",
            hint="give a checkpoint directory such as run/step1000-unsharded (remote checkpoints: download "
            "them first)",
        )
    return path


def restore_checkpoint(
    cfg: TrainConfig, model: nn.Module, optim: torch.optim.Optimizer, world: World, path: Path
) -> Restored:
    """Loads the weights (and for a sharded checkpoint the optimizer) into `model`/`optim`; returns the
    trainer state to continue from. Raises CheckpointError naming mismatched keys and shapes."""
    restored = Restored(path=path)
    load_optim = not cfg.reset_optimizer_state
    saved: dict[str, Any] | None = None
    if is_unsharded(path):
        from olmo_cli.checkpoint.unsharded import read_unsharded
        from olmo_cli.train.parallelize import load_full_model_state

        ckpt = read_unsharded(
            path,
            load_optim=load_optim,
            load_trainer=not cfg.reset_trainer_state,
            model_config=cfg.model,
        )
        load_full_model_state(model, ckpt.model)
        restored.optim = ckpt.optim
        restored.warnings += ckpt.warnings
        saved = ckpt.trainer
    else:
        from olmo_cli.checkpoint.sharded import read_sharded

        saved = read_sharded(
            path, model=model, optim=optim if load_optim else None, world=world, warnings=restored.warnings
        )
        if cfg.reset_trainer_state:
            saved = None
    if saved is not None:
        restored.state, same_world = TrainerState.restored(saved, cfg, world.world_size)
        if same_world:
            restored.rng = saved["rng"]
        callbacks = saved.get("callbacks")
        if isinstance(callbacks, dict):
            restored.callbacks = callbacks
    return restored


def set_optimizer_hyperparameters(
    optim: torch.optim.Optimizer, restored: Restored, cfg: TrainConfig, lr: float
) -> None:
    """Loads the unsharded optimizer state (if any) and sets every group's LR to the schedule's value,
    `initial_lr` to the config's and the decayed groups' weight decay to the config's (§4.7)."""
    if restored.optim is not None:
        from olmo_cli.train.optim_state import load_upstream_optimizer_state

        load_upstream_optimizer_state(optim, restored.optim, lr=lr, cfg=cfg.optimizer)
        restored.optim = None  # the optimizer now holds its tensors
        return
    for group in optim.param_groups:
        group["lr"] = lr
        group["initial_lr"] = cfg.optimizer.learning_rate
        if group.get("weight_decay", 0.0) > 0.0:
            group["weight_decay"] = cfg.optimizer.weight_decay
