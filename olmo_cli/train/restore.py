"""Loading a checkpoint into a freshly built model and optimizer (docs/format.md §4.7).

`load_path` (or, with `try_load_latest_save`, the newest checkpoint in `save_folder`) names a
`step{N}-unsharded/` directory in upstream's layout (ours, or an official one), a sharded `step{N}/`
written by torch.distributed.checkpoint at any world size, or a Hugging Face Olmo directory (weights
only). Weights always load; the optimizer unless `reset_optimizer_state`; the trainer state unless
`reset_trainer_state`. The LR, initial LR and weight decay then follow the config and the schedule, not
the file.

The two resets describe how a run starts from someone else's checkpoint (a finetune: weights only). A
run continuing from its own checkpoint (`olmo resume`) restores everything, whatever they say, as
upstream's `try_load_latest_save` does; so a finetune resumes where it stopped, not from its base.
With LoRA (`cfg.lora`), a base checkpoint has no adapters: they keep their initialization.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from olmo_cli.checkpoint.layout import CONFIG_FILE, find_latest_checkpoint, hint_previous_checkpoint
from olmo_cli.config.schema import TrainConfig
from olmo_cli.errors import CheckpointError
from olmo_cli.model.lora import adapters_detached
from olmo_cli.train.state import TrainerState
from olmo_cli.world import World

if TYPE_CHECKING:
    from olmo_cli.checkpoint.kind import Located

__all__ = [
    "Restored",
    "checkpoint_to_load",
    "restore_checkpoint",
    "resume_target",
    "set_optimizer_hyperparameters",
]


@dataclass
class Restored:
    """What a checkpoint gave: the path, the state to continue from, and parts applied later."""

    path: Path | None = None
    state: TrainerState = field(default_factory=TrainerState)
    rng: dict[str, Any] | None = None  # to restore right before the first step
    callbacks: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] | None = None  # unsharded optimizer state, loaded once the LR is known
    warnings: list[str] = field(default_factory=list)
    optimizer_reset: bool = False  # reset_optimizer_state applied: the optimizer starts fresh


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


def resume_target(run_dir: Path | None, load_path: Path | None) -> tuple[Path, Path, Path]:
    """What `olmo resume` continues: (run directory, checkpoint, config file to use).

    `load_path` (a checkpoint, or a run folder: its latest) wins; its run directory defaults to the
    checkpoint's parent. Else the newest checkpoint in `run_dir` (default: the current directory)."""
    from olmo_cli.checkpoint.kind import locate_checkpoint
    from olmo_cli.load.read import refuse_kinds

    if load_path is not None:
        located = locate_checkpoint(load_path)
        directory = run_dir if run_dir is not None else located.path.resolve().parent
    else:
        directory = run_dir if run_dir is not None else Path(".")
        found = find_latest_checkpoint(directory)
        if found is None:
            raise CheckpointError(
                f"no checkpoint (stepN/ or stepN-unsharded/) in {directory}",
                hint="give the run directory of a run that saved a checkpoint, or --load-path CKPT",
            )
        located = locate_checkpoint(found)
    refuse_kinds(located, "olmo resume")
    checkpoint = located.path
    for candidate in (directory / CONFIG_FILE, checkpoint / CONFIG_FILE):
        if candidate.is_file():
            return directory, checkpoint, candidate
    raise CheckpointError(
        f"neither {directory} nor {checkpoint} has a {CONFIG_FILE}",
        hint=f"a run directory and its checkpoints hold the run's {CONFIG_FILE}",
    )


def restore_checkpoint(
    cfg: TrainConfig,
    model: nn.Module,
    optim: torch.optim.Optimizer,
    world: World,
    path: Path,
    *,
    own: bool = False,
) -> Restored:
    """Loads the weights (and for a sharded checkpoint the optimizer) into `model`/`optim`; returns the
    trainer state to continue from. `own`: the checkpoint is this run's (resets do not apply). Raises
    CheckpointError naming mismatched keys and shapes.

    The kind comes from `checkpoint.kind`, as for every command; an unsharded or Hugging Face checkpoint
    is read by `load.read.read_checkpoint`, a sharded one by DCP straight into the live (sharded) model
    and optimizer, at any world size."""
    from olmo_cli.checkpoint.kind import Located, checkpoint_kind
    from olmo_cli.load.read import refuse_kinds

    located = Located(path, checkpoint_kind(path) or "sharded")
    refuse_kinds(located, "training from it")
    reset_trainer = cfg.reset_trainer_state and not own
    restored = Restored(path=path, optimizer_reset=cfg.reset_optimizer_state and not own)
    load_optim = not restored.optimizer_reset
    saved: dict[str, Any] | None = None
    base_only = cfg.lora is not None and not own
    try:
        with adapters_detached(model) if base_only else contextlib.nullcontext():
            if located.kind == "sharded":
                from olmo_cli.checkpoint.sharded import read_sharded

                target = optim if load_optim else None
                saved = read_sharded(path, model=model, optim=target, world=world, warnings=restored.warnings)
            else:
                saved = _load_full(cfg, model, located, restored, load_optim, reset_trainer, base_only)
    except CheckpointError as e:
        hint_previous_checkpoint(e, path)
        raise
    if reset_trainer:
        saved = None
    if saved is not None:
        restored.state, same_world = TrainerState.restored(saved, cfg, world.world_size)
        if same_world:
            restored.rng = saved["rng"]
        callbacks = saved.get("callbacks")
        if isinstance(callbacks, dict):
            restored.callbacks = callbacks
    return restored


def _load_full(
    cfg: TrainConfig,
    model: nn.Module,
    located: Located,
    restored: Restored,
    load_optim: bool,
    reset_trainer: bool,
    base_only: bool,
) -> dict[str, Any] | None:
    """An unsharded checkpoint (weights, optimizer, trainer state) or a Hugging Face directory (weights
    only) loaded into the model; returns the trainer state."""
    from olmo_cli.checkpoint.model_state import check_model_state
    from olmo_cli.load.read import read_checkpoint
    from olmo_cli.train.parallelize import load_full_model_state

    own_lora = cfg.lora is not None and not base_only
    found = read_checkpoint(
        located.path, config=cfg, optim=load_optim, trainer=not reset_trainer, check_weights=not own_lora
    )
    if own_lora:
        # A LoRA run's own checkpoint: its base part is checked against the config here, the adapters
        # against the model when they load.
        from olmo_cli.model.lora import is_adapter_name

        base = {k: v for k, v in found.state.items() if not is_adapter_name(k)}
        check_model_state(base, cfg.model, source=str(located.path))
    load_full_model_state(model, found.state)
    restored.warnings += found.warnings
    if found.kind == "hf" and not restored.optimizer_reset:
        restored.warnings.append(f"{located.path} is a Hugging Face directory: it has no optimizer state")
    restored.optim = found.optim
    return found.trainer


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
