"""Learning-rate and gradient-clip schedules as pure functions of the scheduler position.

The formulas are upstream OLMo's (docs/format.md §6.3, §6.5, §4.7). A position is `global_step` for
`units: steps` and `global_train_tokens_seen` for `units: tokens`; both count the batch about to be
trained, so the first optimizer step sees position 1 (or B·L tokens). `max_position` is the run's maximum
in the same units (see `olmo_cli.train.duration`); `t_max`, when set, replaces it as the decay horizon.

Nothing here holds state: the trainer asks for the values at each step and a resumed run recomputes them
from its counters, so there is no scheduler state to checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from olmo_cli.config.schema import SchedulerConfig

__all__ = ["BoltOnWarmup", "grad_clip_threshold_at", "lr_at", "warmup_start_lr"]


def warmup_start_lr(cfg: SchedulerConfig, lr0: float) -> float:
    """The LR warmup starts from: `warmup_min_lr`, else 10% of the peak (upstream never starts at 0)."""
    start = cfg.warmup_min_lr if cfg.warmup_min_lr is not None else 0.1 * lr0
    if not 0 <= start < lr0:
        raise ValueError(f"scheduler.warmup_min_lr ({start}) must be below the learning rate ({lr0})")
    return start


def _warmup(t: int, cfg: SchedulerConfig, lr0: float) -> float:
    start = warmup_start_lr(cfg, lr0)
    return start + (lr0 - start) * min(t, cfg.t_warmup) / cfg.t_warmup


def _decay_fraction(t: int, warmup: int, horizon: int) -> float:
    # Only called with warmup <= t < horizon, so the denominator is positive.
    return (t - warmup) / (horizon - warmup)


def _cosine(t: int, cfg: SchedulerConfig, lr0: float, horizon: int) -> float:
    eta_min = cfg.alpha_f * lr0
    if t < cfg.t_warmup:
        return _warmup(t, cfg, lr0)
    if t >= horizon:
        return eta_min
    return eta_min + (lr0 - eta_min) * (1 + math.cos(math.pi * _decay_fraction(t, cfg.t_warmup, horizon))) / 2


def _linear(t: int, cfg: SchedulerConfig, lr0: float, horizon: int) -> float:
    eta_min = cfg.alpha_f * lr0
    if t < cfg.t_warmup:
        return _warmup(t, cfg, lr0)
    if t >= horizon:
        return eta_min
    return lr0 - (lr0 - eta_min) * _decay_fraction(t, cfg.t_warmup, horizon)


def _cosine_linear_envelope(t: int, cfg: SchedulerConfig, lr0: float, horizon: int) -> float:
    eta_min = cfg.alpha_f * lr0
    if t < cfg.t_warmup:
        return _warmup(t, cfg, lr0)
    if t >= horizon:
        return eta_min
    frac = _decay_fraction(t, cfg.t_warmup, horizon)
    return eta_min + (1 - frac) * (lr0 - eta_min) * (1 + math.cos(math.pi * frac)) / 2


def _inverse_sqrt(t: int, cfg: SchedulerConfig, lr0: float) -> float:
    if cfg.t_warmup == 0:
        # Upstream's formula is 0 for every t > 0 (and divides by zero at t = 0): as max_scheduler's second
        # term that leaves the cosine; as a schedule of its own it is refused in `lr_at`.
        return 0.0
    if t < cfg.t_warmup:
        return _warmup(t, cfg, lr0)
    return lr0 * math.sqrt(cfg.t_warmup / max(cfg.t_warmup, t))


def lr_at(position: int, cfg: SchedulerConfig, lr0: float, max_position: int) -> float:
    """The learning rate at `position` for peak `lr0` (`optimizer.learning_rate`).

    `max_position` is the run maximum in the scheduler's units; `cfg.t_max` overrides it when set.
    """
    horizon = cfg.t_max if cfg.t_max is not None else max_position
    name = cfg.name
    if name == "cosine_with_warmup":
        return _cosine(position, cfg, lr0, horizon)
    if name == "linear_with_warmup":
        return _linear(position, cfg, lr0, horizon)
    if name == "inverse_sqrt_with_warmup":
        if cfg.t_warmup == 0:
            raise ValueError(
                "scheduler inverse_sqrt_with_warmup needs t_warmup > 0: with 0 its LR is 0 at every step"
            )
        return _inverse_sqrt(position, cfg, lr0)
    if name == "max_scheduler":
        return max(_cosine(position, cfg, lr0, horizon), _inverse_sqrt(position, cfg, lr0))
    if name == "cosine_linear_envelope":
        return _cosine_linear_envelope(position, cfg, lr0, horizon)
    if name == "constant_with_warmup":
        return _warmup(position, cfg, lr0) if position < cfg.t_warmup else lr0
    if name == "constant":
        return lr0
    raise ValueError(f"unknown scheduler {name!r}")


def grad_clip_threshold_at(position: int, cfg: SchedulerConfig, max_grad_norm: float | None) -> float | None:
    """The clip threshold for `position`: `grad_clip_warmup_factor · max_grad_norm` while the position is
    at most `grad_clip_warmup_steps` (in the scheduler's units), else `max_grad_norm`.

    The trainer stores this value for use on the *next* step (docs/format.md §6.5); see
    `olmo_cli.train.optim.clip_and_step`.
    """
    if max_grad_norm is None:
        return None
    warmup, factor = cfg.grad_clip_warmup_steps, cfg.grad_clip_warmup_factor
    if warmup is None or factor is None or position > warmup:
        return max_grad_norm
    return factor * max_grad_norm


@dataclass(frozen=True)
class BoltOnWarmup:
    """A fresh warmup laid over the schedule after `reset_optimizer_state` (docs/format.md §4.7).

    LR is 0 before `start`, ramps linearly from 0 at `start` to the inner schedule's value at `end`, then
    follows the inner schedule. Upstream places it at `[global_step, global_step + t_warmup)` measured in
    steps even when the schedule counts tokens; `for_restart` keeps that, so a restarted run matches.
    """

    start: int
    end: int

    @classmethod
    def for_restart(cls, global_step: int, cfg: SchedulerConfig) -> BoltOnWarmup:
        return cls(start=global_step, end=global_step + cfg.t_warmup)

    def lr_at(self, position: int, cfg: SchedulerConfig, lr0: float, max_position: int) -> float:
        if position < self.start:
            return 0.0
        if position < self.end:
            target = lr_at(self.end, cfg, lr0, max_position)
            return target * (position - self.start) / (self.end - self.start)
        return lr_at(position, cfg, lr0, max_position)
