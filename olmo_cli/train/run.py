"""`run(cfg, events=...)`: the one entry point of training, shared by `olmo train`, `olmo resume` and
`olmo finetune` (docs/architecture.md rule 11).

The sequence, in the order `run` performs it:
    world -> data (settled into the config) -> run directory + config.yaml -> dataset -> model on meta
    -> parallelize (AC, compile, FSDP; materialize, initialize) -> optimizer -> checkpoint (if any)
    -> loader -> schedule -> callbacks -> trainer -> fit
Every rank of a torchrun job runs it; only the main rank writes shared files and emits events.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from olmo_cli.config.derived import flops_per_token
from olmo_cli.config.schema import TrainConfig
from olmo_cli.data.dataset import MemmapDataset, build_dataset
from olmo_cli.errors import ConfigError
from olmo_cli.hub.objstore import StoreURL, is_store_url, parse_store_url
from olmo_cli.train import duration
from olmo_cli.train.callbacks.base import Callback, CallbackList
from olmo_cli.train.callbacks.checkpointer import Checkpointer, checked_lists
from olmo_cli.train.callbacks.evaluator import EvalSet, Evaluator
from olmo_cli.train.callbacks.feed import EventFeed
from olmo_cli.train.callbacks.metrics_file import METRICS_FILE, MetricsFile
from olmo_cli.train.events import Event, EventSink, Message, RunFinished, RunStarted
from olmo_cli.train.fits import check_model_fits
from olmo_cli.train.loader import BatchLoader, given_order_copy
from olmo_cli.train.loop import Schedule, StopReason, Trainer
from olmo_cli.train.plan import batch_split
from olmo_cli.train.prepare import (
    check_data,
    claim_run_dir,
    config_yaml,
    on_main,
    release_run_dirs,
    resolve_data,
)
from olmo_cli.train.remote import check_remote_save, check_store_clients, fetch_checkpoint
from olmo_cli.train.restore import (
    Restored,
    checkpoint_to_load,
    restore_checkpoint,
    set_optimizer_hyperparameters,
)
from olmo_cli.train.schedule import BoltOnWarmup
from olmo_cli.train.signals import StopRequest, stop_on_signals
from olmo_cli.train.speed import SpeedMonitor, run_peak_flops
from olmo_cli.train.state import TrainerState, restore_rng
from olmo_cli.world import World, close_world, init_world

__all__ = ["RunOptions", "RunResult", "run"]


@dataclass(frozen=True)
class RunOptions:
    """How to run a config, as opposed to what the config says."""

    data: Sequence[str] | None = None  # token data replacing data.paths (`--data`)
    data_order_file: str | None = None  # a raw uint32 order for the first epoch (`--data-order-file`)
    device: str | None = None  # "cpu", "cuda" or None (cuda when available)
    wandb: bool = True  # False: no wandb even when the config has a wandb section (`--no-wandb`)
    continuing: bool = False  # `olmo resume`: the save folder is this run's own
    corpus_cache_dir: Path | None = None  # where the default corpus is tokenized (default: user cache)
    peak_flops: float | None = None  # one device's peak FLOP/s for MFU; None: look it up or measure
    source_url: str | None = None  # the object-store URL load_path was downloaded from (`olmo resume`)


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    step: int
    reason: str
    first_loss: float | None
    last_loss: float | None
    checkpoint: Path | None


def _main_only(events: EventSink, world: World) -> EventSink:
    return events if world.is_main else (lambda event: None)


def seed_all(seed: int) -> None:
    """Python's, NumPy's and torch's global RNGs, as upstream seeds them at start (dropout draws here)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run(cfg: TrainConfig, *, events: EventSink, options: RunOptions | None = None) -> RunResult:
    """Trains `cfg` to its stop step (or until the data ends, or SIGTERM/SIGINT) and returns how it ended."""
    options = options or RunOptions()
    # From the start, not only around the training loop: under --nproc-per-node a signal relayed while a
    # rank is still preparing would otherwise kill that rank (the default action) while the others go
    # on to save. A stop asked for before the first step is honoured at the first step boundary.
    stop = StopRequest()
    with stop_on_signals(stop):
        world = init_world(options.device)
        try:
            result = _run(cfg, _main_only(events, world), options, world, stop)
        except BaseException:
            close_world(world)
            raise
        finally:
            release_run_dirs()
        close_world(world, synchronize=True)
    return result


@dataclass(frozen=True)
class _Prepared:
    cfg: TrainConfig  # with the data settled into it
    data_note: str
    run_dir: Path
    config_yaml: str
    load_from: Path | None
    continuing: bool  # the checkpoint belongs to this run directory
    own_remote: bool  # the checkpoint was downloaded from this run's own remote_save_folder
    dataset: MemmapDataset
    scanned: bool  # every token id was checked against the vocabulary


def _run(
    cfg: TrainConfig, events: EventSink, options: RunOptions, world: World, stop: StopRequest
) -> RunResult:
    batch_split(cfg, world.world_size)  # indivisible batch sizes fail before anything else happens
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or 1) if world.device.type == "cpu" else 1
    check_model_fits(cfg, world.device, world.world_size, local)  # so does a model of impossible size
    # 1. data -> run directory -> dataset
    prep = _prepare(cfg, events, options, world)
    cfg = prep.cfg
    # 2. model (meta) -> parallelize -> optimizer -> checkpoint
    seed_all(cfg.seed)
    model, optim = _build_model(cfg, world)
    restored = Restored()
    if prep.load_from is not None:
        restored = restore_checkpoint(cfg, model, optim, world, prep.load_from, own=prep.continuing)
        for warning in restored.warnings:
            events(Message(warning, level="warning"))
    state = restored.state
    # 3. loader -> schedule
    loader = _loader(cfg, prep.dataset, world, options, state, restored.path)
    schedule = _schedule(cfg, state, loader, optimizer_reset=restored.optimizer_reset)
    _warn_if_nothing_to_do(state, schedule, events)
    _warn_if_data_runs_out(cfg, state, schedule, loader, events)
    if restored.path is not None:
        position = duration.scheduler_position(cfg, state.global_step, state.tokens_seen)
        set_optimizer_hyperparameters(optim, restored, cfg, schedule.lr(cfg, max(position, 1)))
    on_main(world, lambda: loader.write_order(state.epoch, prep.run_dir))
    # 4. callbacks -> trainer -> fit
    peak, peak_source = _peak_flops(options, world, cfg)
    forward, backward = flops_per_token(cfg.model)
    callbacks = _callbacks(cfg, options, prep.run_dir, prep.config_yaml, events, prep.continuing)
    if prep.continuing:
        callbacks.load_state_dict(_own_callback_state(restored, prep.run_dir, prep.own_remote))
    trainer = Trainer(
        cfg=cfg,
        world=world,
        model=model,
        optim=optim,
        loader=loader,
        state=state,
        schedule=schedule,
        callbacks=callbacks,
        speed=SpeedMonitor(cfg.speed_monitor.window_size, forward + backward, peak),
        run_dir=prep.run_dir,
        events=events,
        stop=stop,
    )
    trainer.check_every_batch = not prep.scanned or loader.order_file is not None
    events(_started(prep, world, trainer, restored, peak, peak_source))
    if restored.rng is not None:
        restore_rng(restored.rng)  # last, so nothing above draws from the restored generators
    reason = trainer.fit()
    return _finished(trainer, reason, callbacks, events)


def _prepare(cfg: TrainConfig, events: EventSink, options: RunOptions, world: World) -> _Prepared:
    on_main(world, lambda: check_store_clients(cfg))  # a missing boto3: one error, before anything else
    cfg, data_note = on_main(
        world, lambda: resolve_data(cfg, options.data, events, corpus_cache_dir=options.corpus_cache_dir)
    )
    load_from, own_remote = _checkpoint_to_load(cfg, events, world)
    own_remote = own_remote or (options.source_url is not None and _own_remote(cfg, options.source_url))
    continuing = (
        options.continuing
        or own_remote
        or (load_from is not None and load_from.resolve().parent == Path(cfg.save_folder).resolve())
    )
    on_main(world, lambda: check_remote_save(cfg, continuing=continuing, events=events))
    text = config_yaml(cfg)
    run_dir = on_main(world, lambda: claim_run_dir(cfg, text, continuing=continuing, events=events))
    dataset = build_dataset(cfg.data, cfg.model.max_sequence_length)
    scanned = on_main(world, lambda: check_data(dataset, cfg, world.world_size))
    return _Prepared(cfg, data_note, run_dir, text, load_from, continuing, own_remote, dataset, scanned)


def _checkpoint_to_load(cfg: TrainConfig, events: EventSink, world: World) -> tuple[Path | None, bool]:
    """The checkpoint to load, and whether it is one this run uploaded to its own `remote_save_folder`.
    A checkpoint on an object store is downloaded by the main rank (into the cache: `train.remote`)."""
    remote_load = cfg.load_path is not None and is_store_url(cfg.load_path)
    if not remote_load and not (cfg.try_load_latest_save and cfg.remote_save_folder is not None):
        return checkpoint_to_load(cfg), False

    def download() -> tuple[Path | None, bool]:
        fetched: list[StoreURL] = []

        def fetch(text: str) -> Path:
            fetched.append(parse_store_url(text, what="load_path"))
            return fetch_checkpoint(text, events)

        path = checkpoint_to_load(cfg, fetch)
        return path, bool(fetched) and _own_remote(cfg, fetched[-1])

    return on_main(world, download)


def _own_remote(cfg: TrainConfig, url: StoreURL | str) -> bool:
    """Whether the checkpoint (or run folder: its newest) at `url` is in this run's `remote_save_folder`."""
    if cfg.remote_save_folder is None:
        return False
    source = url if isinstance(url, StoreURL) else parse_store_url(url, what="load_path")
    return parse_store_url(cfg.remote_save_folder) in (source, source.parent)


def _own_callback_state(restored: Restored, run_dir: Path, own_remote: bool = False) -> dict:
    """The callbacks' states to continue with. The checkpointer's lists decide what retention deletes, so
    they count only from a checkpoint directly inside this run directory, or downloaded from this run's
    own `remote_save_folder` (retention then deletes the older uploads there), once each name is checked;
    a checkpoint from elsewhere (`resume --load-path`) starts them empty."""
    states = dict(restored.callbacks)
    lists = states.pop(Checkpointer.name, None)
    path = restored.path
    here = path is not None and path.resolve().parent == run_dir.resolve()
    if lists is not None and path is not None and (here or own_remote):
        states[Checkpointer.name] = checked_lists(lists, f"the trainer state of {path}")
    return states


def _loader(
    cfg: TrainConfig,
    dataset: MemmapDataset,
    world: World,
    options: RunOptions,
    state: TrainerState,
    checkpoint: Path | None,
) -> BatchLoader:
    # An order file given now applies to the epoch training starts in; one recorded in the checkpoint
    # keeps applying to its epoch. Either way the run directory keeps a copy (`write_order`), and the
    # trainer state names only that copy, so a checkpoint never points training at a file elsewhere.
    order_file = None
    if options.data_order_file is not None:
        order_file = str(Path(options.data_order_file).expanduser().resolve())
        state.data_order_epoch = state.epoch
    elif state.data_order_file is not None:
        order_file = str(_recorded_order_file(state.data_order_file, state.data_order_epoch, checkpoint))
    if order_file is not None and state.data_order_epoch is not None:
        state.data_order_file = given_order_copy(state.data_order_epoch).as_posix()
    return BatchLoader(
        dataset,
        cfg,
        rank=world.rank,
        world_size=world.world_size,
        vocab_size=cfg.model.vocab_size,
        order_file=order_file,
        order_epoch=state.data_order_epoch,
    )


def _recorded_order_file(recorded: str, epoch: int | None, checkpoint: Path | None) -> Path:
    """The order file a checkpoint's trainer state names: only the run's own copy of a given order
    (`given_order_copy(epoch)`, in the run directory that holds the checkpoint)."""
    from olmo_cli.errors import CheckpointError

    if checkpoint is not None and epoch is not None and recorded == given_order_copy(epoch).as_posix():
        copy = checkpoint.parent / recorded
        if copy.is_file():
            return copy
        raise CheckpointError(
            f"the trainer state of {checkpoint} trains epoch {epoch} in the data order kept in {copy}, "
            "which is missing",
            hint="give the order file again with --data-order-file",
        )
    raise CheckpointError(
        f"the trainer state of {checkpoint} names the data order file {recorded[:200]!r}, which is not "
        "its run's own copy; refused",
        hint="a checkpoint may not point at files elsewhere; give the order file with --data-order-file",
    )


def _finished(trainer: Trainer, reason: StopReason, callbacks: CallbackList, events: EventSink) -> RunResult:
    checkpoint = next(c for c in callbacks if isinstance(c, Checkpointer)).last_path
    step = trainer.state.global_step
    seconds = time.perf_counter() - trainer.started_at
    events(RunFinished(step, reason, seconds, trainer.first_loss, trainer.last_loss, checkpoint))
    return RunResult(trainer.run_dir, step, reason, trainer.first_loss, trainer.last_loss, checkpoint)


def _build_model(cfg: TrainConfig, world: World) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from olmo_cli.model.olmo import build_model
    from olmo_cli.train.optim import build_optimizer
    from olmo_cli.train.parallelize import parallelize_model

    try:
        model = build_model(cfg.model, "meta")
    except ValueError as e:  # an architecture switch the model does not implement
        raise ConfigError(str(e), hint="change the model settings named above") from None
    if cfg.lora is not None:
        from olmo_cli.model.lora import apply_lora

        apply_lora(model, cfg.lora)  # before wrapping: FSDP shards the adapters with their block
    model = parallelize_model(model, cfg, world, seed=cfg.seed)
    model.train()
    return model, build_optimizer(model, cfg)


def _schedule(
    cfg: TrainConfig, state: TrainerState, loader: BatchLoader, *, optimizer_reset: bool
) -> Schedule:
    per_epoch = loader.batches_in_epoch(state.epoch)
    max_steps = duration.max_steps(cfg, state.tokens_seen, state.global_step, per_epoch)
    bolt_on = None
    if optimizer_reset and state.global_step > 0:
        bolt_on = BoltOnWarmup.for_restart(state.global_step, cfg.scheduler)
    return Schedule(
        max_position=duration.scheduler_max(cfg, state.tokens_seen, state.global_step, per_epoch),
        stop_step=duration.stop_step(cfg, state.global_step, max_steps),
        max_epochs=max(duration.max_epochs(max_steps, per_epoch), state.epoch + 1),
        bolt_on=bolt_on,
        stop_reason=duration.stop_reason(cfg, state.global_step, max_steps),
    )


def _warn_if_nothing_to_do(state: TrainerState, schedule: Schedule, events: EventSink) -> None:
    if state.global_step >= schedule.stop_step:
        text = (
            f"the run is already at its stop step {schedule.stop_step}: to train further, raise "
            "max_duration or stop_at (e.g. --set stop_at=N)"
        )
        events(Message(text, level="warning"))


def _warn_if_data_runs_out(
    cfg: TrainConfig, state: TrainerState, schedule: Schedule, loader: BatchLoader, events: EventSink
) -> None:
    """At the start, not at the end: the data's size says whether it lasts to the stop step."""
    if state.global_step >= schedule.stop_step:
        return
    text = duration.data_runs_out(
        state.global_step,
        schedule.stop_step,
        loader.batches_in_epoch(state.epoch),
        schedule.max_epochs,
        epoch=state.epoch,
        batches_done=state.examples_seen // cfg.global_train_batch_size,
    )
    if text is not None:
        events(Message(text, level="warning"))


def _peak_flops(options: RunOptions, world: World, cfg: TrainConfig) -> tuple[float | None, str | None]:
    if options.peak_flops is not None:
        return options.peak_flops, "given"
    return run_peak_flops(cfg, world.device)


def _eval_sets(cfg: TrainConfig, events: EventSink) -> list[EvalSet]:
    sets = []
    for ev in cfg.evaluators:
        if ev.type != "lm":
            continue  # downstream tasks: _callbacks builds them (olmo_cli/eval/in_loop.py)
        if not (ev.data.paths or ev.data.datasets):
            events(Message(f"evaluator {ev.label!r} names no data and is skipped", "warning"))
            continue
        batches = ev.subset_num_batches if ev.subset_num_batches is not None else cfg.eval_subset_num_batches
        sets.append(
            EvalSet(
                label=ev.label,
                dataset=build_dataset(ev.data, cfg.model.max_sequence_length),
                batch_size=ev.device_eval_batch_size or cfg.device_eval_batch_size,
                max_batches=None if batches is None or batches < 0 else batches,
                drop_last=ev.data.drop_last,
            )
        )
    return sets


def _task_sets(cfg: TrainConfig, events: EventSink) -> list:
    from olmo_cli.eval.in_loop import downstream_sets

    return downstream_sets(cfg, lambda text: events(Message(text, "warning")))


def _callbacks(
    cfg: TrainConfig, options: RunOptions, run_dir: Path, text: str, events: EventSink, continuing: bool
) -> CallbackList:
    """In the order they run after each step: save, evaluate, then the sinks that record the step."""
    checkpointer = Checkpointer(run_dir, text, events, overwrite=continuing or cfg.save_overwrite)
    callbacks: list[Callback] = [
        checkpointer,
        Evaluator(_eval_sets(cfg, events), cfg.eval_interval, events, _task_sets(cfg, events)),
        MetricsFile(run_dir / METRICS_FILE),
    ]
    if cfg.lora is not None:  # right after the checkpointer, whose saves it follows
        from olmo_cli.train.callbacks.adapter import AdapterWriter

        callbacks.insert(1, AdapterWriter(run_dir, cfg.lora, cfg.load_path, events))
    if cfg.wandb is not None and options.wandb:
        from olmo_cli.train.callbacks.wandb_sink import WandbSink

        callbacks.append(WandbSink(cfg.wandb, cfg.model_dump(mode="json"), run_dir, events))
    callbacks.append(EventFeed(events))
    if cfg.remote_save_folder is not None:  # last: its on_end waits for the final checkpoint's upload
        from olmo_cli.train.callbacks.remote_upload import RemoteUpload

        uploader = RemoteUpload(run_dir, cfg.remote_save_folder, events)
        checkpointer.observers.append(uploader)
        callbacks.append(uploader)
    return CallbackList(callbacks)


def _started(
    prep: _Prepared,
    world: World,
    trainer: Trainer,
    restored: Restored,
    peak: float | None,
    peak_source: str | None,
) -> Event:
    from olmo_cli.train.plan import make_plan

    cfg, instances = prep.cfg, len(prep.dataset)
    plan = make_plan(cfg, world_size=world.world_size, peak_flops=peak, dataset_instances=instances)
    return RunStarted(
        run_name=cfg.run_name or prep.run_dir.name,
        run_dir=prep.run_dir,
        plan=plan.as_dict(),
        start_step=trainer.state.global_step,
        stop_step=trainer.schedule.stop_step,
        stop_reason=trainer.schedule.stop_reason,
        world_size=world.world_size,
        device=str(world.device),
        precision=plan.precision,
        data=f"{prep.data_note}: {instances:,} instances of {cfg.model.max_sequence_length} tokens",
        resumed_from=restored.path,
        peak_flops=peak,
        peak_flops_source=peak_source,
    )
