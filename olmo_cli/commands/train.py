"""`olmo train` and `olmo resume`: options and rendering here; the work in olmo_cli.train.run."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from olmo_cli.commands._options import ConfigOption, JsonOption, PresetOption, SetOption

if TYPE_CHECKING:
    from olmo_cli.config.schema import TrainConfig
    from olmo_cli.train.run import RunOptions


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


DataOption = Annotated[
    list[str] | None,
    typer.Option(
        "--data",
        "-d",
        metavar="PATH",
        help="Token data instead of data.paths: a directory from `olmo data tokenize`, files, globs or "
        "http(s) URLs. Repeatable. Without any data the default corpus is used.",
        show_default=False,
    ),
]
NoWandbOption = Annotated[
    bool,
    typer.Option("--no-wandb", help="No Weights & Biases logging, even if the config has a wandb section."),
]
NprocOption = Annotated[
    int,
    typer.Option(
        "--nproc-per-node",
        min=1,
        help="Processes (GPUs) on this node: more than one relaunches the command under torchrun "
        "(FSDP). With --dry-run: the world size the plan is made for.",
    ),
]
DeviceOption = Annotated[
    Device | None,
    typer.Option("--device", help="Train on this device (default: cuda when available).", show_default=False),
]


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def relaunch_if_asked(nproc_per_node: int, run_dir: Path) -> None:
    """Under torchrun already (WORLD_SIZE set) nothing happens; otherwise run this command again as
    `nproc_per_node` processes and exit as one process would: with the code of the job's error (shown
    once), of a stop by signal, or 0.

    This process locks `run_dir` first, so a second job is refused before anything is started, and
    holds the lock for its workers (they see its token) until they are gone.
    """
    if nproc_per_node <= 1 or os.environ.get("WORLD_SIZE"):
        return
    from olmo_cli.dirlock import TOKEN_ENV, lock_run_dir
    from olmo_cli.train.launch import run_workers

    with lock_run_dir(run_dir) as lock:
        outcome = run_workers(nproc_per_node, sys.argv[1:], env={TOKEN_ENV: lock.token})
    if outcome.error is not None:
        raise outcome.error.as_error()
    if outcome.interrupted:
        raise KeyboardInterrupt  # shown as in one process: "interrupted", exit 130
    if outcome.failure is not None:
        from olmo_cli import ui

        if outcome.exit_code > 128:
            hint = (
                "a signal from outside, e.g. the out-of-memory killer (see dmesg); "
                f"`olmo resume {run_dir}` continues from its newest checkpoint"
            )
        else:
            hint = "its output above shows what went wrong"
        ui.print_error(outcome.failure, hint=hint)
    raise typer.Exit(outcome.exit_code)


def train_command(
    preset: PresetOption = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    data: DataOption = None,
    save_folder: Annotated[
        Path | None,
        typer.Option(
            "--save-folder",
            "-o",
            help="The run directory (checkpoints, metrics.jsonl, config.yaml); replaces save_folder.",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    data_order_file: Annotated[
        str | None,
        typer.Option(
            "--data-order-file",
            metavar="PATH",
            help="Train the first epoch in the order of this raw uint32 file (e.g. a published "
            "global_indices.npy) instead of computing it.",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Validate, build the model on the meta device and print the plan (parameters, steps, "
            "tokens, FLOPs, memory per rank, time) without allocating weights.",
        ),
    ] = False,
    json_output: JsonOption = False,
    no_wandb: NoWandbOption = False,
    nproc_per_node: NprocOption = 1,
    device: DeviceOption = None,
) -> None:
    """Train a model from a preset or config file; with no data, on the built-in default corpus.

    Writes to the save folder: config.yaml, checkpoints (stepN-unsharded/, or stepN/ sharded with
    several processes), metrics.jsonl and train_data/global_indices.npy. One job at a time per save
    folder: a second one is refused (exit 2) naming the first. Ctrl-C (or SIGTERM) saves a checkpoint
    and stops with exit code 75; `olmo resume DIR` continues.

    Exit codes, the same with --nproc-per-node: 0 finished, 2 usage or config, 3 data, 4 checkpoint,
    5 network, 75 stopped by SIGINT/SIGTERM after saving a checkpoint, 130 a second Ctrl-C (no save).

    Examples:

      olmo train --preset tiny

      olmo train --preset tiny --data data/tok --set max_duration=1000 --save-folder runs/mine

      olmo train --preset 7b --dry-run --nproc-per-node 8

      olmo train --config OLMo-1B.yaml --nproc-per-node 8 --no-wandb
    """
    from olmo_cli.config.loader import load_config

    loaded = load_config(
        preset=preset,
        config_file=config,
        overrides=overrides or [],
        forced={"save_folder": str(save_folder)} if save_folder is not None else None,
        origins={"save_folder": "--save-folder"},
    )
    if dry_run:
        _dry_run(loaded.config, data, nproc_per_node, device, json_output, loaded.ignored)
        return
    relaunch_if_asked(nproc_per_node, Path(loaded.config.save_folder))
    from olmo_cli.train.run import RunOptions

    if is_main_process() and not json_output:
        from olmo_cli import ui

        ui.warn_ignored(loaded.ignored)
    options = RunOptions(
        data=data,
        data_order_file=data_order_file,
        device=device.value if device else None,
        wandb=not no_wandb,
    )
    run_training(loaded.config, options, json_output)


def resume_command(
    run_dir: Annotated[
        Path | None,
        typer.Argument(
            metavar="RUN_DIR",
            help="The run directory (save_folder) to continue; default: the checkpoint's parent, else the "
            "current directory.",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    load_path: Annotated[
        str | None,  # not a Path: that would turn s3://bucket/run into s3:/bucket/run
        typer.Option(
            "--load-path",
            metavar="CKPT",
            help="Continue from this checkpoint directory (stepN/ or stepN-unsharded/, also an upstream "
            "one) instead of the newest in RUN_DIR.",
            show_default=False,
        ),
    ] = None,
    overrides: SetOption = None,
    json_output: JsonOption = False,
    no_wandb: NoWandbOption = False,
    nproc_per_node: NprocOption = 1,
    device: DeviceOption = None,
) -> None:
    """Continue a run from its newest checkpoint (or --load-path): weights, optimizer, schedule, data
    position and RNG, so on CPU the losses are those of a run that was never stopped.

    The run's config.yaml is used, with --set changes on top (e.g. a later stop_at). Exit codes as for
    `olmo train`: 0 finished, 2-5 a user error, 75 stopped by SIGINT/SIGTERM after saving a checkpoint.

    Examples:

      olmo resume runs/olmo-tiny

      olmo resume runs/olmo-tiny --set max_duration=600

      olmo resume --load-path runs/olmo-tiny/step200-unsharded

      olmo resume runs/continued --load-path ckpts/OLMo-1B/step20000-unsharded --nproc-per-node 8
    """
    from olmo_cli.commands._train_display import TrainDisplay
    from olmo_cli.config.loader import load_config
    from olmo_cli.errors import CheckpointError
    from olmo_cli.train.restore import resume_target
    from olmo_cli.train.run import RunOptions

    # A checkpoint on an object store downloads here, its progress shown as a run's events are.
    with TrainDisplay(mode="json" if json_output else None) as display:
        events = display if is_main_process() else None
        target = resume_target(run_dir, load_path, events)
    loaded = load_config(
        config_file=target.config_file,
        overrides=overrides or [],
        forced={"save_folder": str(target.directory), "load_path": str(target.checkpoint)},
        origins={"save_folder": "the run directory", "load_path": "--load-path"},
        file_error=CheckpointError,
    )
    relaunch_if_asked(nproc_per_node, Path(loaded.config.save_folder))
    if is_main_process() and not json_output:
        from olmo_cli import ui

        ui.warn_ignored(loaded.ignored)
    options = RunOptions(
        device=device.value if device else None, wandb=not no_wandb, continuing=True, source_url=target.url
    )
    run_training(loaded.config, options, json_output)


def run_training(cfg: TrainConfig, options: RunOptions, json_output: bool) -> None:
    """Runs `cfg` and exits with STOPPED_EXIT_CODE when a signal stopped it (after its checkpoint).

    A single process locks the run directory here, before the data and the model are prepared, so that
    a second job into the same directory is refused at once; under torchrun the engine locks it on rank
    0 and hands a refusal to every rank.
    """
    from contextlib import nullcontext

    from olmo_cli.commands._train_display import TrainDisplay
    from olmo_cli.dirlock import lock_run_dir
    from olmo_cli.train.run import run
    from olmo_cli.train.signals import STOPPED_EXIT_CODE

    mode = "json" if json_output else None
    single = not os.environ.get("WORLD_SIZE")
    with lock_run_dir(Path(cfg.save_folder)) if single else nullcontext() as lock:
        if lock is not None and lock.recovered is not None and not json_output:
            from olmo_cli import ui

            ended = lock.recovered.describe(held=False)
            ui.console.print(f"took over the lock of a job that has ended: {ended}", markup=False)
        if not is_main_process():
            result = run(cfg, events=lambda event: None, options=options)
        else:
            with TrainDisplay(mode=mode, every=_plain_every(cfg)) as display:
                result = run(cfg, events=display, options=options)
    if result.reason == "interrupted":
        if is_main_process() and not json_output:
            from olmo_cli import ui

            ui.console.print(
                f"`olmo resume {result.run_dir}` continues the run (exit code {STOPPED_EXIT_CODE}: stopped "
                "by a signal, checkpoint saved)",
                markup=False,
            )
        raise typer.Exit(STOPPED_EXIT_CODE)


def _plain_every(cfg: TrainConfig) -> int:
    # One line per step is right for long steps; for quick ones a line every 10 steps reads better.
    return cfg.console_log_interval if "console_log_interval" in cfg.model_fields_set else 10


def _dry_run(
    cfg: TrainConfig,
    data: list[str] | None,
    nproc_per_node: int,
    device: Device | None,
    json_output: bool,
    ignored: list[Any],
) -> None:
    from olmo_cli import ui
    from olmo_cli.train.plan import count_parameters_on_meta, make_plan

    world_size = int(os.environ.get("WORLD_SIZE") or nproc_per_node)
    built = count_parameters_on_meta(cfg.model)
    instances, unread = _instances(cfg, data)
    peak, source = _dry_run_peak(cfg, device)
    plan = make_plan(cfg, world_size=world_size, peak_flops=peak, dataset_instances=instances)
    if json_output:
        not_acted_on = [{"key": i.path, "value": i.value, "why": i.why} for i in ignored]
        ui.print_json(
            {
                "parameters_built_on_meta": built,
                **plan.as_dict(),
                "peak_flops_source": source,
                "data_sizes_unread": unread,
                "not_acted_on": not_acted_on,
            }
        )
        return
    ui.console.print(_plan_table(cfg, plan, built, source))
    if plan.stop_reason:
        ui.console.print(f"stops after step {plan.train_steps:,}: {plan.stop_reason}", markup=False)
    if plan.note:
        ui.warn(plan.note)
    if unread:
        ui.warn(f"the data's sizes could not be read, so the plan cannot say whether it lasts: {unread}")
    if plan.data_runs_out:
        ui.warn(plan.data_runs_out)
    ui.warn_ignored(ignored)


def _instances(cfg: TrainConfig, data: list[str] | None) -> tuple[int | None, str | None]:
    """The number of training instances when the data is named (file sizes only; None for the default
    corpus, which is not tokenized by a dry run), and why it is unknown when remote data's sizes could not
    be read (offline): the plan is still printed."""
    if not data and not (cfg.data.paths or cfg.data.datasets):
        return None, None
    from olmo_cli.data.dataset import build_dataset
    from olmo_cli.errors import NetworkError

    try:
        return len(build_dataset(cfg.data, cfg.model.max_sequence_length, data)), None
    except NetworkError as e:
        return None, e.message


def _dry_run_peak(cfg: TrainConfig, device: Device | None) -> tuple[float | None, str | None]:
    import torch

    from olmo_cli.train.speed import run_peak_flops

    name: str | None = device.value if device else ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        name = None  # planning for GPUs from a machine without one: the time stays unknown
    return run_peak_flops(cfg, name)


def _plan_table(cfg: TrainConfig, plan: Any, built: int, source: str | None) -> Any:
    from olmo_cli import ui

    table = ui.table(
        "plan", "value", title=f"Plan for {cfg.run_name or 'this run'} (dry run)", right=("value",)
    )
    ranks = f"{plan.world_size} rank{'s' if plan.world_size > 1 else ''}"
    rows = [
        ("parameters (built on the meta device)", f"{built:,}"),
        ("non-embedding parameters", f"{plan.non_embedding_params:,}"),
        ("world size", ranks),
        (
            "batch: global / per rank / micro-batch",
            f"{plan.global_batch_size} / {plan.device_batch_size} / {plan.micro_batch_size}",
        ),
        ("gradient accumulation steps", str(plan.grad_accum_steps)),
        ("tokens per step", f"{plan.tokens_per_step:,}"),
        ("max_duration", plan.max_duration),
        ("schedule steps", f"{plan.steps:,}" if plan.steps is not None else "-"),
        ("steps trained (stop step)", f"{plan.train_steps:,}" if plan.train_steps is not None else "-"),
        ("total tokens", ui.human_count(plan.total_tokens)),
        ("training FLOPs", ui.scientific(plan.training_flops)),
        ("precision", plan.precision),
        (f"memory per rank ({ranks}, estimate)", ui.human_bytes(plan.memory.total)),
    ]
    for label, value in rows:
        table.add_row(label, value)
    if plan.seconds is not None and plan.peak_flops is not None:
        from olmo_cli.commands._train_display import format_duration

        peak = f"{ui.human_count(plan.peak_flops)}FLOP/s"
        table.add_row(f"time at {plan.mfu:.0%} MFU of {peak} per rank", format_duration(plan.seconds))
        if source:
            table.add_row("  peak from", source)
    else:
        table.add_row("time", "- (no peak FLOP/s known for the device)")
    return table
