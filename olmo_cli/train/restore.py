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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from olmo_cli.checkpoint.layout import CONFIG_FILE, find_latest_checkpoint, hint_previous_checkpoint
from olmo_cli.config.schema import TrainConfig
from olmo_cli.errors import CheckpointError, ConfigError
from olmo_cli.model.lora import adapters_detached
from olmo_cli.train.events import EventSink, Message
from olmo_cli.train.state import TrainerState
from olmo_cli.world import World

if TYPE_CHECKING:
    from olmo_cli.checkpoint.kind import Located

__all__ = [
    "Restored",
    "ResumeTarget",
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


def checkpoint_to_load(cfg: TrainConfig, fetch: Callable[[str], Path] | None = None) -> Path | None:
    """`load_path`, or with `try_load_latest_save` the newest checkpoint in `save_folder` (if any), else
    upstream's fallback, the newest complete one in `remote_save_folder`. A checkpoint on an object store
    (`s3://…`, docs/format.md §4.9) is the local directory `fetch(url)` downloads it to."""
    from olmo_cli.hub.objstore import is_store_url

    if cfg.try_load_latest_save:
        latest = find_latest_checkpoint(cfg.save_folder)
        if latest is not None:
            return latest
        if cfg.remote_save_folder is not None and fetch is not None:
            from olmo_cli.hub.objstore import parse_store_url
            from olmo_cli.train.remote import latest_checkpoint_url

            remote = latest_checkpoint_url(parse_store_url(cfg.remote_save_folder))
            if remote is not None:
                return fetch(str(remote))
    if cfg.load_path is None:
        return None
    if is_store_url(cfg.load_path):
        if fetch is None:
            raise ConfigError(f"load_path {cfg.load_path} is a URL; only a training run downloads one")
        return fetch(cfg.load_path)
    path = Path(cfg.load_path.rstrip("/") or cfg.load_path).expanduser()
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint {cfg.load_path} does not exist"
            if not path.exists()
            else f"{path} is not a directory",
            hint="give a checkpoint directory such as run/step1000-unsharded, or the URL of one on an object "
            "store (s3://BUCKET/RUN/step1000-unsharded)",
        )
    return path


class ResumeTarget(NamedTuple):
    """What `olmo resume` continues."""

    directory: Path  # the run directory
    checkpoint: Path  # a local checkpoint directory
    config_file: Path  # the config to continue with
    url: str | None  # the object-store URL `checkpoint` was downloaded from, if it was


def resume_target(
    run_dir: Path | None, load_path: str | Path | None, events: EventSink | None = None
) -> ResumeTarget:
    """What `olmo resume` continues: run directory, checkpoint, config file, and where it came from.

    `load_path` (a checkpoint, or a run folder: its latest) wins; its run directory defaults to the
    checkpoint's parent. Else the newest checkpoint in `run_dir` (default: the current directory).
    A `load_path` URL on an object store (docs/format.md §4.9) is downloaded first, reported as
    `events`; its run directory defaults to the `save_folder` its config.yaml names."""
    from olmo_cli.checkpoint.kind import locate_checkpoint
    from olmo_cli.hub.objstore import is_store_url
    from olmo_cli.load.read import refuse_kinds

    url: str | None = None
    if load_path is not None and is_store_url(str(load_path)):
        from olmo_cli.train.remote import fetch_checkpoint

        url = str(load_path)
        say = events or (lambda event: None)
        located = locate_checkpoint(fetch_checkpoint(str(load_path), say))
        directory = run_dir if run_dir is not None else _saved_folder(located.path)
        if run_dir is None:
            say(Message(f"continuing in {directory}, the save_folder of {located.path / CONFIG_FILE}"))
    elif load_path is not None:
        located = locate_checkpoint(Path(load_path))
        directory = run_dir if run_dir is not None else located.path.resolve().parent
    else:
        directory = run_dir if run_dir is not None else Path(".")
        found = find_latest_checkpoint(directory)
        if found is None:
            found, url = _uploaded_checkpoint(directory, events or (lambda event: None))
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
            return ResumeTarget(directory, checkpoint, candidate, url)
    raise CheckpointError(
        f"neither {directory} nor {checkpoint} has a {CONFIG_FILE}",
        hint=f"a run directory and its checkpoints hold the run's {CONFIG_FILE}",
    )


def _uploaded_checkpoint(directory: Path, events: EventSink) -> tuple[Path | None, str | None]:
    """A run directory without checkpoints (a new machine, a wiped disk) whose config.yaml has a
    `remote_save_folder`: the newest checkpoint uploaded there, downloaded, and its URL; (None, None)
    if there is none."""
    from olmo_cli.config.yamlio import read_yaml
    from olmo_cli.hub.objstore import is_store_url, parse_store_url

    if not (directory / CONFIG_FILE).is_file():
        return None, None
    saved = read_yaml(directory / CONFIG_FILE, error=CheckpointError)
    remote = saved.get("remote_save_folder") if isinstance(saved, dict) else None
    if not isinstance(remote, str) or not is_store_url(remote):
        return None, None
    from olmo_cli.train.remote import fetch_checkpoint, latest_checkpoint_url

    latest = latest_checkpoint_url(parse_store_url(remote))
    if latest is None:
        return None, None
    events(Message(f"{directory} holds no checkpoint: continuing from the newest one uploaded, {latest}"))
    return fetch_checkpoint(str(latest), events), str(latest)


def _saved_folder(checkpoint: Path) -> Path:
    """The `save_folder` a downloaded checkpoint's config.yaml names (where its run wrote), if it may take
    the run: absent or empty, or a run directory uploading to the same `remote_save_folder`. The
    checkpoint came from elsewhere, so its config may not pick a directory holding something else."""
    from olmo_cli.config.yamlio import read_yaml

    saved = read_yaml(checkpoint / CONFIG_FILE, error=CheckpointError)
    folder = saved.get("save_folder") if isinstance(saved, dict) else None
    if not isinstance(folder, str) or not folder.strip():
        raise CheckpointError(
            f"{checkpoint / CONFIG_FILE} names no save_folder to continue the run in",
            hint="give the run directory: olmo resume RUN_DIR --load-path URL",
        )
    directory = Path(folder).expanduser()
    if not directory.exists() or (directory.is_dir() and not any(directory.iterdir())):
        return directory
    remote = saved.get("remote_save_folder")
    own = directory / CONFIG_FILE
    if directory.is_dir() and own.is_file() and isinstance(remote, str):
        theirs = read_yaml(own, error=CheckpointError)
        if isinstance(theirs, dict) and theirs.get("remote_save_folder") == remote:
            return directory
    raise CheckpointError(
        f"{directory}, the save_folder of {checkpoint / CONFIG_FILE}, holds something other than this run",
        hint="give the run directory to continue in: olmo resume RUN_DIR --load-path URL",
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
