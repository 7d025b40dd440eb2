"""How long a run is and where its schedule stands (docs/format.md §6.4, §6.6).

All functions take the trainer's counters as they are when asked: `global_step` (optimizer steps done)
and `tokens_seen` (global tokens trained on). A token budget is turned into steps from the counters, so a
resumed run whose batch size changed still stops at the budget, as upstream does.
`steps_per_epoch` is the data's `total_size // global_train_batch_size`; only epoch durations need it.
"""

from __future__ import annotations

import math

from olmo_cli.config.schema import TrainConfig, parse_duration

__all__ = [
    "EXTRA_STEPS_PAST_MAX",
    "data_runs_out",
    "max_epochs",
    "max_steps",
    "max_tokens",
    "scheduler_max",
    "scheduler_position",
    "stop_reason",
    "stop_step",
]

# Upstream's default `stop_at` runs this many steps past the schedule's end, at the final LR.
EXTRA_STEPS_PAST_MAX = 10


def _epoch_steps(epochs: int, steps_per_epoch: int | None) -> int:
    if steps_per_epoch is None:
        raise ValueError(f"max_duration of {epochs} epochs needs the data's steps per epoch")
    return epochs * steps_per_epoch


def max_steps(
    cfg: TrainConfig, tokens_seen: int = 0, global_step: int = 0, steps_per_epoch: int | None = None
) -> int:
    """The step the schedule ends at: `max_duration` in steps, or a token or epoch budget in steps."""
    count, unit = parse_duration(cfg.max_duration)
    if unit == "steps":
        return count
    if unit == "tokens":
        remaining = max(count - tokens_seen, 0)
        return global_step + math.ceil(remaining / cfg.tokens_per_step)
    return _epoch_steps(count, steps_per_epoch)


def max_tokens(
    cfg: TrainConfig, tokens_seen: int = 0, global_step: int = 0, steps_per_epoch: int | None = None
) -> int:
    """The token count the schedule ends at: the `"<n>T"` budget itself, else steps left times B·L."""
    count, unit = parse_duration(cfg.max_duration)
    if unit == "tokens":
        return count
    if unit == "epochs":
        return _epoch_steps(count, steps_per_epoch) * cfg.tokens_per_step
    return tokens_seen + max(count - global_step, 0) * cfg.tokens_per_step


def max_epochs(total_steps: int, steps_per_epoch: int) -> int:
    """Epochs the data loader runs through to reach `total_steps` (0 for data smaller than one batch)."""
    return 0 if steps_per_epoch == 0 else math.ceil(total_steps / steps_per_epoch)


def data_runs_out(
    global_step: int, stop: int, per_epoch: int, epochs: int, *, epoch: int = 0, batches_done: int = 0
) -> str | None:
    """When the data ends before the stop step: the warning to print at the start of a run, from the data's
    known size (`per_epoch` global batches in each of `epochs` epochs, `batches_done` of epoch `epoch`
    already trained); None when the data lasts."""
    left = max(epochs - epoch, 0) * per_epoch - batches_done
    end = global_step + max(left, 0)
    if end >= stop:
        return None
    return (
        f"the data runs out after step {end:,}, before the stop step {stop:,}: {per_epoch:,} batches per "
        f"epoch \u00d7 {epochs} epoch{'s' if epochs != 1 else ''}, so the run will end there "
        f"(give more data, or --set stop_at={end} to make that the planned end)"
    )


def scheduler_position(cfg: TrainConfig, global_step: int, tokens_seen: int) -> int:
    """The position the LR and clip schedules are evaluated at, in the scheduler's units.

    The trainer increments its counters before a step runs, so this is 1 (or B·L) on the first step.
    """
    return tokens_seen if cfg.scheduler.units == "tokens" else global_step


def scheduler_max(
    cfg: TrainConfig, tokens_seen: int = 0, global_step: int = 0, steps_per_epoch: int | None = None
) -> int:
    """The run maximum in the scheduler's units (the decay horizon unless `scheduler.t_max` is set)."""
    if cfg.scheduler.units == "tokens":
        return max_tokens(cfg, tokens_seen, global_step, steps_per_epoch)
    return max_steps(cfg, tokens_seen, global_step, steps_per_epoch)


def stop_step(cfg: TrainConfig, global_step: int, total_steps: int) -> int:
    """The step training stops after, fixed when training (re)starts at `global_step`.

    `stop_after` counts from the start of this invocation and can only bring an explicit `stop_at`
    closer; with neither set, upstream trains `EXTRA_STEPS_PAST_MAX` steps past `total_steps`.
    """
    stop_at = cfg.stop_at
    if cfg.stop_after is not None:
        limit = global_step + cfg.stop_after
        stop_at = limit if stop_at is None else min(stop_at, limit)
    return stop_at if stop_at is not None else total_steps + EXTRA_STEPS_PAST_MAX


def stop_reason(cfg: TrainConfig, global_step: int, total_steps: int) -> str:
    """Why training stops where `stop_step` says, in words for the start of a run."""
    if cfg.stop_after is not None and (cfg.stop_at is None or global_step + cfg.stop_after < cfg.stop_at):
        return f"stop_after={cfg.stop_after} steps from step {global_step}"
    if cfg.stop_at is not None:
        schedule = f"max_duration={cfg.max_duration}"
        return f"stop_at={cfg.stop_at} (the schedule of {schedule} ends at step {total_steps})"
    count, unit = parse_duration(cfg.max_duration)
    length = f"max_duration={cfg.max_duration}"
    if unit != "steps":
        length += f" = {total_steps} steps"
    return (
        f"{length}, then {EXTRA_STEPS_PAST_MAX} more at the final LR as upstream trains "
        f"(--set stop_at={total_steps} stops at the schedule's end)"
    )
