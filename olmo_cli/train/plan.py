"""The plan of a training run, as `olmo train --dry-run` reports it: sizes, steps, FLOPs, memory, time.

Pure arithmetic on the config (config/derived.py holds the formulas), so a 65B plan costs nothing; no
weights are allocated. `count_parameters_on_meta` builds the model on the meta device, for a dry run
that wants proof the configured model really builds and has the counted size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from olmo_cli.config.derived import (
    block_params,
    embedding_params,
    flops_per_token,
    memory_per_gpu,
    num_params,
    output_params,
)
from olmo_cli.config.schema import ModelConfig, TrainConfig, parse_duration
from olmo_cli.errors import ConfigError
from olmo_cli.train.duration import stop_step

__all__ = [
    "MemoryPerRank",
    "Plan",
    "batch_split",
    "count_parameters_on_meta",
    "make_plan",
]


@dataclass(frozen=True)
class MemoryPerRank:
    """Bytes one rank holds while training (an estimate: no allocator slack, CUDA context or buffers).

    FSDP shards the fp32 parameters, gradients and AdamW moments across the ranks; the compute copies of
    the units being gathered, the activations and the logits are per rank.
    """

    params: int  # fp32 master weights (this rank's shard)
    grads: int  # fp32 gradients (shard)
    optimizer: int  # AdamW exp_avg + exp_avg_sq in fp32 (shard)
    gathered_params: int  # compute-dtype copies of the units in use (all of them with one rank)
    activations: int  # saved for backward, one micro-batch
    logits: int  # compute-dtype logits plus the fp32 log-softmax, one micro-batch

    @property
    def total(self) -> int:
        return (
            self.params + self.grads + self.optimizer + self.gathered_params + self.activations + self.logits
        )


@dataclass(frozen=True)
class Plan:
    world_size: int
    params: int
    non_embedding_params: int
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
    forward_flops_per_token: int
    backward_flops_per_token: int
    training_flops: float | None
    precision: str
    memory: MemoryPerRank
    mfu: float
    peak_flops: float | None  # per device, FLOP/s
    seconds: float | None  # at `mfu` of `peak_flops` on every rank
    note: str | None = None  # why a figure is unknown

    @property
    def training_flops_per_token(self) -> int:
        return self.forward_flops_per_token + self.backward_flops_per_token

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


def _steps(cfg: TrainConfig, world_size: int, dataset_instances: int | None) -> tuple[int | None, str | None]:
    count, unit = parse_duration(cfg.max_duration)
    if unit == "steps":
        return count, None
    if unit == "tokens":
        return math.ceil(count / cfg.tokens_per_step), None
    if dataset_instances is None:
        return None, f"max_duration is {count} epochs: the steps depend on the size of the data"
    from olmo_cli.data.order import total_size

    per_epoch = total_size(dataset_instances, world_size, cfg.data.drop_last) // cfg.global_train_batch_size
    return count * per_epoch, None


def _memory(cfg: TrainConfig, world_size: int) -> MemoryPerRank:
    """derived.memory_per_gpu (an amp_bf16 estimate), split by kind and adjusted for fp32 runs."""
    model = cfg.model
    n = num_params(model)
    estimate = memory_per_gpu(cfg, world_size)
    gathered, activations, logits = estimate.gathered_params, estimate.activations, estimate.logits
    if (cfg.precision or "fp32") == "fp32":
        # No low-precision copies: one rank computes on its own fp32 weights, several gather fp32 units;
        # activations are twice the size, logits fp32 plus their fp32 log-softmax.
        unit = max(block_params(model), embedding_params(model) + output_params(model))
        gathered = 0 if world_size == 1 else 2 * 4 * unit
        activations *= 2
        logits = logits // 6 * 8
    return MemoryPerRank(
        params=4 * n // world_size,
        grads=4 * n // world_size,
        optimizer=8 * n // world_size,
        gathered_params=gathered,
        activations=activations,
        logits=logits,
    )


def make_plan(
    cfg: TrainConfig,
    *,
    world_size: int,
    mfu: float = 0.4,
    peak_flops: float | None = None,
    dataset_instances: int | None = None,
) -> Plan:
    """The plan for `cfg` on `world_size` ranks. `peak_flops` is one device's peak (FLOP/s, e.g. from
    train/speed.device_peak_flops); without it the time is unknown. `dataset_instances` lets an epoch
    duration be turned into steps."""
    if not 0 < mfu <= 1:
        raise ConfigError(f"the MFU must lie in (0, 1], got {mfu}")
    device_batch, accum = batch_split(cfg, world_size)
    model = cfg.model
    forward, backward = flops_per_token(model)
    steps, note = _steps(cfg, world_size, dataset_instances)
    train_steps = stop_step(cfg, 0, steps) if steps is not None else None
    total_tokens = train_steps * cfg.tokens_per_step if train_steps is not None else None
    flops = float((forward + backward) * total_tokens) if total_tokens is not None else None
    seconds = None
    if flops is not None and peak_flops is not None:
        seconds = flops / (mfu * peak_flops * world_size)
    return Plan(
        world_size=world_size,
        params=num_params(model),
        non_embedding_params=num_params(model, include_embedding=False),
        global_batch_size=cfg.global_train_batch_size,
        device_batch_size=device_batch,
        micro_batch_size=cfg.device_train_microbatch_size,
        grad_accum_steps=accum,
        sequence_length=model.max_sequence_length,
        tokens_per_step=cfg.tokens_per_step,
        max_duration=str(cfg.max_duration),
        steps=steps,
        train_steps=train_steps,
        total_tokens=total_tokens,
        forward_flops_per_token=forward,
        backward_flops_per_token=backward,
        training_flops=flops,
        precision=cfg.precision or "fp32",
        memory=_memory(cfg, world_size),
        mfu=mfu,
        peak_flops=peak_flops,
        seconds=seconds,
        note=note,
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
