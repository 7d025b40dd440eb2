"""The plan of a training run, as `olmo train --dry-run` reports it: sizes, steps, FLOPs, memory, time.

Pure arithmetic on the config: the sizes, FLOPs and memory are config/derived.py's `footprint` (what
`olmo presets show` reports too), to which this adds the batch split, the steps and the time. So a 65B
plan costs nothing; no weights are allocated. `count_parameters_on_meta` builds the model on the meta
device, for a dry run that wants proof the configured model really builds and has the counted size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from olmo_cli.config.derived import Footprint, footprint
from olmo_cli.config.schema import ModelConfig, TrainConfig, parse_duration
from olmo_cli.errors import ConfigError
from olmo_cli.train.duration import data_runs_out, max_epochs, stop_reason, stop_step

__all__ = [
    "Plan",
    "batch_split",
    "count_parameters_on_meta",
    "make_plan",
]


@dataclass(frozen=True)
class Plan(Footprint):
    global_batch_size: int  # instances per optimizer step
    device_batch_size: int  # instances per rank per step
    micro_batch_size: int
    grad_accum_steps: int  # micro-batches per rank per step
    sequence_length: int
    tokens_per_step: int
    max_duration: str
    steps: int | None  # where the schedule ends; None when epochs are given without the data size
    train_steps: int | None  # steps actually run: the stop step (upstream runs 10 past the schedule)
    total_tokens: int | None  # tokens of the steps actually run
    training_flops: float | None
    mfu: float
    peak_flops: float | None  # per device, FLOP/s
    seconds: float | None  # at `mfu` of `peak_flops` on every rank
    note: str | None = None  # why a figure is unknown
    stop_reason: str | None = None  # why training stops at train_steps, in words
    data_runs_out: str | None = None  # when the data's known size ends the run before train_steps

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["memory"] = {f"{k}_bytes": v for k, v in out["memory"].items()}
        out["memory"]["total_bytes"] = self.memory.total
        out["training_flops_per_token"] = self.training_flops_per_token
        return out


def batch_split(cfg: TrainConfig, world_size: int) -> tuple[int, int]:
    """(device batch size, gradient accumulation steps) for `world_size` ranks, or a ConfigError.

    The loop and the plan share this, so a config the plan accepts is one the loop can run.
    """
    if world_size < 1:
        raise ConfigError(f"the world size must be at least 1, got {world_size}")
    global_batch, micro = cfg.global_train_batch_size, cfg.device_train_microbatch_size
    if global_batch % world_size:
        raise ConfigError(
            f"global_train_batch_size ({global_batch}) is not divisible by the world size ({world_size})",
            hint="choose a number of processes that divides it, or --set global_train_batch_size=N",
        )
    device_batch = global_batch // world_size
    if device_batch % micro:
        fits = [m for m in range(min(micro, device_batch), 0, -1) if device_batch % m == 0][0]
        raise ConfigError(
            f"each of the {world_size} ranks gets {device_batch} instances per step "
            f"(global_train_batch_size {global_batch} / {world_size}), which "
            f"device_train_microbatch_size ({micro}) does not divide",
            hint=f"--set device_train_microbatch_size={fits} (or another divisor of {device_batch})",
        )
    return device_batch, device_batch // micro


def _per_epoch(cfg: TrainConfig, world_size: int, dataset_instances: int) -> int:
    from olmo_cli.data.order import total_size

    return total_size(dataset_instances, world_size, cfg.data.drop_last) // cfg.global_train_batch_size


def _steps(cfg: TrainConfig, world_size: int, dataset_instances: int | None) -> tuple[int | None, str | None]:
    count, unit = parse_duration(cfg.max_duration)
    if unit == "steps":
        return count, None
    if unit == "tokens":
        return math.ceil(count / cfg.tokens_per_step), None
    if dataset_instances is None:
        return None, f"max_duration is {count} epochs: the steps depend on the size of the data"
    return count * _per_epoch(cfg, world_size, dataset_instances), None


def _data_runs_out(
    cfg: TrainConfig,
    world_size: int,
    dataset_instances: int | None,
    steps: int | None,
    train_steps: int | None,
) -> str | None:
    if dataset_instances is None or steps is None or train_steps is None:
        return None
    per_epoch = _per_epoch(cfg, world_size, dataset_instances)
    if per_epoch == 0:
        return None  # refused when the run starts: fewer instances than one batch
    # The loader runs through as many epochs as the schedule needs (train/run.py's schedule).
    return data_runs_out(0, train_steps, per_epoch, max(max_epochs(steps, per_epoch), 1))


def make_plan(
    cfg: TrainConfig,
    *,
    world_size: int,
    mfu: float = 0.4,
    peak_flops: float | None = None,
    dataset_instances: int | None = None,
) -> Plan:
    """The plan for `cfg` on `world_size` ranks. `peak_flops` is one device's peak (FLOP/s, e.g. from
    train/speed.run_peak_flops); without it the time is unknown. `dataset_instances` lets an epoch
    duration be turned into steps."""
    if not 0 < mfu <= 1:
        raise ConfigError(f"the MFU must lie in (0, 1], got {mfu}")
    device_batch, accum = batch_split(cfg, world_size)
    size = footprint(cfg, world_size)
    steps, note = _steps(cfg, world_size, dataset_instances)
    train_steps = stop_step(cfg, 0, steps) if steps is not None else None
    total_tokens = train_steps * cfg.tokens_per_step if train_steps is not None else None
    flops = float(size.training_flops_per_token * total_tokens) if total_tokens is not None else None
    seconds = None
    if flops is not None and peak_flops is not None:
        seconds = flops / (mfu * peak_flops * world_size)
    return Plan(
        **vars(size),
        global_batch_size=cfg.global_train_batch_size,
        device_batch_size=device_batch,
        micro_batch_size=cfg.device_train_microbatch_size,
        grad_accum_steps=accum,
        sequence_length=cfg.model.max_sequence_length,
        tokens_per_step=cfg.tokens_per_step,
        max_duration=str(cfg.max_duration),
        steps=steps,
        train_steps=train_steps,
        total_tokens=total_tokens,
        training_flops=flops,
        mfu=mfu,
        peak_flops=peak_flops,
        seconds=seconds,
        note=note,
        stop_reason=stop_reason(cfg, 0, steps) if steps is not None else None,
        data_runs_out=_data_runs_out(cfg, world_size, dataset_instances, steps, train_steps),
    )


def count_parameters_on_meta(cfg: ModelConfig) -> int:
    """Builds the model on the meta device (no memory, instant at any size) and counts its parameters,
    each tied tensor once: proof that the configured model builds, and of its real size."""
    from olmo_cli.model.olmo import build_model

    try:
        model = build_model(cfg, "meta")
    except ValueError as exc:  # check_supported names every unsupported switch
        raise ConfigError(str(exc), hint="change the model settings named above") from exc
    return sum(p.numel() for p in model.parameters())
